//! `GET /metrics`: Prometheus text exposition format (version 0.0.4), computed at scrape time from
//! the datastore, the engines' control APIs and the replica directories on this node.
//!
//! Per volume: `size`, `actual_size` (bytes allocated on disk by its largest local replica),
//! `state` and `robustness` (one series with value 1, the value in a label), read/write operations
//! and bytes as counters from the engine, and IOPS / throughput gauges derived from the last two
//! scrapes; per replica: rebuild progress and mode. Manager-level: volumes and replicas by state,
//! events kept, reconcile passes and the last pass's duration, disk capacity, and the manager
//! process's resident memory and CPU time.
//!
//! Every value is computed when scraped (nothing is kept in long-lived metric objects), so the
//! small encoder below writes families directly instead of going through a metrics registry.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use corral_store::resources::{Node, Replica, Volume, VolumeState};
use corral_store::Resource as _;

use super::AppState;
use crate::clients::disks::allocated_bytes;
use crate::clients::engine::{EngineClient, EngineIo};

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

/// Writes the text exposition format.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Start a family (`kind` is `gauge` or `counter`).
    fn family(&mut self, name: &'static str, kind: &str, help: &str) -> Family<'_> {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        Family { out: &mut self.out, name }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{escaped}\"");
            }
            self.out.push('}');
        }
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.out, " {}", value as i64);
        } else {
            let _ = writeln!(self.out, " {value}");
        }
        self
    }
}

fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|s| s.as_str().map(str::to_string)).unwrap_or_default()
}

