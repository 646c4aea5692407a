//! The web UI drives a volume's life in a real headless Chromium against a real quickstart, and
//! every change shows in the open page without a reload (the page marks its document and the test
//! checks the mark is still there): a bad name in the create form shows the API's message and
//! creates nothing; a volume created in the form appears and becomes healthy; attach; a snapshot
//! appears in the tree; its backup appears; a restore from the Backups page becomes healthy; a
//! replica process killed with SIGKILL shows ERR, then a rebuild with its progress, then RW again.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod ui_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use corral_testkit::cluster::processes_mentioning;
use serde_json::{json, Value};
use ui_support::{artifact_dir, open_page, start_cluster, Browser};

const LIVE: Duration = Duration::from_secs(60);

fn row(name: &str) -> String {
    format!("#volumes-table tr[data-name='{name}']")
}

/// Mark the open document, so a later check can tell it was not reloaded.
fn mark_document(b: &Browser) {
    b.js("window.__notReloaded = true", vec![]);
}

fn assert_not_reloaded(b: &Browser, what: &str) {
    assert_eq!(
        b.js("return window.__notReloaded === true", vec![]),
        true,
        "the page was reloaded during {what}"
    );
}

fn click_in_row(b: &Browser, table_row: &str, label: &str) {
    let found = b.js(
        "const r = document.querySelector(arguments[0]); const btn = r && [...r.querySelectorAll('button')].find(x => x.textContent === arguments[1]); \
         if (!btn) return false; btn.setAttribute('data-test-target', '1'); return true",
        vec![json!(table_row), json!(label)],
    );
    assert_eq!(found, true, "no button {label:?} in {table_row}");
    b.click("[data-test-target='1']");
    b.js("document.querySelector(\"[data-test-target='1']\")?.removeAttribute('data-test-target')", vec![]);
}

