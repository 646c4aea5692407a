//! The OpenAPI document: every route the router serves is documented, the document is served at
//! `/v1/openapi.json`, and `docs/openapi.json` in the repository is current (a stale copy fails with
//! the difference; `UPDATE_OPENAPI=1` regenerates it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn every_route_is_documented() {
    let doc = serde_json::to_value(corral_manager::api::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let routes = corral_manager::api::registered_routes();
    assert!(routes.len() > 20);
    let mut missing = Vec::new();
    for (method, path) in &routes {
        if paths.get(path).and_then(|p| p.get(method)).is_none() {
            missing.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(missing.is_empty(), "routes without OpenAPI documentation: {missing:?}");
    // And nothing is documented that is not served.
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            assert!(
                routes.iter().any(|(m, p)| m == method && p == path),
                "documented but not served: {method} {path}"
            );
        }
    }
}

/// Regenerate `docs/openapi.json` with
/// `UPDATE_OPENAPI=1 cargo test -p corral-manager --test openapi`, then review and commit it.
#[test]
fn docs_openapi_json_is_current() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let fresh = corral_manager::api::openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&file, &fresh).unwrap();
        return;
    }
    let stored =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    assert!(
        stored == fresh,
        "{} is not the document the manager serves; the difference (- stored, + served):\n{}\n\
         Regenerate it with `UPDATE_OPENAPI=1 cargo test -p corral-manager --test openapi`, review and commit it.",
        file.display(),
        line_diff(&stored, &fresh, 3)
    );
}

/// The changed lines between `old` and `new` with `context` lines around: the differing middle
/// between the longest common prefix and suffix of lines (enough to see what changed in a
/// generated document, with no diff library).
fn line_diff(old: &str, new: &str, context: usize) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let mut out = Vec::new();
    let start = prefix.saturating_sub(context);
    out.push(format!("@@ line {} @@", start + 1));
    out.extend(a[start..prefix].iter().map(|l| format!("  {l}")));
    out.extend(a[prefix..a.len() - suffix].iter().map(|l| format!("- {l}")));
    out.extend(b[prefix..b.len() - suffix].iter().map(|l| format!("+ {l}")));
    let tail = a.len() - suffix;
    out.extend(a[tail..(tail + context).min(a.len())].iter().map(|l| format!("  {l}")));
    out.join("\n")
}

#[test]
fn line_diff_shows_only_the_change() {
    let diff = line_diff("a\nb\nc\nd\ne\n", "a\nb\nX\nd\ne\n", 1);
    assert_eq!(diff, "@@ line 2 @@\n  b\n- c\n+ X\n  d");
}
