//! Generated protocol code for `offload.v1` and the Open Inference Protocol v2 (`inference`).
//! This crate is the one place protocol code is generated; every other crate converts these
//! prost types to domain types at its boundary.
#![allow(missing_docs)]

/// The `offload.v1` package: the Expert, ModelSync and Telemetry services.
pub mod v1 {
    tonic::include_proto!("offload.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("offload_v1_descriptor");
}

/// The `inference` package: Open Inference Protocol v2 (KServe / Triton / MLServer).
pub mod inference {
    tonic::include_proto!("inference");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("inference_descriptor");
}
