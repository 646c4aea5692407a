//! `corral engine` (being written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EngineArgs {}

pub fn run(_args: EngineArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("corral engine is not built yet")
}