/// Resident memory (bytes) and CPU time (seconds) of this process, from /proc.
fn own_process() -> Option<(u64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses) start at field 3.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
    Some((rss_kib.saturating_mul(1024), (utime + stime) as f64 / 100.0))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(st): State<AppState>) -> crate::Result<impl IntoResponse> {
    let volumes: Vec<Volume> = st.ds.list().await?;
    let replicas: Vec<Replica> = st.ds.list().await?;
    let nodes: Vec<Node> = st.ds.list().await?;

    // Engine counters of attached volumes, fetched concurrently.
    let io: BTreeMap<String, EngineIo> = {
        let fetches = volumes.iter().filter_map(|v| {
            let url =
                v.status.engine_control_url.clone().filter(|_| v.status.state == VolumeState::Attached)?;
            let name = v.metadata.name.clone();
            Some(async move {
                let info = tokio::time::timeout(Duration::from_secs(3), EngineClient::new(&url).info()).await;
                match info {
                    Ok(Ok(i)) => i.io().map(|io| (name, io)),
                    _ => None,
                }
            })
        });
        futures::future::join_all(fetches).await.into_iter().flatten().collect()
    };
    // Disk usage of local replicas (a directory walk each: off the async threads).
    let local: Vec<(String, String)> = replicas
        .iter()
        .filter(|r| r.spec.node == st.node)
        .map(|r| (r.spec.volume.clone(), r.spec.data_dir.clone()))
        .collect();
    let actual: BTreeMap<String, u64> = tokio::task::spawn_blocking(move || {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for (vol, dir) in local {
            let a = allocated_bytes(&dir);
            let e = m.entry(vol).or_default();
            *e = (*e).max(a);
        }
        m
    })
    .await
    .unwrap_or_default();

    let now = Instant::now();
    let rates: BTreeMap<String, [f64; 4]> = {
        let mut prev = st.stats.previous_io.lock();
        let mut rates = BTreeMap::new();
        for (vol, cur) in &io {
            if let Some((t, p)) = prev.get(vol) {
                let secs = now.duration_since(*t).as_secs_f64();
                if secs > 0.0 {
                    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                    rates.insert(
                        vol.clone(),
                        [
                            rate(cur.read_ops, p.read_ops),
                            rate(cur.write_ops, p.write_ops),
                            rate(cur.read_bytes, p.read_bytes),
                            rate(cur.write_bytes, p.write_bytes),
                        ],
                    );
                }
            }
        }
        prev.retain(|v, _| io.contains_key(v));
        for (vol, cur) in &io {
            prev.insert(vol.clone(), (now, *cur));
        }
        rates
    };

    let mut x = Exposition::default();
    {
        let mut f = x.family("corral_volume_size_bytes", "gauge", "Volume size (spec) in bytes.");
        for v in &volumes {
            f.sample(&[("volume", v.name())], v.spec.size as f64);
        }
    }
    {
        let mut f = x.family(
            "corral_volume_actual_size_bytes",
            "gauge",
            "Bytes allocated on disk by the volume's largest replica on this node.",
        );
        for v in &volumes {
            if let Some(a) = actual.get(v.name()) {
                f.sample(&[("volume", v.name())], *a as f64);
            }
        }
    }
    {
        let mut f = x.family(
            "corral_volume_state",
            "gauge",
            "1 for the volume's state (creating, detached, attaching, attached, detaching, deleting, error).",
        );
        for v in &volumes {
            let state =
                if v.metadata.deletion_requested.is_some() { VolumeState::Deleting } else { v.status.state };
            f.sample(&[("volume", v.name()), ("state", &lower(&state))], 1.0);
        }
    }
    {
        let mut f = x.family(
            "corral_volume_robustness",
            "gauge",
            "1 for the volume's robustness (healthy, degraded, faulted, unknown).",
        );
        for v in &volumes {
            f.sample(&[("volume", v.name()), ("robustness", &lower(&v.status.robustness))], 1.0);
        }
    }
    type Pick = fn(&EngineIo) -> u64;
    let counters: [(&'static str, &str, Pick); 4] = [
        ("corral_volume_read_ops_total", "Read requests served by the volume's engine.", |i| i.read_ops),
        ("corral_volume_write_ops_total", "Write requests served by the volume's engine.", |i| i.write_ops),
        ("corral_volume_read_bytes_total", "Bytes read through the volume's engine.", |i| i.read_bytes),
        ("corral_volume_write_bytes_total", "Bytes written through the volume's engine.", |i| i.write_bytes),
    ];
    for (name, help, pick) in counters {
        let mut f = x.family(name, "counter", help);
        for (vol, i) in &io {
            f.sample(&[("volume", vol)], pick(i) as f64);
        }
    }
    let gauges: [(&'static str, &str); 4] = [
        ("corral_volume_read_iops", "Read requests per second since the previous scrape."),
        ("corral_volume_write_iops", "Write requests per second since the previous scrape."),
        ("corral_volume_read_throughput_bytes", "Bytes read per second since the previous scrape."),
        ("corral_volume_write_throughput_bytes", "Bytes written per second since the previous scrape."),
    ];
    for (k, (name, help)) in gauges.into_iter().enumerate() {
        let mut f = x.family(name, "gauge", help);
        for (vol, r) in &rates {
            f.sample(&[("volume", vol)], r[k]);
        }
    }
    {
        let mut f = x.family(
            "corral_replica_rebuild_progress_percent",
            "gauge",
            "Percent of the replica copied by its rebuild (100 once RW).",
        );
        for r in &replicas {
            f.sample(
                &[("volume", &r.spec.volume), ("replica", r.name())],
                f64::from(r.status.rebuild_progress),
            );
        }
    }
    {
        let mut f =
            x.family("corral_replica_mode", "gauge", "1 for the replica's mode in its engine (RW, WO, ERR).");
        for r in &replicas {
            if let Some(m) = r.status.mode {
                f.sample(
                    &[("volume", &r.spec.volume), ("replica", r.name()), ("mode", &format!("{m:?}"))],
                    1.0,
                );
            }
        }
    }
    {
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for v in &volumes {
            *by_state.entry(lower(&v.status.state)).or_default() += 1;
        }
        let mut f = x.family("corral_manager_volumes", "gauge", "Volumes by state.");
        for (s, n) in &by_state {
            f.sample(&[("state", s)], *n as f64);
        }
    }
    {
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for r in &replicas {
            *by_state.entry(lower(&r.status.state)).or_default() += 1;
        }
        let mut f = x.family("corral_manager_replicas", "gauge", "Replicas by process state.");
        for (s, n) in &by_state {
            f.sample(&[("state", s)], *n as f64);
        }
    }
    x.family("corral_manager_events", "gauge", "Events kept.").sample(&[], st.events.len() as f64);
    x.family("corral_manager_reconcile_passes_total", "counter", "Reconcile passes run.")
        .sample(&[], st.stats.passes.load(Ordering::Relaxed) as f64);
    x.family("corral_manager_reconcile_last_pass_seconds", "gauge", "Duration of the last reconcile pass.")
        .sample(&[], st.stats.last_pass_micros.load(Ordering::Relaxed) as f64 / 1e6);
    {
        let mut max =
            x.family("corral_disk_storage_maximum_bytes", "gauge", "Size of the disk's filesystem.");
        for n in &nodes {
            for (d, s) in &n.status.disks {
                max.sample(&[("node", n.name()), ("disk", d)], s.storage_maximum as f64);
            }
        }
        let mut avail =
            x.family("corral_disk_storage_available_bytes", "gauge", "Free space of the disk's filesystem.");
        for n in &nodes {
            for (d, s) in &n.status.disks {
                avail.sample(&[("node", n.name()), ("disk", d)], s.storage_available as f64);
            }
        }
        let mut scheduled: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for r in &replicas {
            *scheduled.entry((r.spec.node.as_str(), r.spec.disk.as_str())).or_default() += r.spec.size;
        }
        let mut sch = x.family(
            "corral_disk_storage_scheduled_bytes",
            "gauge",
            "Sum of the sizes of the replicas on the disk.",
        );
        for ((n, d), b) in &scheduled {
            sch.sample(&[("node", n), ("disk", d)], *b as f64);
        }
    }
    if let Some((rss, cpu)) = own_process() {
        x.family("corral_manager_resident_memory_bytes", "gauge", "Resident memory of the manager process.")
            .sample(&[], rss as f64);
        x.family(
            "corral_manager_cpu_seconds_total",
            "counter",
            "CPU time (user + system) of the manager process.",
        )
        .sample(&[], cpu);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], x.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_escapes_labels_and_writes_help_and_type() {
        let mut x = Exposition::default();
        x.family("m_total", "counter", "A \\ help\nline.")
            .sample(&[("volume", "a\"b\\c\nd")], 3.0)
            .sample(&[], 0.5);
        let text = x.finish();
        assert_eq!(
            text,
            "# HELP m_total A \\\\ help\\nline.\n# TYPE m_total counter\nm_total{volume=\"a\\\"b\\\\c\\nd\"} 3\nm_total 0.5\n"
        );
    }
}
