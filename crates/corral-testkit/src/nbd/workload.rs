//! A real NBD client workload: libnbd's Python bindings run `scripts/nbd_workload.py`, which opens several
//! connections (OPT_GO, structured replies), keeps many requests in flight and reports every
//! acknowledgement as a JSON line. The plan (and every byte it writes) is built here, and the checks are
//! made here: which writes a flush covered, what the volume must hold after the stream's prefix that ran.
//!
//! Stream positions: the driver issues `ops` in order (cycling in repeat mode); the `seq` of its reports is
//! the position in that stream, so [`Workload::op_at`] and [`Workload::payload`] say what each one was.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::process::{Process, START_TIMEOUT};

/// One request of a plan. Offsets and lengths are in bytes; `data` is the payload's offset in the plan's
/// data (see [`Workload::write`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// NBD_CMD_WRITE, with NBD_CMD_FLAG_FUA when `fua`.
    Write { offset: u64, len: u64, data: u64, fua: bool },
    /// NBD_CMD_WRITE_ZEROES.
    Zero { offset: u64, len: u64, fua: bool },
    /// NBD_CMD_FLUSH; with `drain`, issued only once every earlier request was answered (so it covers
    /// them all, as a filesystem's barrier), otherwise pipelined with them.
    Flush { drain: bool },
    /// NBD_CMD_READ; the report carries the SHA-256 of what came back.
    Read { offset: u64, len: u64 },
}

/// What the driver negotiated (its first line).
#[derive(Debug, Clone, Deserialize)]
pub struct Connected {
    pub connections: usize,
    pub structured_replies: bool,
    pub can_multi_conn: bool,
    pub can_flush: bool,
    pub can_fua: bool,
    pub size: u64,
    pub protocol: String,
}

/// One acknowledgement (or failure) of the request at stream position `seq`.
#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    pub seq: u64,
    pub op: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event {
    Issue { seq: u64 },
    Ack(Ack),
    Done { issued: u64, max_in_flight: usize },
}

/// A plan for the driver.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The requests, in issue order.
    pub ops: Vec<Op>,
    /// The bytes write payloads are taken from.
    pub data: Vec<u8>,
    /// Connections opened (multi-conn).
    pub connections: usize,
    /// Requests in flight over all connections.
    pub depth: usize,
    /// In repeat mode pass `p` takes a write's payload `p * pass_shift` bytes further into `data`
    /// (wrapping), so every pass writes new bytes.
    pub pass_shift: u64,
    /// Whether the driver ends with NBD_CMD_DISC; `false` leaves like a crashed client (sockets closed).
    pub disconnect: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            ops: Vec::new(),
            data: Vec::new(),
            connections: 4,
            depth: 32,
            pass_shift: 0,
            disconnect: true,
        }
    }
}

impl Workload {
    /// An empty plan: 4 connections, 32 requests in flight.
    pub fn new() -> Workload {
        Workload::default()
    }

    /// Appends a write of `bytes` at `offset`.
    pub fn write(&mut self, offset: u64, bytes: &[u8], fua: bool) -> &mut Self {
        let data = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        self.ops.push(Op::Write { offset, len: bytes.len() as u64, data, fua });
        self
    }

    /// Appends a write-zeroes.
    pub fn zero(&mut self, offset: u64, len: u64, fua: bool) -> &mut Self {
        self.ops.push(Op::Zero { offset, len, fua });
        self
    }

    /// Appends a flush of everything before it: issued once every earlier request was answered.
    pub fn flush(&mut self) -> &mut Self {
        self.ops.push(Op::Flush { drain: true });
        self
    }

    /// Appends a flush pipelined with the requests around it: it covers only the writes answered before
    /// it was issued ([`Report::durable_writes`] knows which).
    pub fn pipelined_flush(&mut self) -> &mut Self {
        self.ops.push(Op::Flush { drain: false });
        self
    }

    /// Appends a read.
    pub fn read(&mut self, offset: u64, len: u64) -> &mut Self {
        self.ops.push(Op::Read { offset, len });
        self
    }

    /// The request at stream position `seq`.
    pub fn op_at(&self, seq: u64) -> &Op {
        &self.ops[(seq % self.ops.len() as u64) as usize]
    }

    /// The bytes the write at stream position `seq` sends (the driver's arithmetic, kept in step with it).
    pub fn payload(&self, seq: u64) -> &[u8] {
        let Op::Write { len, data, .. } = *self.op_at(seq) else { panic!("request {seq} is not a write") };
        let pass = seq / self.ops.len() as u64;
        let start = if self.pass_shift == 0 {
            data
        } else {
            (data + pass * self.pass_shift) % (self.data.len() as u64 - len + 1)
        };
        &self.data[start as usize..(start + len) as usize]
    }

