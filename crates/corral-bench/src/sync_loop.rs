//! The durable workloads fio cannot run, as timed loops in libnbd's own Python binding (Debian
//! `python3-libnbd`), the same client for every NBD target:
//!
//! - **FUA writes**: 4 KiB random writes at QD1, each durable on its own. fio's nbd engine cannot set
//!   NBD_CMD_FLAG_FUA and qemu-io pays a process (or a command parse) per write, so the loop calls
//!   `h.pwrite(buf, offset, nbd.CMD_FLAG_FUA)`, which puts the FUA bit in the request. libnbd refuses
//!   that flag unless the server advertised NBD_FLAG_SEND_FUA, and the script checks `can_fua()` first,
//!   so a figure exists only for a server that really received FUA writes.
//! - **Batches**: 32 random 4 KiB writes in flight at once (`aio_pwrite`), then, once all are
//!   acknowledged, one flush: "QD32, fsync every 32 writes" as a database's checkpoint does it. fio's
//!   `fsync=32` at `iodepth=32` does not do that (measured here: it issued a flush every one or two
//!   writes), so it is not used for this row.
//!
//! The plain file gets the same loops: `os.pwrite` on an `O_DSYNC` descriptor for FUA, and 32 buffered
//! `os.pwrite`s then `fsync(2)` for a batch.

use std::path::PathBuf;
use std::process::Command;

use crate::fio::{tool_error, BenchError, Measured, Timing};

/// The timed loops. Arguments: `fua` or `batch`, then `nbd URI` or `file PATH`, then size in bytes,
/// runtime and ramp in ms. Prints one JSON line: write IOPS, mean and p99 latency in µs of the syncs (the
/// FUA write itself, or the flush after a batch), the number of syncs.
const SCRIPT: &str = r#"
import json, os, random, sys, time
workload, mode, target = sys.argv[1], sys.argv[2], sys.argv[3]
size, runtime_ms, ramp_ms = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
bs, batch = 4096, 32
blocks = max(1, size // bs)
data = os.urandom(bs)
rand = random.Random()
def offset():
    return rand.randrange(blocks) * bs
if mode == "nbd":
    import nbd
    h = nbd.NBD()
    h.connect_uri(target)
    if workload == "fua":
        if not h.can_fua():
            sys.exit("the server does not advertise NBD_FLAG_SEND_FUA: no FUA write can be sent")
        flag = nbd.CMD_FLAG_FUA
        def step():
            t0 = time.perf_counter_ns()
            h.pwrite(data, offset(), flag)
            return 1, time.perf_counter_ns() - t0
    else:
        if not h.can_flush():
            sys.exit("the server does not advertise NBD_FLAG_SEND_FLUSH")
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        def step():
            cookies = [h.aio_pwrite(buf, offset()) for _ in range(batch)]
            while h.aio_in_flight() > 0:
                h.poll(-1)
            for cookie in cookies:
                h.aio_command_completed(cookie)
            t0 = time.perf_counter_ns()
            h.flush()
            return batch, time.perf_counter_ns() - t0
else:
    if workload == "fua":
        fd = os.open(target, os.O_WRONLY | os.O_DSYNC)
        def step():
            t0 = time.perf_counter_ns()
            os.pwrite(fd, data, offset())
            return 1, time.perf_counter_ns() - t0
    else:
        fd = os.open(target, os.O_WRONLY)
        def step():
            for _ in range(batch):
                os.pwrite(fd, data, offset())
            t0 = time.perf_counter_ns()
            os.fsync(fd)
            return batch, time.perf_counter_ns() - t0
def loop(ms):
    latencies, writes = [], 0
    start = time.perf_counter_ns()
    end = start + ms * 1000000
    now = start
    while now < end:
        n, latency = step()
        writes += n
        latencies.append(latency)
        now = time.perf_counter_ns()
    return latencies, writes, now - start
loop(ramp_ms)
latencies, writes, elapsed = loop(runtime_ms)
latencies.sort()
n = len(latencies)
if n == 0:
    sys.exit("no write completed")
print(json.dumps({"iops": writes * 1e9 / elapsed, "mean_us": sum(latencies) / n / 1000,
                  "p99_us": latencies[min(n - 1, n * 99 // 100)] / 1000, "syncs": n}))
"#;

/// Where the writes go.
pub enum LoopTarget<'a> {
    /// An NBD URI.
    Nbd(&'a str),
    /// A plain file.
    File(&'a std::path::Path),
}

/// Which loop.
#[derive(Debug, Clone, Copy)]
pub enum SyncLoop {
    /// FUA writes at QD1.
    Fua,
    /// 32 writes in flight, then a flush.
    Batch32,
}

/// The Python that has libnbd's bindings: Debian's (a pyenv `python3` first on PATH does not see
/// Debian's packages). `CORRAL_BENCH_PYTHON` overrides.
fn python() -> PathBuf {
    std::env::var_os("CORRAL_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// Runs `workload` against `target` (random offsets over `size` bytes) for `timing`.
pub fn run(
    workload: SyncLoop,
    target: &LoopTarget<'_>,
    size: u64,
    timing: Timing,
) -> Result<Measured, BenchError> {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(SCRIPT).arg(match workload {
        SyncLoop::Fua => "fua",
        SyncLoop::Batch32 => "batch",
    });
    match target {
        LoopTarget::Nbd(uri) => cmd.args(["nbd", uri]),
        LoopTarget::File(path) => cmd.arg("file").arg(path),
    };
    cmd.args([size.to_string(), timing.runtime_ms.to_string(), timing.ramp_ms.to_string()]);
    let what = "durable write loop (python3 + libnbd)";
    let out = cmd.output().map_err(|e| {
        tool_error(what, format!("cannot run {} (Debian python3-libnbd): {e}", python().display()))
    })?;
    if !out.status.success() {
        return Err(tool_error(what, String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| tool_error(what, format!("bad output {text:?}: {e}")))?;
    let field = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(Measured {
        iops: field("iops"),
        mib_s: field("iops") * 4096.0 / f64::from(1 << 20),
        lat_us: field("mean_us"),
        lat_p99_us: field("p99_us"),
        // For FUA the write is its own sync; for a batch, the write latency is not measured on its own.
        sync_us: field("mean_us"),
        sync_p99_us: field("p99_us"),
    })
}
