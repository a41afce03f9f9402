//! LLM support (issue 5): a LLaMA-family decoder in tch with GGUF and Hugging Face loaders,
//! its byte-level BPE tokenizer and chat template, LSR-Adapt and LoRA adapters, fine-tuning, and
//! continuous-batching generation behind an OpenAI-compatible HTTP API.

pub mod adapter;
pub mod adapters;
pub mod bench;
pub mod engine;
pub mod finetune;
pub mod fixture;
pub mod generate;
pub mod gguf;
pub mod host;
pub mod kv;
pub mod linear;
pub mod load;
pub mod lsr;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod tokenizer_io;
