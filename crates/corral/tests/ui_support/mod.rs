//! What the web UI's tests share: a real headless Chromium driven through WebDriver (chromedriver,
//! spoken to with plain HTTP + JSON), a quickstart cluster to point it at, and the checks every
//! page gets (no console error; a screenshot saved as an artifact).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_testkit::cluster::free_port;
pub use corral_testkit::cluster::TestCluster;
use corral_testkit::process::Process;
use serde_json::{json, Value};

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Start a one-node quickstart (two replicas may share its node).
pub fn start_cluster() -> TestCluster {
    TestCluster::builder().binary(env!("CARGO_BIN_EXE_corral")).soft_anti_affinity(true).build()
}

/// Where this test keeps its screenshots (kept after the test: they are its artifacts).
pub fn artifact_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-artifacts").join(test);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
    dir
}

fn find_tool(name: &str, candidates: &[&str]) -> String {
    for c in candidates {
        if Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!(
        "{name} is not installed (looked for {candidates:?}): the UI tests need Debian's chromium and \
         chromium-driver (apt-get install chromium chromium-driver; scripts/install-test-deps does it)"
    );
}

/// A headless Chromium session. Dropping it ends the session and kills chromedriver (which takes
/// its browser with it); the profile directory is removed.
pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    session: String,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a window of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let driver_bin =
            find_tool("chromedriver", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find_tool("chromium", &["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let port = free_port();
        let driver = Process::spawn("chromedriver", Command::new(driver_bin).arg(format!("--port={port}")));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready: {}", driver.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.path().display()),
                         format!("--window-size={width},{height}")]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}; {}", driver.stderr()));
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no Chromium session: {answer}"))
            .to_string();
        Browser { http, base, session, _driver: driver, _profile: profile }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req.send().unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        assert!(status.is_success(), "WebDriver {method} {path} failed: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Wait until `script` returns a truthy value; panics with `what` and the page's text.
    pub fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script, vec![]);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.js(
                    "return document.querySelector('#conn').innerText + '\\n' + document.querySelector('main').innerText",
                    vec![],
                );
                panic!(
                    "the page never showed {what} in {timeout:?}; it shows:\n{}\nconsole: {:#?}",
                    text.as_str().unwrap_or(""),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element `css` matches (panics if none).
    pub fn find(&self, css: &str) -> String {
        let v = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    /// Click what `css` matches, as a user would (the element must be visible and enabled).
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), None);
    }

    /// Replace the value of the input `css` by typing `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), None);
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    /// Press Tab once; the text (or name) of the element that has the focus then.
    pub fn tab(&self) -> String {
        let tab = "\u{E004}";
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": tab}, {"type": "keyUp", "value": tab}]}]})),
        );
        let v = self.js(
            "const e = document.activeElement; return (e.textContent || e.name || e.tagName).trim()",
            vec![],
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Save a PNG screenshot of the window as `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = decode_base64(b64.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("screenshot: {}", path.display());
    }

    /// The browser's console messages since the last call (Chromium's log through chromedriver).
    pub fn console(&self) -> Vec<Value> {
        self.call(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Panics if the console shows an error (a message of level SEVERE) since the last call.
    pub fn assert_no_console_errors(&self, page: &str) {
        let errors: Vec<Value> = self.console().into_iter().filter(|m| m["level"] == "SEVERE").collect();
        assert!(errors.is_empty(), "console errors on {page}: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Open `path` of the cluster's UI and wait until the page listed its data (the live stream said
/// `ready` and the first list was applied: the live badge reads "live").
pub fn open_page(b: &Browser, cluster: &TestCluster, path: &str) {
    b.goto(&format!("{}{path}", cluster.url()));
    b.wait_js(
        &format!("{path} connected to the live stream"),
        Duration::from_secs(15),
        "return document.querySelector('#live')?.textContent === '● live'",
    );
}