    /// Applies the writes and zeroes of stream positions `0..issued` to `image`, in order: what the volume
    /// holds after they all completed (requests that overlap are never in flight together).
    pub fn apply(&self, image: &mut [u8], issued: u64) {
        for seq in 0..issued {
            match *self.op_at(seq) {
                Op::Write { offset, len, .. } => {
                    image[offset as usize..(offset + len) as usize].copy_from_slice(self.payload(seq))
                }
                Op::Zero { offset, len, .. } => image[offset as usize..(offset + len) as usize].fill(0),
                Op::Flush { .. } | Op::Read { .. } => {}
            }
        }
    }

    /// Runs the plan once against `uri` and waits for the driver to finish.
    pub fn run(&self, uri: &str) -> Report {
        self.launch(uri, false).finish()
    }

    /// Starts the plan in repeat mode: it cycles until [`RunningWorkload::stop`].
    pub fn start(&self, uri: &str) -> RunningWorkload {
        self.launch(uri, true)
    }

    fn launch(&self, uri: &str, repeat: bool) -> RunningWorkload {
        assert!(!self.ops.is_empty(), "an NBD workload needs requests");
        let dir =
            tempfile::tempdir().unwrap_or_else(|err| panic!("cannot make a directory for the plan: {err}"));
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, &self.data)
            .unwrap_or_else(|err| panic!("cannot write the workload data: {err}"));
        let plan = serde_json::json!({
            "uri": uri,
            "connections": self.connections,
            "depth": self.depth,
            "data": data_path,
            "ops": self.ops,
            "repeat": repeat,
            "pass_shift": self.pass_shift,
            "disconnect": self.disconnect,
        });
        let plan_path = dir.path().join("plan.json");
        std::fs::write(&plan_path, plan.to_string())
            .unwrap_or_else(|err| panic!("cannot write the plan: {err}"));
        let mut command = Command::new(python());
        command.arg(driver_script()).arg(&plan_path).stdin(Stdio::piped());
        let (mut process, line) = Process::try_start("nbd_workload", &mut command, START_TIMEOUT)
            .unwrap_or_else(|err| panic!("the libnbd workload did not connect to {uri}: {err}"));
        let connected = parse_connected(&line, &process);
        let stdin = process.take_stdin();
        RunningWorkload { process, connected, stdin, _dir: dir }
    }
}

fn parse_connected(line: &str, process: &Process) -> Connected {
    serde_json::from_str(line).unwrap_or_else(|err| {
        panic!("unexpected first line {line:?} from the workload ({err}); stderr:\n{}", process.stderr())
    })
}

/// A workload started in repeat mode.
pub struct RunningWorkload {
    process: Process,
    /// What the driver negotiated.
    pub connected: Connected,
    stdin: Option<std::process::ChildStdin>,
    _dir: tempfile::TempDir,
}

impl RunningWorkload {
    /// How many reports (acknowledgements and flush issues) came so far.
    pub fn progress(&self) -> usize {
        self.process.stdout_line_count()
    }

