//! One module per subcommand; each owns its clap arguments and returns an exit code.
pub mod backup;
pub mod control;
pub mod csi;
pub mod engine;
pub mod replica;
pub mod server;
pub mod size;
pub mod wait_progress;
