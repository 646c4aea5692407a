//! Generates the gRPC client and server of `proto/instance_manager.proto` (needs `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/instance_manager.proto");
    tonic_build::configure().compile_protos(&["proto/instance_manager.proto"], &["proto"])?;
    Ok(())
}
