//! FUA writes: 4 KiB random writes at QD1, each one durable on its own, timed one by one.
//!
//! fio's nbd engine cannot set NBD_CMD_FLAG_FUA, and qemu-io pays a process (or a command parse) per
//! write, so the timed loop is libnbd's own Python binding (Debian `python3-libnbd`):
//! `h.pwrite(buf, offset, nbd.CMD_FLAG_FUA)` puts the FUA bit in the request. libnbd refuses that flag
//! unless the server advertised NBD_FLAG_SEND_FUA, and the script checks `can_fua()` first, so a row
//! is only printed for a server that really received FUA writes. The plain file gets the same loop
//! with `os.pwrite` on a descriptor opened `O_DSYNC`, the file's equivalent of a FUA write.

use std::path::PathBuf;
use std::process::Command;

use crate::fio::{tool_error, BenchError, Measured, Timing};

/// The timed loop. Arguments: `nbd URI` or `file PATH`, then size in bytes, runtime and ramp in ms.
/// Prints one JSON line: IOPS, mean and p99 latency in µs, the number of writes.
const SCRIPT: &str = r#"
import json, os, random, sys, time
mode, target = sys.argv[1], sys.argv[2]
size, runtime_ms, ramp_ms = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bs = 4096
blocks = max(1, size // bs)
buf = os.urandom(bs)
if mode == "nbd":
    import nbd
    h = nbd.NBD()
    h.connect_uri(target)
    if not h.can_fua():
        sys.exit("the server does not advertise NBD_FLAG_SEND_FUA: no FUA write can be sent")
    flag = nbd.CMD_FLAG_FUA
    def write(offset):
        h.pwrite(buf, offset, flag)
else:
    fd = os.open(target, os.O_WRONLY | os.O_DSYNC)
    def write(offset):
        os.pwrite(fd, buf, offset)
rand = random.Random()
def loop(ms, record):
    latencies = []
    start = time.perf_counter_ns()
    end = start + ms * 1000000
    now = start
    while now < end:
        offset = rand.randrange(blocks) * bs
        t0 = time.perf_counter_ns()
        write(offset)
        now = time.perf_counter_ns()
        if record:
            latencies.append(now - t0)
    return latencies, now - start
loop(ramp_ms, False)
latencies, elapsed = loop(runtime_ms, True)
latencies.sort()
n = len(latencies)
if n == 0:
    sys.exit("no write completed")
print(json.dumps({"iops": n * 1e9 / elapsed, "mean_us": sum(latencies) / n / 1000,
                  "p99_us": latencies[min(n - 1, n * 99 // 100)] / 1000, "writes": n}))
"#;

/// Where the FUA writes go.
pub enum FuaTarget<'a> {
    /// An NBD URI: writes with NBD_CMD_FLAG_FUA.
    Nbd(&'a str),
    /// A plain file: `pwrite` on an `O_DSYNC` descriptor.
    File(&'a std::path::Path),
}

/// The Python that has libnbd's bindings: Debian's (a pyenv `python3` first on PATH does not see
/// Debian's packages). `CORRAL_BENCH_PYTHON` overrides.
fn python() -> PathBuf {
    std::env::var_os("CORRAL_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// Runs the FUA loop against `target` (random offsets over `size` bytes) for `timing`.
pub fn run(target: &FuaTarget<'_>, size: u64, timing: Timing) -> Result<Measured, BenchError> {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(SCRIPT);
    match target {
        FuaTarget::Nbd(uri) => cmd.args(["nbd", uri]),
        FuaTarget::File(path) => cmd.arg("file").arg(path),
    };
    cmd.args([size.to_string(), timing.runtime_ms.to_string(), timing.ramp_ms.to_string()]);
    let what = "FUA writes (python3 + libnbd)";
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
        // The FUA write is its own sync.
        sync_us: field("mean_us"),
        sync_p99_us: field("p99_us"),
    })
}
