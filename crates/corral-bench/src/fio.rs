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
    /// fio `fsync=`: a flush after every this many writes (0: never). On an NBD target fio sends
    /// NBD_CMD_FLUSH; on the plain file it calls fsync(2) on a buffered file.
    pub fsync: u32,
}

/// The jobs, in run order: the first fills the target so reads hit data.
pub const JOBS: [Job; 6] = [
    Job { name: "1M seq write QD8", rw: "write", bs: 1 << 20, qd: 8, timed: false, fsync: 0 },
    Job { name: "4K rand write QD1", rw: "randwrite", bs: 4096, qd: 1, timed: true, fsync: 0 },
    Job { name: "4K rand write QD32", rw: "randwrite", bs: 4096, qd: 32, timed: true, fsync: 0 },
    Job { name: "4K rand read QD1", rw: "randread", bs: 4096, qd: 1, timed: true, fsync: 0 },
    Job { name: "4K rand read QD32", rw: "randread", bs: 4096, qd: 32, timed: true, fsync: 0 },
    Job { name: "1M seq read QD8", rw: "read", bs: 1 << 20, qd: 8, timed: true, fsync: 0 },
];

/// Index of the 4 KiB random read QD1 job in [`JOBS`] (its latency is reported with the durable jobs).
pub const READ_QD1: usize = 3;

/// The durable fio job, run after [`JOBS`] (so the target is filled): a flush after every write at QD1.
/// (QD32 with a flush every 32 writes and FUA writes are libnbd loops: see sync_loop.rs.)
pub const DURABLE_JOBS: [Job; 1] = [Job {
    name: "4K rand write QD1, fsync every write",
    rw: "randwrite",
    bs: 4096,
    qd: 1,
    timed: true,
    fsync: 1,
}];

/// What a job measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub iops: f64,
    pub mib_s: f64,
    /// Mean completion latency in µs.
    pub lat_us: f64,
    /// 99th percentile completion latency in µs.
    pub lat_p99_us: f64,
    /// Mean latency of the flushes (fsync / NBD_CMD_FLUSH, or the FUA write itself) in µs; 0 without.
    pub sync_us: f64,
    /// 99th percentile of the same in µs.
    pub sync_p99_us: f64,
}

/// Where fio sends I/O.
pub enum Target<'a> {
    /// `--ioengine=nbd --uri=…`.
    Nbd(&'a str),
    /// A plain file: `direct=1` with io_uring for the buffered jobs; for a job with `fsync`, a buffered
    /// file (psync at QD1, io_uring above) whose fsync(2) is the flush, as a database on a file has it.
    File(&'a std::path::Path),
}

/// How long fio runs a timed job.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Measured time of a timed job, in milliseconds.
    pub runtime_ms: u64,
    /// Warm-up before measuring, in milliseconds (0: none).
    pub ramp_ms: u64,
}

