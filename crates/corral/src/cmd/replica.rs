//! `corral replica` (being written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReplicaArgs {}

pub fn run(_args: ReplicaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("corral replica is not built yet")
}
