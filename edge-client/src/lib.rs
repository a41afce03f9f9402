//! The device side of the offloading system: runs the legacy model `m` and the rejector `r`
//! with the pure-Rust ONNX engine (no libtorch), decides per input whether to answer locally or
//! offload to the cloud expert over gRPC, and falls back to `m` whenever the cloud cannot answer
//! in time.
#![warn(missing_docs)]

pub mod breaker;
pub mod bundle;
pub mod client;
pub mod config;
pub mod device;
pub mod edge;
pub mod http;
pub mod models;
pub mod policy;
pub mod run_cmd;
pub mod stats;

pub use models::{Decision, EdgeError, EdgeModels};
