//! `corral csi`: the CSI driver (Identity, Controller and Node on one unix socket), a client of
//! the manager's API. It prints one line once it listens, and stops cleanly on SIGINT/SIGTERM
//! (what it staged stays staged: the node's mounts outlive the plugin).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct CsiArgs {
    /// Where to listen: `unix:///PATH/csi.sock` (or a plain path).
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// This node's name, as the Corral manager knows it.
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// The manager's API.
    #[arg(long, env = "CORRAL_URL", default_value = "http://127.0.0.1:9500")]
    manager: String,
    /// Where the node service keeps what it staged.
    #[arg(long, default_value = "/var/lib/corral-csi")]
    state_dir: PathBuf,
}

pub fn run(a: CsiArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(a.endpoint.strip_prefix("unix://").unwrap_or(&a.endpoint));
    if path.as_os_str().is_empty() || a.endpoint.contains("://") && !a.endpoint.starts_with("unix://") {
        bail!("--endpoint {:?} is not unix:///PATH", a.endpoint);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // A socket left by an earlier run of the plugin would make bind fail.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove the old socket {}", path.display()))
            }
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let config = corral_csi::DriverConfig {
            node_id: a.node_id.clone(),
            manager_url: a.manager,
            state_dir: a.state_dir,
        };
        let stopped = super::control::stop_signal()?;
        println!("corral csi of node {} serving unix://{}", a.node_id, path.display());
        corral_csi::serve(listener, config, stopped).await.context("the CSI driver failed")?;
        Ok(ExitCode::SUCCESS)
    })
}
