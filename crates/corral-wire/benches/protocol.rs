//! Cost of the data protocol: 4 KiB random writes and reads on a replica store, called directly from
//! threads, against the same store served by `corral_wire::serve` and driven by `ReplicaClient` at
//! queue depth 32 over TCP loopback and a unix socket. Prints IOPS and the protocol/direct ratio.
//!
//! Run: `cargo bench -p corral-wire --bench protocol` (`BENCH_SECS=N` per measurement, default 5;
//! `BENCH_DIR=/path` for the replica directory, default a temp dir under the target directory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_replica::service::ServedReplica;
use corral_replica::{CreateOptions, Replica};
use corral_wire::{Address, Bytes, Listener, ReplicaClient, ServeOptions};

const SIZE: u64 = 1 << 30;
const BLOCK: u64 = 4096;
const QUEUE_DEPTH: usize = 32;

fn next_offset(state: &mut u64) -> u64 {
    // xorshift: cheap, different per worker, no shared state.
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % (SIZE / BLOCK)) * BLOCK
}

fn direct(replica: &Arc<Replica>, threads: usize, write: bool, secs: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (replica, stop, done) = (replica.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut state = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                let mut buf = vec![t as u8; BLOCK as usize];
                while !stop.load(Ordering::Relaxed) {
                    let offset = next_offset(&mut state);
                    if write {
                        replica.write_at(&buf, offset).unwrap();
                    } else {
                        replica.read_at(&mut buf, offset).unwrap();
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn through_protocol(address: &str, write: bool, secs: Duration) -> f64 {
    let client = ReplicaClient::connect(address, 2).await.unwrap();
    client.hello("bench", true).await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + secs;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..QUEUE_DEPTH {
        let (client, done) = (client.clone(), done.clone());
        tasks.spawn(async move {
            let mut state = 0x2545_f491_4f6c_dd1d ^ (t as u64 + 1);
            let data = Bytes::from(vec![t as u8; BLOCK as usize]);
            while Instant::now() < deadline {
                let offset = next_offset(&mut state);
                if write {
                    client.write(offset, data.clone()).await.unwrap();
                } else {
                    client.read(offset, BLOCK).await.unwrap();
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let secs =
        Duration::from_secs(std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5));
    let base =
        std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let temp = tempfile::tempdir_in(base).unwrap();
    let replica =
        Arc::new(Replica::create(&temp.path().join("replica"), CreateOptions { size: SIZE }).unwrap());
    let workers = ServeOptions::default().workers;
    // Pre-fill a region so reads hit allocated data, and so both runs write into an existing file.
    direct(&replica, workers, true, Duration::from_secs(1));

    let direct_write = direct(&replica, workers, true, secs);
    let direct_read = direct(&replica, workers, false, secs);

    let served = Arc::new(ServedReplica::new(Arc::try_unwrap(replica).ok().unwrap()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let socket = temp.path().join("bench.sock");
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        for address in ["tcp://127.0.0.1:0".to_string(), format!("unix://{}", socket.display())] {
            let listener = Listener::bind(&Address::parse(&address).unwrap()).await.unwrap();
            let bound = listener.local_address().unwrap().to_string();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(corral_wire::serve_with(
                listener,
                served.clone(),
                ServeOptions::default(),
                async {
                    let _ = stopped.await;
                },
            ));
            let write = through_protocol(&bound, true, secs).await;
            let read = through_protocol(&bound, false, secs).await;
            let _ = stop.send(());
            server.await.unwrap().unwrap();
            results.push((
                if address.starts_with("tcp") { "tcp loopback" } else { "unix socket" },
                write,
                read,
            ));
        }
        results
    });
    println!("4 KiB random I/O on a 1 GiB replica ({workers} store threads; protocol: QD{QUEUE_DEPTH}, 2 connections, {workers} server workers), {secs:?} each, no flush");
    println!("{:<28} {:>12} {:>8} {:>12} {:>8}", "path", "write IOPS", "ratio", "read IOPS", "ratio");
    println!(
        "{:<28} {:>12.0} {:>8} {:>12.0} {:>8}",
        "direct store (threads)", direct_write, "1.00", direct_read, "1.00"
    );
    for (name, write, read) in results {
        println!(
            "{:<28} {:>12.0} {:>8.2} {:>12.0} {:>8.2}",
            format!("client+server ({name})"),
            write,
            write / direct_write,
            read,
            read / direct_read
        );
    }
    drop(runtime);
    if let Ok(served) = Arc::try_unwrap(served) {
        served.into_replica().close().unwrap();
    }
}
