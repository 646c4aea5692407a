//! The connection to an etcd cluster: its endpoints (parsed from `etcd://HOST:PORT[,HOST:PORT…]`),
//! one lazily connected gRPC channel per endpoint, and the retry loop that moves to the next
//! endpoint when one fails.
//!
//! Failover is done here rather than by a load-balanced channel so that every attempt knows which
//! endpoint it went to (errors name it) and so that a write whose attempt failed is known to the
//! caller as *possibly applied* (see [`Connection::call`]).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::etcdserverpb::kv_client::KvClient;
use super::proto::etcdserverpb::lease_client::LeaseClient;
use super::proto::etcdserverpb::watch_client::WatchClient;
use crate::error::{ErrorKind, Result, StoreError};
use crate::store::Kind;

/// How long one attempt on one endpoint may take before the next endpoint is tried.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation keeps retrying across endpoints before it fails with `Unavailable`.
/// An etcd leader election takes about a second; a member restart a few.
pub(crate) const OPERATION_DEADLINE: Duration = Duration::from_secs(30);
/// The largest gRPC message accepted from etcd (list pages, watch batches).
const MAX_MESSAGE: usize = 64 << 20;

/// Parses `etcd://HOST:PORT[,HOST:PORT…]` into its endpoints (`HOST:PORT`, in the given order; the
/// first one is tried first). A bad string is an `InvalidArgument` error that quotes it and says why.
pub fn parse_etcd_url(url: &str) -> Result<Vec<String>> {
    let bad = |why: String| {
        StoreError::new(
            ErrorKind::InvalidArgument,
            "open",
            None,
            url,
            format!("{why}; an etcd store is etcd://HOST:PORT[,HOST:PORT...]"),
        )
    };
    let Some(rest) = url.strip_prefix("etcd://") else {
        return Err(bad("the URL does not start with etcd://".into()));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("no endpoint".into()));
    }
    let mut endpoints: Vec<String> = Vec::new();
    for part in rest.split(',') {
        let Some((host, port)) = part.rsplit_once(':') else {
            return Err(bad(format!("endpoint {part:?} has no :PORT")));
        };
        let host_ok = !host.is_empty()
            && !host.chars().any(|c| c.is_whitespace() || c.is_control() || "/@?#".contains(c))
            && (host.starts_with('[') == host.ends_with(']'))
            && (host.starts_with('[') || !host.contains(':'));
        if !host_ok {
            return Err(bad(format!("endpoint {part:?} has no valid host")));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad(format!("endpoint {part:?} has no valid port (1-65535)"))),
        }
        if endpoints.iter().any(|e| e == part) {
            return Err(bad(format!("endpoint {part:?} is listed twice")));
        }
        endpoints.push(part.to_string());
    }
    Ok(endpoints)
}

/// One channel per endpoint and which endpoint to try first.
pub(crate) struct Connection {
    endpoints: Vec<String>,
    /// The cluster's key prefix, to name keys in errors.
    prefix: String,
    channels: Vec<Channel>,
    /// The endpoint that answered last; moves on when it fails.
    preferred: AtomicUsize,
}

