//! Single-core SHA-512 throughput of the implementations available to the backup store, on this CPU:
//! `ring` (assembly, what `block::checksum` uses) and the `sha2` crate (its x86-64 AVX2 backend).
//!
//! ```text
//! cargo run --release -p corral-backup --example hash_speed
//! ```
//! Hashes a 2 MiB block (one backup block) repeatedly and prints the best of six rounds per
//! implementation, so a busy machine lowers the figures but not usually their order.

use std::time::Instant;

use sha2::Digest;

fn best_rate(hash: &dyn Fn(&[u8]) -> u8, block: &[u8]) -> f64 {
    let mut best = 0f64;
    let mut sink = 0u8;
    for _ in 0..6 {
        let started = Instant::now();
        for _ in 0..20 {
            sink ^= hash(block);
        }
        best = best.max(20.0 * block.len() as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    best
}

fn main() {
    let block: Vec<u8> = (0..2usize << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    assert_eq!(
        corral_backup::block::checksum(&block),
        hex::encode(&sha2::Sha512::digest(&block)[..32]),
        "both implementations compute the same block name"
    );
    let ring = |b: &[u8]| ring::digest::digest(&ring::digest::SHA512, b).as_ref()[0];
    let sha2 = |b: &[u8]| sha2::Sha512::digest(b)[0];
    for round in 1..=2 {
        println!(
            "round {round}: ring {:.0} MiB/s, sha2 {:.0} MiB/s",
            best_rate(&ring, &block),
            best_rate(&sha2, &block)
        );
    }
}
