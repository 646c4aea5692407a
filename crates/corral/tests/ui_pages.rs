//! Every page of the web UI in a real headless Chromium against a real quickstart: each loads with
//! no console error at 1366×768 and at a phone's width, its screenshot saved as an artifact; every
//! page is reachable from the keyboard; a page that loses the API says so and recovers by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod ui_support;

use std::time::Duration;

use serde_json::json;
use ui_support::{artifact_dir, open_page, start_cluster, Browser};

const PAGES: [(&str, &str, &str); 8] = [
    ("dashboard", "/", "#volume-counts li"),
    ("volumes", "/volumes", "#volumes-table tr[data-name='vol-a']"),
    ("volume", "/volumes/vol-a", "#replicas-table tr[data-name]"),
    ("nodes", "/nodes", "#nodes-list article[data-name='local']"),
    ("backups", "/backups", "#target-status code"),
    ("recurringjobs", "/recurringjobs", "#jobs-table tr[data-name='hourly']"),
    ("settings", "/settings", ".setting[data-name]"),
    ("events", "/events", "#events-table tbody tr"),
];

#[test]
fn every_page_loads_without_console_errors_on_desktop_and_phone_and_recovers_from_a_lost_api() {
    let mut cluster = start_cluster();
    let (status, body) =
        cluster.post("/v1/volumes", json!({"name": "vol-a", "size": 16 << 20, "numberOfReplicas": 1}));
    assert_eq!(status, 201, "{body}");
    let (status, body) = cluster.post(
        "/v1/recurringjobs",
        json!({"name": "hourly", "task": "snapshot", "cron": "0 * * * *", "retain": 3, "concurrency": 1, "volumes": ["vol-a"], "groups": [], "labels": {}}),
    );
    assert_eq!(status, 201, "{body}");
    cluster.wait_volume("vol-a", "healthy", Duration::from_secs(60), |v| v["robustness"] == "healthy");

    let dir = artifact_dir("ui_pages");
    let browser = Browser::start(1366, 768);
    for (width, height, label) in [(1366, 768, "desktop"), (390, 844, "phone")] {
        browser.set_window(width, height);
        for (name, path, filled) in PAGES {
            open_page(&browser, &cluster, path);
            browser.wait_js(
                &format!("{name} filled ({filled})"),
                Duration::from_secs(10),
                &format!("return document.querySelector(\"{filled}\") !== null"),
            );
            // No horizontal scrolling of the page itself (wide tables scroll inside their box).
            let overflow = browser.js(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            );
            assert!(
                overflow.as_i64().unwrap() <= 0,
                "{name} is wider than the {label} window by {overflow}px"
            );
            browser.screenshot(&dir.join(format!("{name}-{label}.png")));
            browser.assert_no_console_errors(&format!("{path} ({label})"));
        }
    }

    // Keyboard: Tab from the top reaches the skip link, the navigation and the create form.
    browser.set_window(1366, 768);
    open_page(&browser, &cluster, "/volumes");
    let seen: Vec<String> = (0..20).map(|_| browser.tab()).collect();
    assert!(seen.iter().any(|s| s.contains("Skip to content")), "no skip link: {seen:?}");
    assert!(seen.iter().any(|s| s == "Volumes"), "the navigation is not focusable: {seen:?}");
    assert!(seen.iter().any(|s| s == "Create"), "the create form is not focusable: {seen:?}");

    // The API goes away: the page says so; it comes back: the page recovers without a reload.
    open_page(&browser, &cluster, "/volumes");
    browser.js("window.__sameDocument = true", vec![]);
    cluster.kill();
    browser.wait_js(
        "the connection banner",
        Duration::from_secs(15),
        "const c = document.querySelector('#conn'); return !c.hidden && c.textContent.includes('Cannot reach')",
    );
    browser.screenshot(&dir.join("volumes-api-lost.png"));
    cluster.restart();
    browser.wait_js(
        "the page recovered",
        Duration::from_secs(30),
        "return document.querySelector('#conn').hidden && document.querySelector('#live').textContent === '● live' \
         && document.querySelector(\"#volumes-table tr[data-name='vol-a']\") !== null && window.__sameDocument === true",
    );
    // The errors the browser logged while the API was gone are expected; none after it came back.
    browser.console();
    open_page(&browser, &cluster, "/volumes");
    browser.assert_no_console_errors("/volumes after the API came back");
}
