//! The control plane's subcommands (being written): manager, instance-manager, quickstart, volume, …
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ControlCommand {
    /// Bring up a single-node cluster in the foreground (not built yet).
    Quickstart,
}

pub fn run(command: ControlCommand) -> anyhow::Result<ExitCode> {
    match command {
        ControlCommand::Quickstart => anyhow::bail!("corral quickstart is not built yet"),
    }
}
