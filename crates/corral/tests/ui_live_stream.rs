//! The live stream under load: with 200 idle volumes open in the browser's volume list, the stream
//! `GET /v1/watch` sends less than 1 KiB/s once the page has loaded and no volume at all (measured:
//! about 5 B/s, the headers, `ready` and keep-alives), and a change to one volume still reaches the
//! open page at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod ui_support;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use ui_support::{artifact_dir, open_page, start_cluster, Browser};

const VOLUMES: usize = 200;
/// How long the idle stream is measured.
const WINDOW: Duration = Duration::from_secs(30);

#[test]
fn two_hundred_idle_volumes_cost_the_stream_less_than_1_kib_per_second() {
    let cluster = start_cluster();
    let started = Instant::now();
    for i in 0..VOLUMES {
        let (status, body) = cluster.post(
            "/v1/volumes",
            json!({"name": format!("idle-{i:03}"), "size": 16 << 20, "numberOfReplicas": 1}),
        );
        assert_eq!(status, 201, "{body}");
    }
    cluster.wait_for("/v1/volumes", "200 healthy volumes", Duration::from_secs(300), |list| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|v| v["robustness"] == "healthy" && v["state"] == "detached")
            .count()
            == VOLUMES
    });
    println!("{VOLUMES} volumes created and healthy in {:?}", started.elapsed());

    let b = Browser::start(1366, 768);
    open_page(&b, &cluster, "/volumes");
    b.wait_js(
        "200 rows",
        Duration::from_secs(20),
        &format!("return document.querySelectorAll('#volumes-table tr[data-name]').length === {VOLUMES}"),
    );
    b.screenshot(&artifact_dir("ui_live_stream").join("volumes-200.png"));
    b.js("window.__notReloaded = true", vec![]);

    // A second subscriber measures what the stream sends from now on, headers included.
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let body = Arc::new(Mutex::new(Vec::new()));
    let body_in = body.clone();
    let url = format!("{}/v1/watch", cluster.url());
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
        let mut response = client.get(url).send().unwrap();
        let headers: usize = response.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        counter.fetch_add(headers, Ordering::SeqCst);
        let mut buf = [0u8; 8192];
        while let Ok(n) = response.read(&mut buf) {
            if n == 0 {
                break;
            }
            counter.fetch_add(n, Ordering::SeqCst);
            body_in.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    std::thread::sleep(WINDOW);
    let bytes = received.load(Ordering::SeqCst);
    let rate = bytes as f64 / WINDOW.as_secs_f64();
    println!("idle stream with {VOLUMES} volumes: {bytes} bytes in {WINDOW:?} = {rate:.1} B/s");
    let text = String::from_utf8_lossy(&body.lock().unwrap()).into_owned();
    let sent: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .map(|m| format!("{} {} ({} bytes)", m["kind"], m["name"], m.to_string().len()))
        .collect();
    println!("messages on the idle stream: {sent:?}");
    assert!(!sent.iter().any(|m| m.starts_with("\"volume\"")), "idle volumes were sent again: {sent:?}");
    assert!(rate < 1024.0, "the idle stream sent {rate:.1} B/s ({bytes} bytes in {WINDOW:?})");

    // Still live: a change to one of the 200 shows in the open page within a second.
    let (status, body) = cluster.post("/v1/volumes/idle-007/attach", json!({}));
    assert_eq!(status, 200, "{body}");
    let asked = Instant::now();
    b.wait_js(
        "idle-007 attaching or attached",
        Duration::from_secs(1),
        "const r = document.querySelector(\"#volumes-table tr[data-name='idle-007']\"); return r && r.dataset.state !== 'detached'",
    );
    println!("a change showed in the open page {:?} after the API answered", asked.elapsed());
    assert_eq!(b.js("return window.__notReloaded === true", vec![]), true, "the page was reloaded");
    b.assert_no_console_errors("/volumes with 200 volumes");
}