impl Connection {
    /// Channels to `endpoints` (connected on first use). Must run inside a tokio runtime, which then
    /// carries the channels' I/O: it must outlive the store.
    pub(crate) fn new(url: &str, endpoints: Vec<String>, prefix: String) -> Result<Connection> {
        let mut channels = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            let uri = format!("http://{endpoint}");
            let ep = Endpoint::from_shared(uri).map_err(|e| {
                StoreError::new(
                    ErrorKind::InvalidArgument,
                    "open",
                    None,
                    url,
                    format!("endpoint {endpoint}: {e}"),
                )
                .with_source(e)
            })?;
            // Keepalive pings find a member that vanished without closing its sockets (a cut
            // link), so a watch on it moves to another member instead of hanging.
            let ep = ep
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            channels.push(ep.connect_lazy());
        }
        Ok(Connection { endpoints, prefix, channels, preferred: AtomicUsize::new(0) })
    }

    /// The endpoints, as given.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn endpoint(&self, index: usize) -> &str {
        self.endpoints.get(index).map_or("?", String::as_str)
    }

    fn channel(&self, index: usize) -> Channel {
        // `index` always comes from `preferred`, which stays below the endpoint count.
        self.channels[index % self.channels.len()].clone()
    }

    pub(crate) fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(index)).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(crate) fn watch(&self, index: usize) -> WatchClient<Channel> {
        WatchClient::new(self.channel(index)).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(crate) fn lease(&self, index: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel(index))
    }

    /// The endpoint to try first.
    pub(crate) fn preferred(&self) -> usize {
        self.preferred.load(Ordering::SeqCst)
    }

    /// The etcd key (or prefix) an operation on `kind/name` works on, for error messages.
    fn key(&self, kind: Option<Kind>, name: &str) -> String {
        match kind {
            Some(kind) => format!("{}{kind}/{name}", self.prefix),
            None => self.prefix.clone(),
        }
    }

    /// Moves the preference past `index` after it failed (unless another caller already did).
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len();
        let _ = self.preferred.compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Runs `attempt` on the preferred endpoint, and on the next ones while it fails with an error
    /// that another try may cure (unreachable endpoint, timeout, leader change), for up to `deadline`.
    ///
    /// Returns the response and whether an earlier attempt failed that way: such an attempt may
    /// still have been applied by etcd (its reply was lost), which the caller of a write must take
    /// into account before it reports a failed comparison.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        kind: Option<Kind>,
        name: &str,
        deadline: Duration,
        mut attempt: impl FnMut(usize) -> BoxFuture<'static, Result<T, Status>>,
    ) -> Result<(T, bool)> {
        let give_up = Instant::now() + deadline;
        let mut backoff = Duration::from_millis(20);
        let mut failed_before = false;
        loop {
            let index = self.preferred.load(Ordering::SeqCst);
            let endpoint = self.endpoint(index);
            let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(index)).await {
                Ok(Ok(response)) => return Ok((response, failed_before)),
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(status_error(op, kind, name, &self.key(kind, name), endpoint, status));
                }
                Ok(Err(status)) => status_error(op, kind, name, &self.key(kind, name), endpoint, status),
                Err(_) => StoreError::new(
                    ErrorKind::Unavailable,
                    op,
                    kind,
                    name,
                    format!("etcd {endpoint} did not answer within {ATTEMPT_TIMEOUT:?}"),
                ),
            };
            tracing::debug!(%error, "etcd attempt failed; trying the next endpoint");
            failed_before = true;
            self.failed(index);
            if Instant::now() + backoff >= give_up {
                let message = format!(
                    "no etcd endpoint of {} answered within {deadline:?}; last error: {}",
                    self.endpoints.join(","),
                    error.message
                );
                return Err(StoreError { message, ..error });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// Whether another attempt (on this or another endpoint) may succeed where this one failed.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// A gRPC status as a store error that names the endpoint and the key.
fn status_error(
    op: &'static str,
    kind: Option<Kind>,
    name: &str,
    key: &str,
    endpoint: &str,
    status: Status,
) -> StoreError {
    let error_kind = match status.code() {
        Code::NotFound => ErrorKind::NotFound,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => ErrorKind::InvalidArgument,
        code if retryable_code(code) => ErrorKind::Unavailable,
        _ => ErrorKind::Io,
    };
    let message = format!("etcd {endpoint}, key {key}: {:?}: {}", status.code(), status.message());
    StoreError::new(error_kind, op, kind, name, message).with_source(status)
}

fn retryable_code(code: Code) -> bool {
    retryable(&Status::new(code, ""))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_endpoints_in_order() {
        assert_eq!(parse_etcd_url("etcd://127.0.0.1:2379").unwrap(), ["127.0.0.1:2379"]);
        assert_eq!(
            parse_etcd_url("etcd://a:1,b.example:2,[::1]:3/").unwrap(),
            ["a:1", "b.example:2", "[::1]:3"]
        );
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        for (url, why) in [
            ("http://a:1", "does not start with etcd://"),
            ("etcd://", "no endpoint"),
            ("etcd://a", "has no :PORT"),
            ("etcd://a:0", "no valid port"),
            ("etcd://a:99999", "no valid port"),
            ("etcd://a:x", "no valid port"),
            ("etcd://:1", "no valid host"),
            ("etcd://a:1,", "has no :PORT"),
            ("etcd://a/b:1", "no valid host"),
            ("etcd://::1:2", "no valid host"),
            ("etcd://a:1,a:1", "listed twice"),
        ] {
            let err = parse_etcd_url(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}");
            assert!(err.to_string().contains(why), "{url}: {err}");
            assert!(err.to_string().contains(url), "{url}: {err}");
        }
    }
}
