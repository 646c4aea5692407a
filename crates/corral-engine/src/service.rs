//! Running a whole engine process: connect the replicas, start the NBD frontend and the control API,
//! report the real addresses (for `:0` ports). Used by `corral engine serve`.

use corral_nbd::NbdServer;

use crate::connector::ClientConnector;
use crate::control_api;
use crate::engine::{Engine, EngineConfig};
use crate::error::{EngineError, ErrorKind, Result};
use crate::frontend::{EngineBackend, NbdFrontend};

/// Where the NBD frontend listens: the data protocol's one address type (`HOST:PORT`,
/// `tcp://HOST:PORT`, `unix:PATH` or `unix:///PATH`; TCP port 0 picks a free port).
pub type NbdListen = corral_wire::Address;

/// Everything `corral engine serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Engine settings (volume, size, timeouts).
    pub config: EngineConfig,
    /// Replica addresses.
    pub replicas: Vec<String>,
    /// NBD listen address.
    pub nbd: NbdListen,
    /// Control API listen address (`HOST:PORT`).
    pub listen: String,
    /// Data connections per replica.
    pub connections_per_replica: usize,
    /// The engine's epoch from the control plane (0: started by hand); sent in every `Hello`.
    pub epoch: u64,
}

/// A started engine: its addresses and the engine itself. Serving continues in background tasks.
pub struct RunningEngine {
    /// The engine.
    pub engine: Engine,
    /// `nbd://HOST:PORT` or `nbd+unix:///?socket=PATH`.
    pub nbd_endpoint: String,
    /// The control API's `HOST:PORT`.
    pub control_address: String,
    server: NbdServer<EngineBackend>,
}

impl RunningEngine {
    /// Stops accepting NBD clients and flushes every replica (a graceful stop).
    pub async fn shutdown(&self) -> Result<()> {
        self.server.shutdown();
        self.engine.flush().await
    }
}

fn io(op: &'static str, what: &str, e: std::io::Error) -> EngineError {
    EngineError::new(ErrorKind::Io, op, format!("{what}: {e}"))
}

/// Starts an engine process's services. Must run inside a tokio runtime.
pub async fn serve(opts: ServeOptions) -> Result<RunningEngine> {
    const OP: &str = "engine serve";
    crate::operations::validate_name(OP, &opts.config.volume)?;
    // Bind first so that a bad address fails before any replica is touched.
    let control = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| io(OP, &format!("bind {}", opts.listen), e))?;
    let control_address = control.local_addr().map_err(|e| io(OP, "control address", e))?.to_string();
    enum Bound {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let (bound, nbd_endpoint) = match &opts.nbd {
        NbdListen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(|e| io(OP, &format!("bind {addr}"), e))?;
            let local = l.local_addr().map_err(|e| io(OP, "nbd address", e))?;
            (Bound::Tcp(l), format!("nbd://{local}"))
        }
        NbdListen::Unix(path) => {
            if path.exists() {
                // A socket left by a previous run; anything else is refused by bind below.
                let _ = std::fs::remove_file(path);
            }
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| io(OP, &format!("bind {}", path.display()), e))?;
            (Bound::Unix(l), format!("nbd+unix:///?socket={}", path.display()))
        }
    };
    let engine_id = format!("engine-{}", opts.config.volume);
    let connector = ClientConnector::with_epoch(
        engine_id,
        opts.connections_per_replica,
        opts.config.replica_timeout,
        opts.epoch,
    );
    let engine = Engine::start(opts.config.clone(), connector, &opts.replicas).await?;
    let backend = EngineBackend::new(engine.clone());
    let server = NbdServer::builder(opts.config.volume.clone(), backend)
        .description(format!("Corral volume {}", opts.config.volume))
        .build();
    engine.set_frontend(NbdFrontend::new(server.clone(), nbd_endpoint.clone()));
    let nbd_server = server.clone();
    tokio::spawn(async move {
        let result = match bound {
            Bound::Tcp(l) => nbd_server.serve_tcp(l).await,
            Bound::Unix(l) => nbd_server.serve_unix(l).await,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "NBD frontend stopped");
        }
    });
    let api_engine = engine.clone();
    tokio::spawn(async move {
        if let Err(e) = control_api::serve(control, api_engine).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    Ok(RunningEngine { engine, nbd_endpoint, control_address, server })
}
