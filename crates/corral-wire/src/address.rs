//! Replica addresses (`tcp://host:port`, `unix:///path`) and the listener the server accepts on.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Result, WireError};

/// Where a replica listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `tcp://host:port` (also accepted without the scheme: `host:port`).
    Tcp(String),
    /// `unix:///path` (also `unix:path` or `unix://relative`).
    Unix(PathBuf),
}

impl Address {
    /// Parses `tcp://HOST:PORT`, `HOST:PORT`, `unix:///PATH` or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Address> {
        let invalid = || WireError::InvalidAddress(text.to_string());
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let host_port = text.strip_prefix("tcp://").unwrap_or(text);
        if host_port.contains("://") || host_port.contains('/') {
            return Err(invalid());
        }
        let (host, port) = host_port.rsplit_once(':').ok_or_else(invalid)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid());
        }
        Ok(Address::Tcp(host_port.to_string()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(host_port) => write!(f, "tcp://{host_port}"),
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = WireError;
    fn from_str(text: &str) -> Result<Address> {
        Address::parse(text)
    }
}

/// A bound listening socket, TCP or unix, for [`crate::serve`].
#[derive(Debug)]
pub enum Listener {
    /// TCP listener.
    Tcp(tokio::net::TcpListener),
    /// Unix-domain socket listener.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds `address` (a TCP port 0 picks a free port; see [`Listener::local_address`]). A stale unix
    /// socket file at the path is removed first. Must be called inside a tokio runtime.
    pub async fn bind(address: &Address) -> Result<Listener> {
        let io_err = |source| WireError::Io { op: "bind", addr: address.to_string(), source };
        match address {
            Address::Tcp(host_port) => {
                Ok(Listener::Tcp(tokio::net::TcpListener::bind(host_port.as_str()).await.map_err(io_err)?))
            }
            Address::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path).map_err(io_err)?;
                    }
                }
                Ok(Listener::Unix(tokio::net::UnixListener::bind(path).map_err(io_err)?))
            }
        }
    }

    /// The address actually bound (with the real port when port 0 was asked).
    pub fn local_address(&self) -> Result<Address> {
        match self {
            Listener::Tcp(listener) => {
                let addr = listener.local_addr().map_err(|source| WireError::Io {
                    op: "local_addr",
                    addr: "tcp".into(),
                    source,
                })?;
                Ok(Address::Tcp(addr.to_string()))
            }
            Listener::Unix(listener) => {
                let addr = listener.local_addr().map_err(|source| WireError::Io {
                    op: "local_addr",
                    addr: "unix".into(),
                    source,
                })?;
                let path = addr.as_pathname().map(PathBuf::from).unwrap_or_default();
                Ok(Address::Unix(path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        assert_eq!(Address::parse("tcp://127.0.0.1:9502").unwrap(), Address::Tcp("127.0.0.1:9502".into()));
        assert_eq!(Address::parse("127.0.0.1:9502").unwrap(), Address::Tcp("127.0.0.1:9502".into()));
        assert_eq!(Address::parse("localhost:1").unwrap(), Address::Tcp("localhost:1".into()));
        assert_eq!(Address::parse("[::1]:80").unwrap(), Address::Tcp("[::1]:80".into()));
        assert_eq!(Address::parse("unix:///tmp/r.sock").unwrap(), Address::Unix("/tmp/r.sock".into()));
        assert_eq!(Address::parse("unix:/tmp/r.sock").unwrap(), Address::Unix("/tmp/r.sock".into()));
        assert_eq!(Address::parse("unix:r.sock").unwrap(), Address::Unix("r.sock".into()));
        assert_eq!(Address::parse("tcp://127.0.0.1:9502").unwrap().to_string(), "tcp://127.0.0.1:9502");
        assert_eq!(Address::parse("unix:/tmp/r.sock").unwrap().to_string(), "unix:///tmp/r.sock");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in
            ["", "tcp://", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:70000", "http://x:1", "unix:", ":80"]
        {
            assert!(Address::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