    /// Waits until `more` further reports came; panics if the workload stalls for `limit`.
    pub fn wait_progress(&self, more: usize, limit: Duration) {
        let target = self.progress() + more;
        let deadline = Instant::now() + limit;
        while self.progress() < target {
            assert!(
                Instant::now() < deadline,
                "the NBD workload stalled; stderr:\n{}",
                self.process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the driver.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Asks the driver to stop issuing (closes its stdin), waits for what is in flight, and reports.
    pub fn stop(mut self) -> Report {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        self.finish()
    }

    /// Waits for the driver to exit (it does once the plan ran, or all its connections died).
    pub fn finish(mut self) -> Report {
        self.stdin = None;
        let exit = self.process.wait_exit(Duration::from_secs(300));
        let exit = exit
            .unwrap_or_else(|| panic!("the NBD workload did not finish; stderr:\n{}", self.process.stderr()));
        // The driver exits 0 even when requests fail (it reports them); anything else is a broken harness.
        assert!(exit.success(), "the NBD workload crashed ({exit}); stderr:\n{}", self.process.stderr());
        Report::parse(self.connected, exit, &self.process.stdout_lines(), self.process.stderr())
    }
}

/// What the driver reported.
#[derive(Debug)]
pub struct Report {
    /// What it negotiated.
    pub connected: Connected,
    /// Every acknowledgement or failure, in the order they came.
    pub acks: Vec<Ack>,
    /// Stream positions of flushes, each with how many acknowledgements came before it was issued.
    pub flush_issues: Vec<(u64, usize)>,
    /// How many requests were issued (the stream prefix that ran), once the driver finished cleanly.
    pub issued: Option<u64>,
    /// The most requests in flight at once.
    pub max_in_flight: usize,
    /// The driver's exit status and stderr.
    pub exit: ExitStatus,
    pub stderr: String,
}

impl Report {
    fn parse(connected: Connected, exit: ExitStatus, lines: &[String], stderr: String) -> Report {
        let mut report = Report {
            connected,
            acks: Vec::new(),
            flush_issues: Vec::new(),
            issued: None,
            max_in_flight: 0,
            exit,
            stderr,
        };
        for line in lines {
            let event: Event = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("bad workload report line {line:?}: {err}\n{}", report.stderr));
            match event {
                Event::Issue { seq } => report.flush_issues.push((seq, report.acks.len())),
                Event::Ack(ack) => report.acks.push(ack),
                Event::Done { issued, max_in_flight } => {
                    report.issued = Some(issued);
                    report.max_in_flight = max_in_flight;
                }
            }
        }
        report
    }

    /// Checks that this was a real client's traffic: several connections, structured replies, multi-conn,
    /// and at least `min_in_flight` requests in flight at some point.
    pub fn assert_real_client(&self, min_in_flight: usize) -> &Self {
        let c = &self.connected;
        assert!(c.structured_replies, "structured replies were not negotiated: {c:?}");
        assert!(c.can_multi_conn, "the export does not allow multi-conn: {c:?}");
        assert!(c.connections > 1, "one connection only: {c:?}");
        assert!(
            self.max_in_flight >= min_in_flight,
            "only {} requests were in flight at once, wanted {min_in_flight}",
            self.max_in_flight
        );
        self
    }

    /// Panics unless the driver finished cleanly and every request was acknowledged.
    pub fn assert_all_ok(&self) -> &Self {
        let failed: Vec<&Ack> = self.acks.iter().filter(|a| !a.ok).take(5).collect();
        assert!(failed.is_empty(), "NBD requests failed: {failed:?}\nstderr:\n{}", self.stderr);
        assert!(self.exit.success(), "the NBD workload exited with {}; stderr:\n{}", self.exit, self.stderr);
        let issued = self.issued.unwrap_or_else(|| panic!("the NBD workload did not report its end"));
        assert_eq!(issued as usize, self.acks.len(), "some requests were never answered");
        self
    }

    /// The SHA-256 of what the read at stream position `seq` returned.
    pub fn read_sha256(&self, seq: u64) -> &str {
        self.acks
            .iter()
            .find(|a| a.seq == seq)
            .and_then(|a| a.sha256.as_deref())
            .unwrap_or_else(|| panic!("no successful read at {seq}"))
    }

    /// Stream positions of the writes that were acknowledged as durable: FUA writes, and writes acknowledged
    /// before an acknowledged flush was issued.
    pub fn durable_writes(&self, workload: &Workload) -> Vec<u64> {
        let acked_flush = |seq: u64| self.acks.iter().any(|a| a.seq == seq && a.ok);
        let covered =
            self.flush_issues.iter().filter(|(seq, _)| acked_flush(*seq)).map(|(_, before)| *before).max();
        let mut durable: Vec<u64> = self
            .acks
            .iter()
            .enumerate()
            .filter(|(_, a)| a.ok && a.op == "write")
            .filter(|(i, a)| {
                covered.is_some_and(|n| *i < n)
                    || matches!(workload.op_at(a.seq), Op::Write { fua: true, .. })
            })
            .map(|(_, a)| a.seq)
            .collect();
        durable.sort_unstable();
        durable
    }
}

/// The interpreter that has libnbd's bindings: Debian's python3 (another python3 first on PATH, such as a
/// pyenv one, does not see Debian's packages). `CORRAL_TEST_PYTHON` overrides.
fn python() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("CORRAL_TEST_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from("/usr/bin/python3"), PathBuf::from("python3")])
            .collect();
        candidates
            .into_iter()
            .find(|python| {
                Command::new(python).args(["-c", "import nbd"]).output().is_ok_and(|out| out.status.success())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no python3 can `import nbd`: install Debian python3-libnbd (scripts/install-test-deps)"
                )
            })
    })
}

/// `scripts/nbd_workload.py` of this crate.
pub fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nbd_workload.py")
}
