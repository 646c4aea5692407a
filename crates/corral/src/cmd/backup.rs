//! `corral backup` (being written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BackupArgs {}

pub fn run(_args: BackupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("corral backup is not built yet")
}
