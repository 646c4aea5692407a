//! The pages' markup (maud): layout, navigation, forms and the empty tables the script fills.
//! Element ids and `data-*` attributes here are what `js/*.js` looks for.
use maud::{html, Markup, DOCTYPE};

/// A small icon, so the browser's automatic `/favicon.ico` request finds something.
pub const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2d6a4f"/><path d="M4 4h8v2H4zm0 3h8v2H4zm0 3h8v2H4z" fill="#fff"/></svg>"##;

const NAV: [(&str, &str, &str); 7] = [
    ("dashboard", "/", "Dashboard"),
    ("volumes", "/volumes", "Volumes"),
    ("nodes", "/nodes", "Nodes"),
    ("backups", "/backups", "Backups"),
    ("recurringjobs", "/recurringjobs", "Recurring jobs"),
    ("settings", "/settings", "Settings"),
    ("events", "/events", "Events"),
];

fn layout(page: &str, title: &str, extra: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Corral" }
                link rel="icon" href="/favicon.ico" type="image/svg+xml";
                link rel="stylesheet" href="/ui/style.css";
                script src="/ui/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/" { "Corral" }
                    nav aria-label="Main" {
                        ul {
                            @for (id, href, label) in NAV {
                                li { a href=(href) aria-current=[(id == page).then_some("page")] { (label) } }
                            }
                        }
                    }
                    span #live title="Live updates" { "…" }
                }
                div #conn role="alert" hidden {}
                main #main data-page=(page) data-name=[extra.filter(|e| e.0 == "name").map(|e| e.1)] {
                    h1 { (title) }
                    (body)
                }
                dialog #confirm {
                    form method="dialog" {
                        p #confirm-text {}
                        label #confirm-input-label hidden {
                            span #confirm-input-name {}
                            input #confirm-input type="text" autocomplete="off";
                        }
                        div.buttons {
                            button value="cancel" formnovalidate { "Cancel" }
                            button #confirm-ok value="ok" { "Confirm" }
                        }
                    }
                }
            }
        }
    }
}

fn section(title: &str, id: &str, body: Markup) -> Markup {
    html! {
        section aria-labelledby={ (id) "-h" } {
            h2 id={ (id) "-h" } { (title) }
            p.error id={ (id) "-error" } role="alert" hidden {}
            (body)
        }
    }
}

fn table(id: &str, headers: &[&str]) -> Markup {
    html! {
        div.scroll {
            table id=(id) {
                thead { tr { @for h in headers { th scope="col" { (h) } } } }
                tbody {}
            }
        }
    }
}

