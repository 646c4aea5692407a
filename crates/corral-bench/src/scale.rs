//! `corral-bench scale [--volumes N] [--size-mib MIB] [--idle-secs S] [--dir DIR] [--corral PATH]`:
//! the control plane at scale. Starts `corral quickstart` on a fresh data dir, creates N volumes
//! (default 200) of 16 MiB with 1 replica through the REST API, attaches them all, and reports:
//! the time until every volume is `attached` and `healthy`; the resident memory of the quickstart
//! process (manager and instance manager run in it) and of its engine and replica processes; and
//! their idle CPU, sampled from `/proc/<pid>/stat` over `--idle-secs` (default 30) with nothing to
//! do. Then it detaches and deletes every volume and stops the quickstart (Ctrl-C path).
//!
//! Talks HTTP/1.0 over a plain TCP stream (one request per connection) so the bench needs no HTTP
//! client library; the API is JSON on loopback.
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Options of `scale`.
pub struct ScaleOptions {
    pub volumes: usize,
    pub size_mib: u64,
    pub idle_secs: u64,
    pub dir: PathBuf,
    pub corral: PathBuf,
}

/// Parse the arguments after `scale`.
pub fn parse(args: &[String], corral: PathBuf) -> Option<ScaleOptions> {
    let mut o = ScaleOptions {
        volumes: 200,
        size_mib: 16,
        idle_secs: 30,
        dir: PathBuf::from("target/bench-scale"),
        corral,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--volumes" => o.volumes = it.next()?.parse().ok()?,
            "--size-mib" => o.size_mib = it.next()?.parse().ok()?,
            "--idle-secs" => o.idle_secs = it.next()?.parse().ok()?,
            "--dir" => o.dir = PathBuf::from(it.next()?),
            "--corral" => o.corral = PathBuf::from(it.next()?),
            _ => return None,
        }
    }
    Some(o)
}

type BenchResult<T> = Result<T, String>;

fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> BenchResult<(u16, Value)> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&*text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let value =
        if body.trim().is_empty() { Value::Null } else { serde_json::from_str(body).unwrap_or(Value::Null) };
    Ok((status, value))
}

fn expect(addr: &str, method: &str, path: &str, body: Option<&Value>, ok: &[u16]) -> BenchResult<Value> {
    let (status, v) = http(addr, method, path, body)?;
    if ok.contains(&status) {
        Ok(v)
    } else {
        Err(format!("{method} {path}: HTTP {status}: {v}"))
    }
}

fn free_port() -> BenchResult<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) as f64 / 100.0)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok());
        if ppid == Some(pid) {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((p, cmd));
        }
    }
    out
}

