//! Listening addresses as written on command lines: `HOST:PORT` or `unix:PATH`
//! (the engine's `--nbd` flag).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

use crate::backend::NbdBackend;
use crate::error::{ErrorKind, NbdError};
use crate::server::NbdServer;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `HOST:PORT` (port 0 picks a free port; see [`NbdListener::local_address`]).
    Tcp(String),
    /// `unix:PATH`; a stale socket file at PATH is replaced.
    Unix(PathBuf),
}

impl FromStr for ListenAddress {
    type Err = NbdError;

    fn from_str(s: &str) -> Result<ListenAddress, NbdError> {
        let invalid = |why: &str| {
            NbdError::new(
                ErrorKind::InvalidArgument,
                "parse address",
                format!("{s:?}: {why} (expected HOST:PORT or unix:PATH)"),
            )
        };
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(invalid("empty socket path"));
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        let s = s.strip_prefix("tcp://").unwrap_or(s);
        let (host, port) = s.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        port.parse::<u16>().map_err(|_| invalid("bad port"))?;
        Ok(ListenAddress::Tcp(s.to_owned()))
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => f.write_str(addr),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

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
        let tcp: ListenAddress =
            "127.0.0.1:10809".parse().map_err(|e: NbdError| e.to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tcp, ListenAddress::Tcp("127.0.0.1:10809".into()));
        assert_eq!(tcp.to_string(), "127.0.0.1:10809");
        let unix: Result<ListenAddress, _> = "unix:/run/vol.sock".parse();
        assert_eq!(unix.ok(), Some(ListenAddress::Unix("/run/vol.sock".into())));
        let unix: Result<ListenAddress, _> = "unix:///run/vol.sock".parse();
        assert_eq!(unix.ok(), Some(ListenAddress::Unix("/run/vol.sock".into())));
        let v6: Result<ListenAddress, _> = "[::1]:0".parse();
        assert!(v6.is_ok());
        for bad in ["", "localhost", "unix:", ":80", "host:port", "host:99999"] {
            let parsed: Result<ListenAddress, NbdError> = bad.parse();
            assert_eq!(parsed.map_err(|e| e.kind()), Err(ErrorKind::InvalidArgument), "{bad}");
        }
    }
}
