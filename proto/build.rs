//! Generates the offload.v1 and inference (Open Inference Protocol v2) gRPC code with a vendored
//! protoc, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("offload_v1_descriptor.bin"))
        .compile_protos(&["offload/v1/offload.proto"], &["."])?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(&["inference/grpc_service.proto"], &["."])?;
    println!("cargo:rerun-if-changed=offload/v1/offload.proto");
    println!("cargo:rerun-if-changed=inference/grpc_service.proto");
    Ok(())
}
