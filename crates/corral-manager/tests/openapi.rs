//! The OpenAPI document: every route the router serves is documented, the document is served at
//! `/v1/openapi.json`, and `docs/openapi.json` in the repository is current (this test rewrites it
//! and fails when it was stale, so a stale copy is never committed silently).
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

#[test]
fn docs_openapi_json_is_current() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let fresh = corral_manager::api::openapi().to_pretty_json().unwrap() + "\n";
    let stored = std::fs::read_to_string(&file).unwrap_or_default();
    if stored != fresh {
        std::fs::write(&file, &fresh).unwrap();
        panic!("{} was stale and has been regenerated; review and commit it", file.display());
    }
}
