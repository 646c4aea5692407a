//! Supervision of engine and replica processes: start, probe, stop (SIGTERM, then SIGKILL after a
//! grace period), report every exit, keep recent log lines, allocate and release ports.
//!
//! Each instance has one task that owns its `Child` and is the only writer of its state after the
//! start; the table of instances is behind one mutex held only for short, non-async sections.
//! Every state change bumps a revision and is broadcast to watchers.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{broadcast, watch, Notify};

use crate::error::{ErrorKind, ImError, Result};
use crate::pb::{Instance, InstanceKind, InstanceState, StartRequest};
use crate::ports::PortAllocator;
use crate::spawner::Spawner;

/// How an instance manager runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Node this instance manager serves.
    pub node: String,
    /// Program to run (the `corral` binary).
    pub binary: PathBuf,
    /// Ports handed to instances.
    pub port_range: RangeInclusive<u16>,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_grace: Duration,
    /// Log lines kept per instance.
    pub log_lines: usize,
}

impl SupervisorConfig {
    /// Defaults: the current executable, ports 10000-30000, 10 s grace, 500 log lines.
    pub fn new(node: impl Into<String>) -> Self {
        SupervisorConfig {
            node: node.into(),
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("corral")),
            port_range: 10000..=30000,
            stop_grace: Duration::from_secs(10),
            log_lines: 500,
        }
    }
}

struct Entry {
    /// Distinguishes this incarnation from a later instance of the same name.
    id: u64,
    info: Instance,
    logs: Arc<Mutex<VecDeque<String>>>,
    stop_requested: bool,
    stop: Arc<Notify>,
    done: watch::Receiver<bool>,
}

struct State {
    ports: PortAllocator,
    instances: BTreeMap<String, Entry>,
    revision: u64,
    next_id: u64,
    shutting_down: bool,
}

struct Inner {
    config: SupervisorConfig,
    state: Mutex<State>,
    events: broadcast::Sender<Instance>,
    spawner: Spawner,
}

/// The process supervisor behind the gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

fn is_active(state: i32) -> bool {
    state == InstanceState::Starting as i32 || state == InstanceState::Running as i32
}

impl Supervisor {
    /// A supervisor with no instances. Must be called inside a tokio runtime.
    pub fn new(config: SupervisorConfig) -> Result<Supervisor> {
        if config.port_range.is_empty() {
            return Err(ImError::new(ErrorKind::InvalidArgument, "new", "", "empty port range"));
        }
        let spawner = Spawner::start().map_err(|e| {
            ImError::new(ErrorKind::Io, "new", "", "cannot start the spawner thread").with_source(e)
        })?;
        let (events, _) = broadcast::channel(4096);
        let state = State {
            ports: PortAllocator::new(config.port_range.clone()),
            instances: BTreeMap::new(),
            revision: 0,
            next_id: 0,
            shutting_down: false,
        };
        Ok(Supervisor { inner: Arc::new(Inner { config, state: Mutex::new(state), events, spawner }) })
    }

    pub fn config(&self) -> &SupervisorConfig {
        &self.inner.config
    }

    /// Ports currently held by instances.
    pub fn ports_in_use(&self) -> usize {
        self.inner.state.lock().ports.in_use()
    }

