//! S3-compatible servers started for real on 127.0.0.1: moto (in memory, close to AWS's errors; over
//! HTTP, or HTTPS with [`TestCertificates`]) and s3s-fs (plain files, checks SigV4 signatures). Each is
//! killed on drop. [`RecordingProxy`] sits between a client and one of them to show what was sent.

mod proxy;

pub use proxy::{ProxiedRequest, RecordingProxy};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, wait_for_port};
use crate::process::Process;

/// moto accepts any credentials; these are the ones tests use.
pub const MOTO_ACCESS_KEY: &str = "testing";
/// See [`MOTO_ACCESS_KEY`].
pub const MOTO_SECRET_KEY: &str = "testing";
const MOTO_HINT: &str = "moto_server is required (scripts/install-test-deps: pip install 'moto[server]')";
const S3S_FS_HINT: &str = "s3s-fs is required (cargo install s3s-fs@0.14.1 --features binary --locked)";

/// An S3-compatible server process on a loopback port.
pub struct S3Server {
    /// The running server.
    pub process: Process,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl S3Server {
    /// moto over plain HTTP.
    pub fn moto() -> S3Server {
        let port = free_port();
        let mut command = Command::new("moto_server");
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        Self::launch("moto_server", MOTO_HINT, &mut command, port, "http")
    }

    /// moto over HTTPS with a certificate from `certs` (clients must trust `certs.ca`).
    pub fn moto_https(certs: &TestCertificates) -> S3Server {
        let port = free_port();
        let mut command = Command::new("moto_server");
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
            .arg(&certs.server_cert)
            .arg("-k")
            .arg(&certs.server_key);
        Self::launch("moto_server", MOTO_HINT, &mut command, port, "https")
    }

    /// s3s-fs keeping buckets as directories under `root`, accepting only `access_key`/`secret_key`.
    pub fn s3s_fs(root: &Path, access_key: &str, secret_key: &str) -> S3Server {
        let port = free_port();
        let mut command = Command::new("s3s-fs");
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(root);
        Self::launch("s3s-fs", S3S_FS_HINT, &mut command, port, "http")
    }

    fn launch(name: &str, hint: &str, command: &mut Command, port: u16, scheme: &'static str) -> S3Server {
        crate::nbd::require_tool_hint(&command.get_program().to_string_lossy(), hint);
        let mut process = Process::spawn(name, command);
        wait_for_port(&mut process, port, Duration::from_secs(30));
        S3Server { process, port, scheme }
    }

    /// `http://127.0.0.1:PORT` (or `https://…`).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The environment Longhorn-style clients (the `corral backup` CLI) read: moto's keys and the endpoint.
    pub fn moto_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_KEY.into()),
            ("AWS_ENDPOINTS", self.endpoint()),
        ]
    }

    /// Sends one plain, unsigned HTTP request (moto does not check signatures); returns the status code.
    pub fn plain_request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        assert_eq!(self.scheme, "http", "plain requests go to an HTTP server");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|err| panic!("cannot connect to the S3 server on {}: {err}", self.port));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .unwrap_or_else(|err| panic!("cannot send {method} {path}: {err}"));
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
    }

    /// Creates `bucket` with an unsigned request (moto only).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self.plain_request("PUT", &format!("/{bucket}"), b"");
        assert_eq!(status, 200, "creating bucket {bucket} on {}", self.endpoint());
    }
}

/// A throw-away certificate authority and a server certificate it signed for 127.0.0.1, made with the
/// openssl CLI: `ca.pem`, `server.pem`, `server.key` in a directory of the test.
pub struct TestCertificates {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate (SAN IP:127.0.0.1).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
}

impl TestCertificates {
    /// Generates the CA and the server certificate into `dir`.
    pub fn generate(dir: &Path) -> TestCertificates {
        let p = |name: &str| dir.join(name);
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run_openssl(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .args(["-days", "2", "-subj", "/CN=corral test CA", "-keyout"])
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
            "CA certificate",
        );
        run_openssl(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
            "server key",
        );
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", p("server.ext").display()));
        run_openssl(
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
            "server certificate",
        );
        TestCertificates { ca: p("ca.pem"), server_cert: p("server.pem"), server_key: p("server.key") }
    }
}

fn run_openssl(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|err| panic!("openssl is required ({what}): {err}"));
    assert!(out.status.success(), "openssl ({what}) failed: {}", String::from_utf8_lossy(&out.stderr));
}
