//! Generates the gRPC client and server of `proto/instance_manager.proto`.
//!
//! The `.proto` files are compiled by `protox`, a protobuf compiler written in Rust, into a file
//! descriptor set that `tonic-build` turns into code: building Corral needs no system `protoc`
//! (`scripts/test` checks this by building with an empty `PROTOC` and no `protoc` on PATH).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["instance_manager.proto"], ["proto"])?;
    tonic_build::configure().compile_fds(descriptors)?;
    Ok(())
}
