//! Generates the gRPC client of etcd's v3 API from `proto/` (etcd's `rpc.proto`, `kv.proto` and
//! `auth.proto`, as trimmed by the etcd-client crate: no gogoproto or grpc-gateway options).
//!
//! The `.proto` files are compiled by `protox`, a protobuf compiler written in Rust: building Corral
//! needs no system `protoc` (`scripts/test` checks this). That is also why corral-store does not use
//! the `etcd-client` crate, whose build script runs `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["rpc.proto"], ["proto"])?;
    tonic_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
