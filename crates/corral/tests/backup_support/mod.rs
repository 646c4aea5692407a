//! Helpers of the `corral backup` CLI tests: running the binary, fixtures, S3 servers (moto, moto over
//! HTTPS with a test CA, s3s-fs), a recording HTTP proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const SNAP2_SHA256: &str = "f7c01b125079dcb2cdc9070d077363db89026ef00f66fbfad632aebaaee54647";
pub const SNAP3_SHA256: &str = "742a32de6696dbac0a89e8e8a8eed3840612870d72b74b3950409750d8a3a1a3";

pub fn fixture_path(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/longhorn").join(name);
    if local.exists() {
        local
    } else {
        Path::new("/work/shared/fixtures/longhorn").join(name)
    }
}

pub fn extract(name: &str, dir: &Path) {
    let tarball = fixture_path(name);
    let status = Command::new("tar").arg("-xSzf").arg(&tarball).arg("-C").arg(dir).status().expect("run tar");
    assert!(status.success(), "tar -xSzf {} failed", tarball.display());
}

/// Runs `corral backup ARGS…` with short lock waits and extra environment.
pub fn corral(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("backup").args(args).env("CORRAL_BACKUP_LOCK_CHECK_WAIT_MS", "20");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run corral")
}

/// Runs and requires success; returns stdout.
pub fn corral_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = corral(args, env);
    assert!(
        out.status.success(),
        "corral backup {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn corral_json(args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&corral_ok(&all, env)).unwrap()
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The volume as of the head of a replica directory, through the replica library.
pub fn read_head(dir: &Path) -> Vec<u8> {
    let replica = corral_replica::Replica::open_read_only(dir).unwrap();
    let mut buf = vec![0u8; usize::try_from(replica.size()).unwrap()];
    replica.read_at(&mut buf, 0).unwrap();
    buf
}

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server is required for this test (pip install 'moto[server]'): {e}")
            });
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ENDPOINTS", format!("http://127.0.0.1:{}", self.port)),
        ]
    }

    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 200"), "create bucket: {response}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, requiring success; `what` names the tool in the failure message.
fn run_tool(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} is required for this test: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throw-away certificate authority and a server certificate it signed for 127.0.0.1, made with the
/// openssl CLI: `ca.pem`, `server.pem`, `server.key` in `dir`.
pub struct TestCertificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCertificates {
    pub fn generate(dir: &Path) -> TestCertificates {
        let p = |name: &str| dir.join(name);
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run_tool(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .args(["-days", "2", "-subj", "/CN=corral test CA", "-keyout"])
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
            "openssl (CA certificate)",
        );
        run_tool(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
            "openssl (server key)",
        );
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run_tool(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-extfile")
                .arg(p("server.ext"))
                .arg("-out")
                .arg(p("server.pem")),
            "openssl (server certificate)",
        );
        TestCertificates { ca: p("ca.pem"), server_cert: p("server.pem"), server_key: p("server.key") }
    }
}

/// A server process on a free loopback port, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    fn spawn(what: &str, install_hint: &str, cmd: &mut Command, port: u16) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} is required for this test ({install_hint}): {e}"));
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{what} exited early: {status}");
            }
            assert!(Instant::now() < deadline, "{what} did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// moto_server speaking HTTPS with the given certificate.
    pub fn moto_https(certs: &TestCertificates) -> Server {
        let port = free_port();
        Server::spawn(
            "moto_server",
            "pip install 'moto[server]'",
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
                .arg(&certs.server_cert)
                .arg("-k")
                .arg(&certs.server_key),
            port,
        )
    }

    /// s3s-fs storing buckets as directories under `root`, accepting only `key`/`secret` (SigV4 checked).
    pub fn s3s_fs(root: &Path, key: &str, secret: &str) -> Server {
        let port = free_port();
        Server::spawn(
            "s3s-fs",
            "cargo install s3s-fs@0.14.1 --features binary --locked",
            Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", key, "--secret-key", secret])
                .arg(root),
            port,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request seen by [`RecordingProxy`].
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
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
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<ProxiedRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingProxy {
    pub fn start(upstream_port: u16) -> RecordingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn take(&self) -> Vec<ProxiedRequest> {
        std::mem::take(&mut *self.requests.lock().unwrap())
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
    seen.lock().unwrap().push(ProxiedRequest { method: method.to_string(), host, path: path.clone() });
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
