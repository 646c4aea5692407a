//! Binding the NBD server's listening socket. Addresses are written as everywhere in Corral
//! (`corral_wire::Address`: `HOST:PORT`, `tcp://HOST:PORT`, `unix:PATH`, `unix:///PATH`).

use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use crate::backend::NbdBackend;
use crate::error::NbdError;
use crate::server::NbdServer;

/// Where an NBD server listens: the data protocol's one address type. `HOST:PORT` or
/// `tcp://HOST:PORT` (port 0 picks a free port; see [`NbdListener::local_address`]), `unix:PATH` or
/// `unix:///PATH` (a stale socket file at PATH is replaced).
pub type ListenAddress = corral_wire::Address;

/// A bound listener of either kind.
pub enum NbdListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl NbdListener {
    /// Bind `address`.
    pub async fn bind(address: &ListenAddress) -> Result<NbdListener, NbdError> {
        match address {
            ListenAddress::Tcp(addr) => {
                let listener = TcpListener::bind(addr.as_str()).await.map_err(|e| NbdError::io("bind", e))?;
                Ok(NbdListener::Tcp(listener))
            }
            ListenAddress::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(NbdError::io("bind", e)),
                }
                let listener = UnixListener::bind(path).map_err(|e| NbdError::io("bind", e))?;
                Ok(NbdListener::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_address(&self) -> ListenAddress {
        match self {
            NbdListener::Tcp(l) => match l.local_addr() {
                Ok(addr) => ListenAddress::Tcp(addr.to_string()),
                Err(_) => ListenAddress::Tcp(String::new()),
            },
            NbdListener::Unix(_, path) => ListenAddress::Unix(path.clone()),
        }
    }
}

impl<B: NbdBackend> NbdServer<B> {
    /// Accept clients on `listener` until [`NbdServer::shutdown`].
    pub async fn serve(&self, listener: NbdListener) -> Result<(), NbdError> {
        match listener {
            NbdListener::Tcp(l) => self.serve_tcp(l).await,
            NbdListener::Unix(l, _) => self.serve_unix(l).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_line_addresses() {
        let tcp: ListenAddress = "127.0.0.1:10809".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tcp, ListenAddress::Tcp("127.0.0.1:10809".into()));
        assert_eq!(tcp.to_string(), "tcp://127.0.0.1:10809");
        let unix: Result<ListenAddress, _> = "unix:/run/vol.sock".parse();
        assert_eq!(unix.ok(), Some(ListenAddress::Unix("/run/vol.sock".into())));
        let unix: Result<ListenAddress, _> = "unix:///run/vol.sock".parse();
        assert_eq!(unix.ok(), Some(ListenAddress::Unix("/run/vol.sock".into())));
        let v6: Result<ListenAddress, _> = "[::1]:0".parse();
        assert!(v6.is_ok());
        for bad in ["", "localhost", "unix:", ":80", "host:port", "host:99999"] {
            let parsed: Result<ListenAddress, corral_wire::WireError> = bad.parse();
            assert_eq!(parsed.map_err(|e| e.kind()), Err(corral_wire::ErrorKind::InvalidArgument), "{bad}");
        }
    }
}
