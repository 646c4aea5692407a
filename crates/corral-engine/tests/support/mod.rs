//! Real replicas for engine tests: `corral_replica::Replica` directories served by the real
//! `corral_wire` server loop in this process, on unix sockets whose paths survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_engine::{ClientConnector, Engine, EngineConfig};
use corral_replica::service::ServedReplica;
use corral_replica::{CreateOptions, Replica};
use corral_wire::{Address, Listener, ServeOptions};

/// One replica directory and, while it runs, its server.
pub struct ReplicaHost {
    pub dir: PathBuf,
    pub address: String,
    running: Option<Running>,
}

struct Running {
    served: Arc<ServedReplica>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<corral_wire::Result<()>>,
}

impl ReplicaHost {
    /// Creates the replica directory `root/name` of `size` bytes and serves it.
    pub async fn create(root: &std::path::Path, name: &str, size: u64) -> ReplicaHost {
        let dir = root.join(name);
        let replica = Replica::create(&dir, CreateOptions { size }).unwrap();
        let address = format!("unix://{}", root.join(format!("{name}.sock")).display());
        let mut host = ReplicaHost { dir, address, running: None };
        host.serve(replica).await;
        host
    }

    async fn serve(&mut self, replica: Replica) {
        let served = Arc::new(ServedReplica::new(replica));
        let listener = Listener::bind(&Address::parse(&self.address).unwrap()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions { workers: 2, ..ServeOptions::default() };
        let task = tokio::spawn(corral_wire::serve_with(listener, served.clone(), options, async move {
            let _ = stopped.await;
        }));
        self.running = Some(Running { served, stop, task });
    }

    /// Stops serving and drops the replica **without closing it**, as a killed replica process would
    /// leave it (no clean-close marker, no final sync).
    pub async fn crash(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.task.await.unwrap().unwrap();
            let served = Arc::try_unwrap(running.served)
                .unwrap_or_else(|_| panic!("the server still holds replica {}", self.dir.display()));
            drop(served);
        }
    }

    /// Reopens the directory and serves it again on the same address.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart of a running replica");
        let replica = Replica::open(&self.dir).unwrap();
        self.serve(replica).await;
    }

    /// Arms a replica failpoint (see `corral_replica::failpoint::ALL`) to fire at its `nth` hit.
    pub fn arm_failpoint(&self, name: &str, nth: u32) {
        let running = self.running.as_ref().expect("arm a failpoint on a running replica");
        running.served.replica().arm_failpoint(name, nth);
    }

    /// The replica's recovery facts while it runs.
    pub fn facts(&self) -> corral_replica::RecoveryFacts {
        self.running.as_ref().expect("facts of a running replica").served.replica().recovery_facts()
    }

    /// Stops serving and closes the replica cleanly.
    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.task.await.unwrap().unwrap();
            if let Ok(served) = Arc::try_unwrap(running.served) {
                served.into_replica().close().unwrap();
            }
        }
    }
}

/// Engine settings for tests: short timeouts, small rebuild batches (so a rebuild has several windows).
pub fn test_config(volume: &str, size: u64) -> EngineConfig {
    let mut config = EngineConfig::new(volume, size);
    config.replica_timeout = Duration::from_secs(5);
    config.control_timeout = Duration::from_secs(20);
    config.rebuild_batch = 256 << 10;
    config.rebuild_concurrency = 2;
    config
}

/// Starts an engine over real replicas through the real client.
pub async fn start_engine(config: EngineConfig, engine_id: &str, addresses: &[String]) -> Engine {
    let connector = ClientConnector::new(engine_id, 2, config.replica_timeout);
    Engine::start(config, connector, addresses).await.unwrap()
}
