//! Running one fio job and reading its JSON result.

use std::process::Command;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A tool could not run or failed.
    #[error("{tool}: {message}")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        message: String,
    },
}

pub fn tool_error(tool: &str, message: impl Into<String>) -> BenchError {
    BenchError::Tool { tool: tool.to_string(), message: message.into() }
}

/// One fio job.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// Short name for the table.
    pub name: &'static str,
    /// fio `rw=`.
    pub rw: &'static str,
    /// Block size in bytes.
    pub bs: u64,
    /// Queue depth.
    pub qd: u32,
    /// Time-based (false: one pass over the size, used to fill).
    pub timed: bool,
}

/// The jobs, in run order: the first fills the target so reads hit data.
pub const JOBS: [Job; 6] = [
    Job { name: "1M seq write QD8", rw: "write", bs: 1 << 20, qd: 8, timed: false },
    Job { name: "4K rand write QD1", rw: "randwrite", bs: 4096, qd: 1, timed: true },
    Job { name: "4K rand write QD32", rw: "randwrite", bs: 4096, qd: 32, timed: true },
    Job { name: "4K rand read QD1", rw: "randread", bs: 4096, qd: 1, timed: true },
    Job { name: "4K rand read QD32", rw: "randread", bs: 4096, qd: 32, timed: true },
    Job { name: "1M seq read QD8", rw: "read", bs: 1 << 20, qd: 8, timed: true },
];

/// What a job measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub iops: f64,
    pub mib_s: f64,
    /// Mean completion latency in µs.
    pub lat_us: f64,
}

/// Where fio sends I/O.
pub enum Target<'a> {
    /// `--ioengine=nbd --uri=…`.
    Nbd(&'a str),
    /// A plain file with `direct=1`, io_uring.
    File(&'a std::path::Path),
}

/// Runs `job` against `target` (`size` bytes, `runtime` seconds for timed jobs).
pub fn run(job: &Job, target: &Target<'_>, size: u64, runtime: u64) -> Result<Measured, BenchError> {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=bench").arg(format!("--rw={}", job.rw)).arg(format!("--bs={}", job.bs));
    cmd.arg(format!("--iodepth={}", job.qd)).arg(format!("--size={size}"));
    cmd.args(["--output-format=json", "--group_reporting", "--numjobs=1", "--randrepeat=0", "--norandommap"]);
    if job.timed {
        cmd.args(["--time_based", &format!("--runtime={runtime}"), "--ramp_time=1"]);
    }
    match target {
        Target::Nbd(uri) => {
            cmd.args(["--ioengine=nbd", &format!("--uri={uri}")]);
        }
        Target::File(path) => {
            cmd.args(["--ioengine=io_uring", "--direct=1"]).arg(format!("--filename={}", path.display()));
        }
    }
    let out =
        cmd.output().map_err(|e| tool_error("fio", format!("cannot run fio (Debian package fio): {e}")))?;
    if !out.status.success() {
        return Err(tool_error(
            "fio",
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before the JSON document.
    let start = text.find('{').ok_or_else(|| tool_error("fio", "no JSON in the output"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| tool_error("fio", format!("bad JSON: {e}")))?;
    let j = &v["jobs"][0];
    let side = if job.rw.contains("write") { &j["write"] } else { &j["read"] };
    Ok(Measured {
        iops: side["iops"].as_f64().unwrap_or(0.0),
        mib_s: side["bw"].as_f64().unwrap_or(0.0) / 1024.0,
        lat_us: side["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
    })
}
