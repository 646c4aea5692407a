//! A minimal recording HTTP forward proxy: tests point a client at it through `HTTP_PROXY` to see which
//! host and path each request really went to (virtual-host vs path style, the endpoint override).

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// One request seen by [`RecordingProxy`].
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The `Host` header: where the client meant the request to go.
    pub host: String,
    /// Path and query, as forwarded.
    pub path: String,
}

/// A minimal HTTP forward proxy on 127.0.0.1 (clients use it through `HTTP_PROXY`): records each request's
/// method, Host header and path, and forwards it to `127.0.0.1:upstream_port` unchanged apart from the
/// request line (absolute URI to path) and `Connection: close`. One request per connection.
pub struct RecordingProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What went through it so far.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<ProxiedRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingProxy {
    /// Starts the proxy, forwarding to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> RecordingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .unwrap_or_else(|err| panic!("recording proxy: cannot listen: {err}"));
        let port =
            listener.local_addr().map(|a| a.port()).unwrap_or_else(|err| panic!("recording proxy: {err}"));
        let requests: Arc<Mutex<Vec<ProxiedRequest>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = proxy_one(client, upstream_port, &seen) {
                                eprintln!("recording proxy: {e}");
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("recording proxy accept: {e}"),
                }
            }
        });
        RecordingProxy { port, requests, stop }
    }

    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests recorded since the last call.
    pub fn take(&self) -> Vec<ProxiedRequest> {
        self.requests.lock().map(|mut seen| std::mem::take(&mut *seen)).unwrap_or_default()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads an HTTP head (up to the blank line) and returns it with whatever body bytes came after it.
fn read_http_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream_port: u16,
    seen: &std::sync::Mutex<Vec<ProxiedRequest>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    client.set_nonblocking(false)?;
    let (head, mut body) = read_http_head(&mut client)?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, uri, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or("HTTP/1.1"));
    // Absolute form (http://host:port/path?query) from a proxy client; keep only the path.
    let path = match uri.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string()),
        None => uri.to_string(),
    };
    let mut headers = Vec::new();
    let mut host = String::new();
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "connection" | "proxy-connection" | "keep-alive" => continue,
            "host" => host = value.trim().to_string(),
            "content-length" => content_length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
        headers.push(line.to_string());
    }
    seen.lock().map_err(|_| std::io::Error::other("recording proxy: poisoned"))?.push(ProxiedRequest {
        method: method.to_string(),
        host,
        path: path.clone(),
    });
    while body.len() < content_length {
        let mut chunk = vec![0u8; content_length - body.len()];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut out = format!("{method} {path} {version}\r\n");
    for h in &headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes())?;
    upstream.write_all(&body)?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response)?;
    // Tell the client this connection ends after the response.
    let (resp_head, resp_body) = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (String::from_utf8_lossy(&response[..end]).into_owned(), &response[end + 4..]),
        None => (String::from_utf8_lossy(&response).into_owned(), &response[response.len()..]),
    };
    let mut new_head: Vec<&str> =
        resp_head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    new_head.push("Connection: close");
    client.write_all(new_head.join("\r\n").as_bytes())?;
    client.write_all(b"\r\n\r\n")?;
    client.write_all(resp_body)?;
    client.flush()
}
