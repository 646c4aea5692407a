//! Serve a sparse in-memory disk over NBD, for manual runs and benchmarks.
//!
//! ```text
//! cargo run --release -p corral-nbd --example memserver -- [--size BYTES] [--name NAME]
//!     [--tcp 127.0.0.1:10809] [--unix /tmp/mem.sock]
//! qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:10809/mem
//! ```
//! Prints `listening tcp ADDR` / `listening unix PATH` lines once ready (tests wait for them).

use std::sync::Arc;

use corral_nbd::{MemoryBackend, NbdServer};

fn usage() -> ! {
    eprintln!("usage: memserver [--size BYTES] [--name NAME] [--tcp ADDR] [--unix PATH]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut size: u64 = 1 << 30;
    let mut name = "mem".to_owned();
    let mut tcp = None;
    let mut unix = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--size" => size = value().parse().unwrap_or_else(|_| usage()),
            "--name" => name = value(),
            "--tcp" => tcp = Some(value()),
            "--unix" => unix = Some(value()),
            _ => usage(),
        }
    }
    if tcp.is_none() && unix.is_none() {
        tcp = Some("127.0.0.1:10809".to_owned());
    }
    let server = NbdServer::builder(name, Arc::new(MemoryBackend::new(size)))
        .description("corral-nbd memory disk")
        .build();
    let mut tasks = Vec::new();
    if let Some(addr) = tcp {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap_or_else(|e| {
            eprintln!("bind {addr}: {e}");
            std::process::exit(1)
        });
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        println!("listening tcp {local}");
        let server = server.clone();
        tasks.push(tokio::spawn(async move { server.serve_tcp(listener).await }));
    }
    if let Some(path) = unix {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap_or_else(|e| {
            eprintln!("bind {path}: {e}");
            std::process::exit(1)
        });
        println!("listening unix {path}");
        let server = server.clone();
        tasks.push(tokio::spawn(async move { server.serve_unix(listener).await }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{e}"),
            Err(e) => eprintln!("{e}"),
        }
    }
}