#[test]
fn a_volume_lives_its_whole_life_in_the_browser_without_a_reload() {
    let cluster = start_cluster();
    let dir = artifact_dir("ui_volumes");
    let b = Browser::start(1366, 768);
    open_page(&b, &cluster, "/volumes");
    mark_document(&b);

    // A bad name: the API's own message, where the user acted, and nothing created.
    b.type_into("#create-volume input[name='name']", "Bad_Name");
    b.type_into("#create-volume input[name='size']", "64Mi");
    b.click("#create-volume button[type='submit']");
    let shown = b.wait_js(
        "the API's error under the create form",
        Duration::from_secs(10),
        "const p = document.querySelector('#create-error'); return !p.hidden && p.textContent",
    );
    let (status, api_answer) = cluster.post("/v1/volumes", json!({"name": "Bad_Name", "size": 64 << 20}));
    assert_eq!(status, 400);
    assert_eq!(shown, api_answer["message"], "the form shows the API's message");
    b.screenshot(&dir.join("bad-name.png"));
    assert_eq!(cluster.get("/v1/volumes").1, json!([]), "a refused create created something");
    b.console(); // the refused request is logged by the browser as a failed resource load

    // Create in the form: appears, becomes healthy.
    b.type_into("#create-volume input[name='name']", "web1");
    b.type_into("#create-volume input[name='size']", "1Gi");
    b.type_into("#create-volume input[name='replicas']", "2");
    b.click("#create-volume button[type='submit']");
    b.wait_js("web1 healthy", LIVE, &format!(
        "const r = document.querySelector(\"{}\"); return r && r.dataset.robustness === 'healthy' && r.dataset.state === 'detached'",
        row("web1")
    ));
    assert!(b.js("return document.querySelector('#create-error').hidden", vec![]) == true);

    // Attach from its row.
    click_in_row(&b, &row("web1"), "Attach");
    b.wait_js("web1 attached and healthy", LIVE, &format!(
        "const r = document.querySelector(\"{}\"); return r && r.dataset.state === 'attached' && r.dataset.robustness === 'healthy' \
         && r.querySelector('td.endpoint').textContent.startsWith('nbd')",
        row("web1")
    ));
    b.screenshot(&dir.join("attached.png"));
    assert_not_reloaded(&b, "create and attach");

    // The volume's page: take a snapshot, back it up.
    open_page(&b, &cluster, "/volumes/web1");
    mark_document(&b);
    b.type_into("#take-snapshot input[name='name']", "snap1");
    b.click("#take-snapshot button[type='submit']");
    b.wait_js(
        "snap1 in the tree",
        LIVE,
        "return document.querySelector(\"#snapshot-tree li[data-name='snap1']\")",
    );
    click_in_row(&b, "#snapshot-tree li[data-name='snap1']", "Back up");
    b.wait_js(
        "a completed backup of snap1",
        LIVE,
        "return [...document.querySelectorAll('#vbackups-table tr[data-state=completed]')].some(r => r.cells[1].textContent === 'snap1')",
    );
    b.screenshot(&dir.join("snapshot-and-backup.png"));
    assert_not_reloaded(&b, "snapshot and backup");
    b.assert_no_console_errors("/volumes/web1");

    // Restore it from the Backups page into a new volume; it becomes healthy in the volume list.
    open_page(&b, &cluster, "/backups");
    b.wait_js(
        "web1's backup volume",
        LIVE,
        "return document.querySelector(\"#bvolumes-table tr[data-name='web1']\")",
    );
    click_in_row(&b, "#bvolumes-table tr[data-name='web1']", "Show backups");
    b.wait_js(
        "a backup to restore",
        LIVE,
        "return document.querySelector('#backups-table tr[data-state=completed]')",
    );
    click_in_row(&b, "#backups-table tr[data-state=completed]", "Restore");
    b.type_into("#confirm-input", "web1-restored");
    b.click("#confirm-ok");
    b.wait_js(
        "the restore started",
        LIVE,
        "return document.querySelector(\"#blist-note a[href='/volumes/web1-restored']\")",
    );
    open_page(&b, &cluster, "/volumes");
    mark_document(&b);
    b.wait_js("web1-restored healthy", LIVE, &format!(
        "const r = document.querySelector(\"{}\"); return r && r.dataset.robustness === 'healthy' && r.dataset.state === 'detached'",
        row("web1-restored")
    ));
    b.screenshot(&dir.join("restored.png"));
    assert_not_reloaded(&b, "the restore");

    // Data to rebuild, so the rebuild lasts long enough to be watched.
    let endpoint = cluster.volume("web1")["endpoint"].as_str().unwrap().to_string();
    corral_testkit::nbd::qemu_io(&endpoint, &["write -P 0x5a 0 768M"]);

    // SIGKILL a replica process while the volume's page is open; record every state the page shows.
    open_page(&b, &cluster, "/volumes/web1");
    mark_document(&b);
    // The replicas' nodes measure the 768 MiB written: the page shows the actual size.
    b.wait_js(
        "web1's actual size shown in MiB",
        LIVE,
        "const d = document.querySelector(\"dd[data-field='Actual size']\"); return d && / MiB$/.test(d.textContent) && Number(d.textContent.split(' ')[0]) >= 768",
    );
    b.js(
        "window.__seen = []; const t = document.querySelector('#replicas-table tbody'); \
         const note = () => { for (const r of t.rows) { const p = r.querySelector('progress'); \
           window.__seen.push([r.dataset.name, r.dataset.mode, p ? Number(p.value) : null]); } }; \
         new MutationObserver(note).observe(t, {childList: true, subtree: true}); note();",
        vec![],
    );
    let victim = cluster.volume("web1")["replicas"][0]["name"].as_str().unwrap().to_string();
    let procs = processes_mentioning(&format!("replicas/{victim} "));
    assert_eq!(procs.len(), 1, "one process serves {victim}: {procs:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(procs[0].0 as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let started = Instant::now();
    // Until the page shows the volume healthy again with the victim RW, after it showed it not RW.
    loop {
        let script = format!(
            "const seen = window.__seen.filter(s => s[0] === '{victim}'); \
             const down = seen.findIndex(s => s[1] !== 'RW'); \
             const back = seen.findIndex((s, i) => down >= 0 && i > down && s[1] === 'RW'); \
             return back > down && document.querySelector(\"[data-field='Robustness']\").textContent === 'healthy'"
        );
        if b.js(&script, vec![]) == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the page never showed {victim} failing and coming back: {}",
            b.js("return JSON.stringify(window.__seen)", vec![])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: Vec<Value> = b
        .js(&format!("return window.__seen.filter(s => s[0] === '{victim}')"), vec![])
        .as_array()
        .unwrap()
        .clone();
    let modes: Vec<&str> = seen.iter().filter_map(|s| s[1].as_str()).collect();
    let err = modes.iter().position(|m| *m == "ERR");
    let wo = modes.iter().rposition(|m| *m == "WO");
    assert!(err.is_some() && wo > err, "the page did not show ERR, then WO (rebuilding): {seen:?}");
    let progress: Vec<i64> = seen.iter().filter(|s| s[1] == "WO").filter_map(|s| s[2].as_i64()).collect();
    println!(
        "replica {victim} after SIGKILL, in {:?}: modes and rebuild progress shown: {seen:?}",
        started.elapsed()
    );
    assert!(!progress.is_empty(), "the rebuild showed no progress bar: {seen:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "rebuild progress went backwards: {progress:?}");
    let distinct: BTreeSet<i64> = progress.iter().copied().collect();
    assert!(distinct.len() >= 2, "the rebuild's progress did not rise in the page: {progress:?}");
    b.screenshot(&dir.join("rebuilt.png"));
    assert_not_reloaded(&b, "the replica's failure and rebuild");
}