pub fn dashboard() -> Markup {
    layout(
        "dashboard",
        "Dashboard",
        None,
        html! {
            div.cards {
                (section("Volumes", "dash-volumes", html! { ul.counts #volume-counts {} }))
                (section("Storage", "dash-storage", html! { ul.counts #storage-counts {} }))
                (section("Nodes", "dash-nodes", html! { ul.counts #node-counts {} }))
            }
            (section("Latest events", "dash-events", table("events-table", &["Time", "Type", "Object", "Reason", "Message"])))
        },
    )
}

pub fn volumes() -> Markup {
    layout(
        "volumes",
        "Volumes",
        None,
        html! {
            (section("Create a volume", "create", html! {
                form #create-volume.inline {
                    label { "Name" input name="name" required autocomplete="off" pattern="[a-z0-9][a-z0-9._\\-]{0,62}" title="lowercase letters, digits, '.', '_' and '-'"; }
                    label { "Size" input name="size" value="1Gi" required title="bytes, or with Ki, Mi, Gi, Ti"; }
                    label { "Replicas" input name="replicas" type="number" min="1" max="20" value="1"; }
                    label { "Data locality" select name="dataLocality" { option value="disabled" { "disabled" } option value="best-effort" { "best-effort" } } }
                    label { "From backup (URL)" input name="fromBackup" autocomplete="off" list="backup-urls"; }
                    datalist #backup-urls {}
                    button type="submit" { "Create" }
                }
            }))
            (section("Volumes", "list", html! {
                p #filter-note hidden {}
                (table("volumes-table", &["Name", "State", "Robustness", "Size", "Actual size", "Replicas", "Node", "Endpoint", "Last backup", "Actions"]))
            }))
        },
    )
}

pub fn volume(name: &str) -> Markup {
    layout(
        "volume",
        name,
        Some(("name", name)),
        html! {
            p { a href="/volumes" { "← Volumes" } }
            (section("Volume", "detail", html! {
                div.actions #volume-actions {}
                dl #volume-fields {}
            }))
            (section("Replicas", "replicas", table("replicas-table", &["Name", "Node", "Disk", "Mode", "State", "Actual size", "Rebuild", "Failed at"])))
            (section("Snapshots", "snapshots", html! {
                form #take-snapshot.inline {
                    label { "Name (optional)" input name="name" autocomplete="off"; }
                    button type="submit" { "Take snapshot" }
                }
                ul.tree #snapshot-tree {}
            }))
            (section("Backups", "vbackups", table("vbackups-table", &["Name", "Snapshot", "State", "Progress", "Size", "Created"])))
            (section("Recurring jobs", "vjobs", table("vjobs-table", &["Name", "Task", "Cron", "Retain"])))
            (section("Events", "vevents", table("events-table", &["Time", "Type", "Object", "Reason", "Message"])))
        },
    )
}

pub fn nodes() -> Markup {
    layout(
        "nodes",
        "Nodes and disks",
        None,
        html! {
            (section("Nodes", "nodes", html! { div #nodes-list {} }))
            (section("Add a disk", "adddisk", html! {
                form #add-disk.inline {
                    label { "Node" select name="node" #add-disk-node {} }
                    label { "Name (optional)" input name="name" autocomplete="off"; }
                    label { "Path" input name="path" required autocomplete="off"; }
                    label { "Tags (comma-separated)" input name="tags" autocomplete="off"; }
                    button type="submit" { "Add disk" }
                }
            }))
        },
    )
}

pub fn backups() -> Markup {
    layout(
        "backups",
        "Backups",
        None,
        html! {
            (section("Backup target", "target", html! {
                p #target-status {}
                form #set-target.inline {
                    label { "URL" input name="url" required autocomplete="off" size="40"; }
                    button type="submit" { "Set target" }
                }
            }))
            (section("Backup volumes", "bvolumes", table("bvolumes-table", &["Name", "Size", "Last backup", "Backups", "Actions"])))
            (section("Backups", "blist", html! {
                p #blist-note { "Choose a backup volume above." }
                (table("backups-table", &["Name", "Snapshot", "State", "Size", "Created", "Actions"]))
            }))
        },
    )
}

pub fn recurring_jobs() -> Markup {
    layout(
        "recurringjobs",
        "Recurring jobs",
        None,
        html! {
            (section("Create or edit a job", "job", html! {
                form #job-form.inline {
                    label { "Name" input name="name" required autocomplete="off"; }
                    label { "Task" select name="task" { option value="snapshot" { "snapshot" } option value="backup" { "backup" } } }
                    label { "Cron" input name="cron" required value="0 * * * *"; }
                    label { "Retain" input name="retain" type="number" min="1" max="100" value="5"; }
                    label { "Concurrency" input name="concurrency" type="number" min="1" value="1"; }
                    label { "Volumes (comma-separated)" input name="volumes" autocomplete="off"; }
                    label { "Groups (comma-separated)" input name="groups" autocomplete="off"; }
                    button type="submit" { "Save" }
                }
            }))
            (section("Jobs", "jobs", table("jobs-table", &["Name", "Task", "Cron", "Retain", "Concurrency", "Volumes", "Groups", "Last run", "Actions"])))
        },
    )
}

pub fn settings() -> Markup {
    layout(
        "settings",
        "Settings",
        None,
        html! {
            p.error #settings-error role="alert" hidden {}
            div #settings-groups {}
        },
    )
}

pub fn events() -> Markup {
    layout(
        "events",
        "Events",
        None,
        html! {
            (section("Events", "events", html! {
                label { "Show " select #event-filter { option value="" { "all" } option value="warning" { "warnings" } option value="normal" { "normal" } } }
                (table("events-table", &["Time", "Type", "Object", "Reason", "Message"]))
            }))
        },
    )
}