    /// Receive every state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Instance> {
        self.inner.events.subscribe()
    }

    pub fn get(&self, name: &str) -> Result<Instance> {
        let state = self.inner.state.lock();
        state
            .instances
            .get(name)
            .map(|e| e.info.clone())
            .ok_or_else(|| ImError::new(ErrorKind::NotFound, "get", name, "no such instance"))
    }

    pub fn list(&self) -> Vec<Instance> {
        self.inner.state.lock().instances.values().map(|e| e.info.clone()).collect()
    }

    /// The last `lines` log lines (0 = all kept).
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<String>> {
        let logs = {
            let state = self.inner.state.lock();
            let entry = state
                .instances
                .get(name)
                .ok_or_else(|| ImError::new(ErrorKind::NotFound, "logs", name, "no such instance"))?;
            entry.logs.clone()
        };
        let logs = logs.lock();
        let skip = if lines == 0 { 0 } else { logs.len().saturating_sub(lines) };
        Ok(logs.iter().skip(skip).cloned().collect())
    }

    /// Start an instance (see the proto for the contract).
    pub async fn start(&self, req: StartRequest) -> Result<Instance> {
        let name = req.name.clone();
        if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(ImError::new(ErrorKind::InvalidArgument, "start", &name, "bad instance name"));
        }
        let kind = InstanceKind::try_from(req.kind).unwrap_or(InstanceKind::Unspecified);
        if kind == InstanceKind::Unspecified {
            return Err(ImError::new(
                ErrorKind::InvalidArgument,
                "start",
                &name,
                "instance kind must be engine, replica or job",
            ));
        }
        if req.port_count > 16 || req.requested_ports.len() > 16 {
            return Err(ImError::new(
                ErrorKind::InvalidArgument,
                "start",
                &name,
                "at most 16 ports per instance",
            ));
        }
        let probe_host =
            if req.probe_host.is_empty() { "127.0.0.1".to_string() } else { req.probe_host.clone() };
        // Reserve the name and the ports under the lock; spawn outside it.
        let (id, ports, stop, done_tx, logs) = {
            let mut state = self.inner.state.lock();
            if state.shutting_down {
                return Err(ImError::new(
                    ErrorKind::Unavailable,
                    "start",
                    &name,
                    "instance manager is shutting down",
                ));
            }
            if let Some(e) = state.instances.get(&name) {
                if is_active(e.info.state) {
                    return Err(ImError::new(
                        ErrorKind::AlreadyExists,
                        "start",
                        &name,
                        "instance is already running",
                    ));
                }
            }
            let ports = if req.requested_ports.is_empty() {
                state.ports.allocate(req.port_count as usize).ok_or_else(|| {
                    ImError::new(
                        ErrorKind::Exhausted,
                        "start",
                        &name,
                        format!("no {} free ports in the range", req.port_count),
                    )
                })?
            } else {
                let wanted: Vec<u16> =
                    req.requested_ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect();
                state.ports.allocate_exact(&wanted).ok_or_else(|| {
                    ImError::new(
                        ErrorKind::Exhausted,
                        "start",
                        &name,
                        format!("ports {wanted:?} are not all free"),
                    )
                })?
            };
            state.next_id += 1;
            let id = state.next_id;
            let stop = Arc::new(Notify::new());
            let (done_tx, done_rx) = watch::channel(false);
            let logs = Arc::new(Mutex::new(VecDeque::new()));
            let info = Instance {
                name: name.clone(),
                kind: kind as i32,
                state: InstanceState::Starting as i32,
                ports: ports.iter().map(|p| u32::from(*p)).collect(),
                args: substitute_ports(&req.args, &ports),
                ..Instance::default()
            };
            let entry = Entry {
                id,
                info,
                logs: logs.clone(),
                stop_requested: false,
                stop: stop.clone(),
                done: done_rx,
            };
            state.instances.insert(name.clone(), entry);
            (id, ports, stop, done_tx, logs)
        };
        self.publish(&name, id, |_| {});
        let args = substitute_ports(&req.args, &ports);
        let child = match self.inner.spawner.spawn(&self.inner.config.binary, &args).await {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot spawn {}: {e}", self.inner.config.binary.display());
                self.inner.state.lock().ports.release(&ports);
                self.publish(&name, id, |info| {
                    info.state = InstanceState::Error as i32;
                    info.message = message.clone();
                });
                let _ = done_tx.send(true);
                return Err(ImError::new(ErrorKind::Io, "spawn", &name, message).with_source(e));
            }
        };
        let pid = child.id().unwrap_or(0);
        let probe = ports.first().and_then(|p| format!("{probe_host}:{p}").parse::<SocketAddr>().ok());
        self.publish(&name, id, |info| {
            info.pid = pid;
            if probe.is_none() {
                info.state = InstanceState::Running as i32;
            }
        });
        tokio::spawn(self.clone().supervise(name.clone(), id, child, ports, probe, stop, done_tx, logs));
        self.get(&name)
    }

    /// Stop an instance and wait until it has exited.
    pub async fn stop(&self, name: &str) -> Result<Instance> {
        let mut done = {
            let mut state = self.inner.state.lock();
            let entry = state
                .instances
                .get_mut(name)
                .ok_or_else(|| ImError::new(ErrorKind::NotFound, "stop", name, "no such instance"))?;
            entry.stop_requested = true;
            entry.stop.notify_one();
            entry.done.clone()
        };
        let _ = done.wait_for(|d| *d).await;
        self.get(name)
    }

    /// Stop if needed, then forget the instance.
    pub async fn delete(&self, name: &str) -> Result<Instance> {
        let info = self.stop(name).await?;
        let mut state = self.inner.state.lock();
        state.instances.remove(name);
        Ok(info)
    }

    /// Refuse new starts, then stop every instance: engines and jobs first (engines flush to their
    /// replicas; jobs read or write replica directories), then replicas. Returns when all have exited.
    pub async fn shutdown(&self) {
        let (engines_and_jobs, replicas): (Vec<_>, Vec<_>) = {
            let mut state = self.inner.state.lock();
            state.shutting_down = true;
            state
                .instances
                .values()
                .map(|e| (e.info.name.clone(), e.info.kind))
                .partition(|(_, k)| *k != InstanceKind::Replica as i32)
        };
        for group in [engines_and_jobs, replicas] {
            futures::future::join_all(group.iter().map(|(name, _)| self.stop(name))).await;
        }
    }

    /// Apply `f` to the instance if it is still incarnation `id`, bump the revision, broadcast.
    fn publish(&self, name: &str, id: u64, f: impl FnOnce(&mut Instance)) {
        let mut state = self.inner.state.lock();
        state.revision += 1;
        let revision = state.revision;
        if let Some(entry) = state.instances.get_mut(name).filter(|e| e.id == id) {
            f(&mut entry.info);
            entry.info.revision = revision;
            let _ = self.inner.events.send(entry.info.clone());
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        self,
        name: String,
        id: u64,
        mut child: tokio::process::Child,
        ports: Vec<u16>,
        probe: Option<SocketAddr>,
        stop: Arc<Notify>,
        done: watch::Sender<bool>,
        logs: Arc<Mutex<VecDeque<String>>>,
    ) {
        let keep = self.inner.config.log_lines;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(capture(out, logs.clone(), keep));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(capture(err, logs.clone(), keep));
        }
        let mut probing = probe;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                () = stop.notified() => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    }
                    match tokio::time::timeout(self.inner.config.stop_grace, child.wait()).await {
                        Ok(status) => break status,
                        Err(_) => {
                            tracing::warn!(instance = %name, "did not exit within the grace period; killing it");
                            let _ = child.start_kill();
                            break child.wait().await;
                        }
                    }
                }
                _ = tick.tick(), if probing.is_some() => {
                    if let Some(addr) = probing {
                        let connect = tokio::net::TcpStream::connect(addr);
                        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                            probing = None;
                            self.publish(&name, id, |info| {
                                if info.state == InstanceState::Starting as i32 {
                                    info.state = InstanceState::Running as i32;
                                }
                            });
                        }
                    }
                }
            }
        };
        // Give the log readers a moment to drain the pipes so the last lines (often the reason
        // for a failure) are kept.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let requested = {
            let mut state = self.inner.state.lock();
            state.ports.release(&ports);
            state.instances.get(&name).filter(|e| e.id == id).is_some_and(|e| e.stop_requested)
        };
        let last_line = logs.lock().back().cloned().unwrap_or_default();
        self.publish(&name, id, |info| {
            info.pid = 0;
            match status {
                Ok(st) => {
                    info.exit_code = st.code();
                    info.signal = st.signal();
                    let how = match (st.code(), st.signal()) {
                        (Some(c), _) => format!("exited with code {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        _ => "exited".to_string(),
                    };
                    if requested {
                        info.state = InstanceState::Stopped as i32;
                        info.message = format!("stopped: {how}");
                    } else if info.kind == InstanceKind::Job as i32 && st.code() == Some(0) {
                        info.state = InstanceState::Succeeded as i32;
                        info.message = "completed".to_string();
                    } else {
                        info.state = InstanceState::Error as i32;
                        info.message = if last_line.is_empty() {
                            how
                        } else {
                            format!("{how}; last log line: {last_line}")
                        };
                    }
                }
                Err(e) => {
                    info.state = InstanceState::Error as i32;
                    info.message = format!("lost track of the process: {e}");
                }
            }
            tracing::info!(instance = %info.name, message = %info.message, "instance exited");
        });
        let _ = done.send(true);
    }
}

fn substitute_ports(args: &[String], ports: &[u16]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.clone();
            for (i, p) in ports.iter().enumerate() {
                a = a.replace(&format!("{{port{i}}}"), &p.to_string());
            }
            if let Some(p) = ports.first() {
                a = a.replace("{port}", &p.to_string());
            }
            a
        })
        .collect()
}

async fn capture(pipe: impl AsyncRead + Unpin, logs: Arc<Mutex<VecDeque<String>>>, keep: usize) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                let mut logs = logs.lock();
                if logs.len() >= keep.max(1) {
                    logs.pop_front();
                }
                logs.push_back(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_substituted_in_arguments() {
        let args = vec!["--listen".to_string(), "127.0.0.1:{port}".into(), "--nbd=:{port1}".into()];
        assert_eq!(super::substitute_ports(&args, &[7, 8]), ["--listen", "127.0.0.1:7", "--nbd=:8"]);
    }
}
