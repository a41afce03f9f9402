//! Shared building blocks of the offloading system, usable on the device (no libtorch):
//! datasets, the pure-Rust ONNX engine that runs the legacy model `m` and the rejector `r`,
//! the L2H evaluation (system loss, baselines, curves), and the model-repository layout.
#![warn(missing_docs)]

pub mod dataset;
pub mod engine;
pub mod eval;
pub mod legacy;
pub mod oip;
pub mod onnx_build;
pub mod rejector;
pub mod repository;
pub mod rng;
pub mod wire;
