//! Generates the gRPC servers and clients of `proto/csi.proto` (the CSI v1 spec's services).
//!
//! As in corral-im, `protox` (a protobuf compiler written in Rust) compiles the file into a
//! descriptor set that `tonic-build` turns into code, so the build needs no system `protoc`. The
//! well-known types the spec uses (`BoolValue`, `Int64Value`, `Timestamp`) come from `prost-types`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["csi.proto"], ["proto"])?;
    tonic_build::configure().compile_fds(descriptors)?;
    Ok(())
}
