//! LLM support (issue 5, in progress): parameter-efficient adapters for linear layers.
//! So far: LSR-Adapt (sums of Kronecker products per LoRA factor) and LoRA as its baseline.

pub mod lsr;