struct Quickstart {
    child: Child,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sampled resource use of one group of processes.
struct Usage {
    rss: u64,
    cpu_percent: f64,
    count: usize,
}

fn sample(groups: &[Vec<u32>], secs: u64) -> Vec<Usage> {
    let before: Vec<Vec<f64>> =
        groups.iter().map(|g| g.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).collect()).collect();
    std::thread::sleep(Duration::from_secs(secs));
    groups
        .iter()
        .zip(before)
        .map(|(g, b)| {
            let used: f64 = g.iter().zip(b).map(|(p, b0)| cpu_seconds(*p).unwrap_or(b0) - b0).sum();
            Usage {
                rss: g.iter().filter_map(|p| rss_bytes(*p)).sum(),
                cpu_percent: used / secs as f64 * 100.0,
                count: g.len(),
            }
        })
        .collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Run the scale benchmark and print its report.
pub fn run(o: &ScaleOptions) -> BenchResult<()> {
    if !o.corral.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p corral)",
            o.corral.display()
        ));
    }
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let data = o.dir.join("data");
    let addr = format!("127.0.0.1:{}", free_port()?);
    let base = free_port()?.clamp(20000, 50000);
    let ports = format!("{base}-{}", base + (o.volumes as u16).saturating_mul(4) + 100);
    let log = std::fs::File::create(o.dir.join("quickstart.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&o.corral)
        .args(["quickstart", "--data-dir"])
        .arg(&data)
        .args(["--listen", &addr, "--port-range", &ports, "--node", "local"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.corral.display()))?;
    let mut qs = Quickstart { child };
    let pid = qs.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&addr, "GET", "/healthz", None).map(|r| r.0) != Ok(200) {
        if Instant::now() > deadline {
            return Err("quickstart did not answer /healthz within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle0 = sample(&[vec![pid]], o.idle_secs.min(10));
    println!(
        "corral-bench scale: {} volumes of {} MiB, 1 replica each, one node (quickstart pid {pid}, API {addr})",
        o.volumes, o.size_mib
    );
    println!(
        "  before any volume: quickstart RSS {:.1} MiB, CPU {:.2}%",
        mib(idle0[0].rss),
        idle0[0].cpu_percent
    );

    // The bench measures the control plane, not the disk-space policy: a shared machine's disk may
    // be below the default 10% free that a disk needs to take replicas.
    let relax = json!({"value": "0"});
    expect(&addr, "PUT", "/v1/settings/storage-minimal-available-percentage", Some(&relax), &[200])?;
    let names: Vec<String> = (0..o.volumes).map(|i| format!("scale-{i:04}")).collect();
    let t0 = Instant::now();
    for n in &names {
        let body = json!({"name": n, "size": o.size_mib << 20, "numberOfReplicas": 1});
        expect(&addr, "POST", "/v1/volumes", Some(&body), &[201])?;
    }
    let created = t0.elapsed();
    for n in &names {
        expect(&addr, "POST", &format!("/v1/volumes/{n}/attach"), Some(&json!({})), &[200])?;
    }
    let requested = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    let healthy_at = loop {
        let list = expect(&addr, "GET", "/v1/volumes", None, &[200])?;
        let ready = list
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|v| {
                        v["state"] == "attached" && v["robustness"] == "healthy" && v["endpoint"].is_string()
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready >= o.volumes {
            break t0.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  ... {ready}/{} attached and healthy after {:.0?}", o.volumes, t0.elapsed());
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready}/{} volumes attached and healthy after 30 minutes", o.volumes));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("  created {} volumes in {:.1?}, attach requested by {:.1?}", o.volumes, created, requested);
    println!("  all {} attached and healthy after {:.1?}", o.volumes, healthy_at);

    // Let the last events settle, then sample with nothing to do.
    std::thread::sleep(Duration::from_secs(5));
    let kids = children(pid);
    let engines: Vec<u32> =
        kids.iter().filter(|(_, c)| c.contains(" engine serve ")).map(|(p, _)| *p).collect();
    let replicas: Vec<u32> =
        kids.iter().filter(|(_, c)| c.contains(" replica serve ")).map(|(p, _)| *p).collect();
    let u = sample(&[vec![pid], engines, replicas], o.idle_secs);
    println!("  idle with {} volumes attached, sampled over {} s from /proc:", o.volumes, o.idle_secs);
    println!("  | processes | count | RSS total | CPU (% of one core) |");
    println!("  |---|---|---|---|");
    for (label, x) in ["quickstart (manager + instance manager)", "engines", "replicas"].iter().zip(&u) {
        println!("  | {label} | {} | {:.1} MiB | {:.2}% |", x.count, mib(x.rss), x.cpu_percent);
    }

    // Clean up through the API, then the Ctrl-C path.
    let t1 = Instant::now();
    for n in &names {
        expect(&addr, "POST", &format!("/v1/volumes/{n}/detach"), Some(&json!({})), &[200])?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = expect(&addr, "GET", "/v1/volumes", None, &[200])?;
        let detached =
            list.as_array().map(|l| l.iter().filter(|v| v["state"] == "detached").count()).unwrap_or(0);
        if detached >= o.volumes {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {detached}/{} volumes detached after 10 minutes", o.volumes));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in &names {
        expect(&addr, "DELETE", &format!("/v1/volumes/{n}"), None, &[202, 404])?;
    }
    loop {
        let list = expect(&addr, "GET", "/v1/volumes", None, &[200])?;
        if list.as_array().is_none_or(|l| l.is_empty()) {
            break;
        }
        if Instant::now() > deadline {
            return Err("volumes not deleted after 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("  detached and deleted all in {:.1?}", t1.elapsed());
    let _ = nix_sigint(pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while qs.child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            return Err("quickstart did not stop within 60 s of SIGINT".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// SIGINT through `kill` (the bench has no signal library).
fn nix_sigint(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill").args(["-INT", &pid.to_string()]).status()
}
