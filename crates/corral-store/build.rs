//! Generates the gRPC client of etcd's v3 API from `proto/`: our own declaration of the subset of the
//! API that corral-store calls (`etcd_v3.proto`, `mvcc.proto`; names and field numbers are etcd's).
//!
//! The `.proto` files are compiled by `protox`, a protobuf compiler written in Rust: building Corral
//! needs no system `protoc` (`scripts/test` checks this). That is also why corral-store does not use
//! the `etcd-client` crate, whose build script runs `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["etcd_v3.proto"], ["proto"])?;
    tonic_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
