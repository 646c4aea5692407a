//! The NBD frontend: [`EngineBackend`] serves an [`Engine`] through `corral-nbd`, and [`NbdFrontend`]
//! tells the engine about connected clients and blocks new ones during a revert.

use std::sync::Arc;

use bytes::Bytes;
use corral_nbd::{NbdBackend, NbdError, NbdServer};

use crate::engine::{Engine, Frontend};
use crate::error::{EngineError, ErrorKind};

/// An [`Engine`] as an NBD export.
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Wraps the engine.
    pub fn new(engine: Engine) -> Arc<Self> {
        Arc::new(EngineBackend { engine })
    }
}

fn nbd_error(e: EngineError) -> NbdError {
    use corral_nbd::ErrorKind as N;
    let kind = match e.kind {
        ErrorKind::OutOfRange | ErrorKind::InvalidArgument => N::InvalidArgument,
        ErrorKind::NoSpace => N::NoSpace,
        ErrorKind::Conflict => N::PermissionDenied,
        ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::Unavailable | ErrorKind::Io => N::Io,
    };
    // The engine error (and the replica error under it) stays reachable through `source()`.
    NbdError::new(kind, e.op, e.message.clone()).with_source(e)
}

impl NbdBackend for EngineBackend {
    fn size(&self) -> u64 {
        self.engine.size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let data = self.engine.read(offset, buf.len()).await.map_err(nbd_error)?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        self.engine.write(offset, Bytes::copy_from_slice(data), fua).await.map_err(nbd_error)
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.engine.zero(offset, len, true, false).await.map_err(nbd_error)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), NbdError> {
        self.engine.zero(offset, len, false, fua).await.map_err(nbd_error)
    }

    async fn flush(&self) -> Result<(), NbdError> {
        self.engine.flush().await.map_err(nbd_error)
    }

    fn can_fast_zero(&self) -> bool {
        true
    }
}

/// The NBD server as the engine's [`Frontend`].
pub struct NbdFrontend {
    server: NbdServer<EngineBackend>,
    endpoint: String,
}

impl NbdFrontend {
    /// Wraps a server reachable at `endpoint` (`nbd://…` or `nbd+unix://…`).
    pub fn new(server: NbdServer<EngineBackend>, endpoint: String) -> Arc<Self> {
        Arc::new(NbdFrontend { server, endpoint })
    }
}

impl Frontend for NbdFrontend {
    fn connected_clients(&self) -> usize {
        self.server.connected_clients()
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn detach_guard(&self) -> Option<Box<dyn Send>> {
        self.server.block_new_clients().map(|g| Box::new(g) as Box<dyn Send>)
    }
}
