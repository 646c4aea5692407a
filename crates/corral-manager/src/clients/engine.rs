//! The engines' control API, through corral-api's one [`EngineClient`] (the same client
//! `corral engine <command>` uses). Its errors convert into [`crate::ManagerError`] with their code.
pub use corral_api::engine::{EngineClient, EngineInfo, EngineIo, EngineReplica, EngineSnapshot};
