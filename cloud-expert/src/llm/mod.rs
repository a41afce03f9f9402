//! LLM support (issue 5, in progress): parameter-efficient adapters for linear layers.
//! So far: LSR-Adapt (sums of Kronecker products per LoRA factor) with LoRA as its baseline, and
//! a LLaMA-family decoder with a KV cache.

pub mod gguf;
pub mod load;
pub mod lsr;
pub mod model;
pub mod tokenizer;
pub mod tokenizer_io;