/// Runs `job` against `target` (`size` bytes, `timing` for timed jobs).
pub fn run(job: &Job, target: &Target<'_>, size: u64, timing: Timing) -> Result<Measured, BenchError> {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=bench").arg(format!("--rw={}", job.rw)).arg(format!("--bs={}", job.bs));
    cmd.arg(format!("--iodepth={}", job.qd)).arg(format!("--size={size}"));
    cmd.args(["--output-format=json", "--group_reporting", "--numjobs=1", "--randrepeat=0", "--norandommap"]);
    if job.timed {
        cmd.args(["--time_based", &format!("--runtime={}ms", timing.runtime_ms)]);
        if timing.ramp_ms > 0 {
            cmd.arg(format!("--ramp_time={}ms", timing.ramp_ms));
        }
    }
    if job.fsync > 0 {
        cmd.arg(format!("--fsync={}", job.fsync));
    }
    match target {
        Target::Nbd(uri) => {
            cmd.args(["--ioengine=nbd", &format!("--uri={uri}")]);
        }
        Target::File(path) if job.fsync > 0 => {
            let engine = if job.qd == 1 { "--ioengine=psync" } else { "--ioengine=io_uring" };
            cmd.args([engine, "--direct=0"]).arg(format!("--filename={}", path.display()));
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
    let us = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1000.0;
    Ok(Measured {
        iops: side["iops"].as_f64().unwrap_or(0.0),
        mib_s: side["bw"].as_f64().unwrap_or(0.0) / 1024.0,
        lat_us: us(&side["clat_ns"]["mean"]),
        lat_p99_us: us(&side["clat_ns"]["percentile"]["99.000000"]),
        sync_us: us(&j["sync"]["lat_ns"]["mean"]),
        sync_p99_us: us(&j["sync"]["lat_ns"]["percentile"]["99.000000"]),
    })
}

/// The median of `values` (sorted in place): the middle value, or the mean of the two middle values when
/// the count is even. NaN when `values` is empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    // For odd n both indices are the middle one.
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

/// Per-job medians of several runs of the job list (`runs[run][job]`): IOPS, MiB/s and latency each
/// taken as their own median. A job missing from some run is the median of the runs that have it.
pub fn median_per_job(runs: &[Vec<Measured>]) -> Vec<Measured> {
    let jobs = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..jobs)
        .map(|j| {
            let column: Vec<&Measured> = runs.iter().filter_map(|r| r.get(j)).collect();
            let field = |f: fn(&Measured) -> f64| {
                let mut values: Vec<f64> = column.iter().map(|m| f(m)).collect();
                median(&mut values)
            };
            Measured {
                iops: field(|m| m.iops),
                mib_s: field(|m| m.mib_s),
                lat_us: field(|m| m.lat_us),
                lat_p99_us: field(|m| m.lat_p99_us),
                sync_us: field(|m| m.sync_us),
                sync_p99_us: field(|m| m.sync_p99_us),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_the_middle_value() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [9.0, 2.0, 7.0, 4.0, 100.0]), 7.0);
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_two_middle_values() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [10.0, 20.0]), 15.0);
    }

    #[test]
    fn median_of_one_value_is_that_value() {
        assert_eq!(median(&mut [42.5]), 42.5);
    }

    #[test]
    fn median_of_nothing_is_nan() {
        assert!(median(&mut []).is_nan());
    }

    fn m(iops: f64, mib_s: f64, lat_us: f64) -> Measured {
        Measured { iops, mib_s, lat_us, ..Measured::default() }
    }

    #[test]
    fn median_per_job_takes_each_field_on_its_own() {
        // Three runs of two jobs; the fields' medians come from different runs.
        let runs = vec![
            vec![m(100.0, 1.0, 30.0), m(5.0, 50.0, 7.0)],
            vec![m(300.0, 3.0, 10.0), m(1.0, 10.0, 9.0)],
            vec![m(200.0, 9.0, 20.0), m(3.0, 30.0, 8.0)],
        ];
        let med = median_per_job(&runs);
        assert_eq!(med.len(), 2);
        assert_eq!((med[0].iops, med[0].mib_s, med[0].lat_us), (200.0, 3.0, 20.0));
        assert_eq!((med[1].iops, med[1].mib_s, med[1].lat_us), (3.0, 30.0, 8.0));
    }

    #[test]
    fn median_per_job_of_even_runs_and_of_one_run() {
        let runs = vec![vec![m(100.0, 1.0, 10.0)], vec![m(200.0, 3.0, 30.0)]];
        let med = median_per_job(&runs);
        assert_eq!((med[0].iops, med[0].mib_s, med[0].lat_us), (150.0, 2.0, 20.0));

        let one = vec![vec![m(7.0, 8.0, 9.0), m(1.0, 2.0, 3.0)]];
        let med = median_per_job(&one);
        assert_eq!(med.len(), 2);
        assert_eq!((med[1].iops, med[1].mib_s, med[1].lat_us), (1.0, 2.0, 3.0));
        assert!(median_per_job(&[]).is_empty());
    }
}
