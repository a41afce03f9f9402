//! Generated protocol code for `offload.v1`. This crate is the one place protocol code is
//! generated; every other crate converts these prost types to domain types at its boundary.
#![allow(missing_docs)]

/// The `offload.v1` package: the Expert and ModelSync services.
pub mod v1 {
    tonic::include_proto!("offload.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("offload_v1_descriptor");
}
