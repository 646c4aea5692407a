//! One module per subcommand; each owns its clap arguments and returns an exit code.
pub mod backup;
pub mod engine;
pub mod replica;
