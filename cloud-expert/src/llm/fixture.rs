//! Small LLM fixtures written by code: a tiny randomly initialised LLaMA with a real byte-level
//! BPE tokenizer (trained on a fixed paragraph) in both formats, and adapters for it. Tests and
//! the `llm-fixture` command use them so the API can be exercised in seconds.

use super::adapter::{Adapter, AdapterError, Module, Update};
use super::gguf;
use super::load::{write_gguf, write_hf_dir, LoadError};
use super::lsr::Init;
use super::model::{Llama, LlamaConfig};
use super::tokenizer::Tokenizer;
use std::path::Path;
use tch::Device;

/// Text the fixture tokenizer is trained on.
const CORPUS: &str =
    "The quick brown fox jumps over the lazy dog. A cloud expert answers what the \
device cannot. Hello, world! What is 2 + 2? It is 4. The capital of France is Paris. Learning to \
help: the rejector decides, the expert answers, and the legacy model stays as it is. \
<tag>value</tag> {\"key\": [1, 2, 3]} def f(x): return x * 2";

/// The tiny model's configuration for a vocabulary size.
pub fn tiny_config(vocab: usize, hidden: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: hidden * 3 / 2,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
        max_position_embeddings: 256,
    }
}

/// Why writing fixtures failed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Model or tokenizer.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Adapter.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

/// Writes `dir/tiny.gguf`, `dir/tiny-hf/`, and adapters `dir/adapters/{lsr,lora,wrong-base}`.
pub fn write(dir: &Path) -> Result<(), FixtureError> {
    let _g = tch::no_grad_guard();
    let tok = Tokenizer::train_byte_level(CORPUS, 200);
    let cfg = tiny_config(tok.vocab_size(), 64);
    let model = Llama::random(cfg.clone(), 1234, Device::Cpu).map_err(LoadError::from)?;
    write_gguf(&model, Some(&tok), &dir.join("tiny.gguf"), gguf::ty::F32)?;
    write_hf_dir(&model, Some(&tok), &dir.join("tiny-hf"))?;
    tch::manual_seed(99);
    let lsr = Adapter::new_lsr(
        "tiny",
        &cfg,
        &Module::ALL,
        2,
        2,
        2,
        8.0,
        Init::SmallRandom,
        Device::Cpu,
    )?
    .detached();
    // Factors large enough that the adapter visibly changes a random model's output.
    for u in lsr.updates.values() {
        if let Update::Lsr(x) = u {
            for t in [&x.a1, &x.a2, &x.b1, &x.b2] {
                let _ = t.shallow_clone().normal_(0.0, 0.3);
            }
        }
    }
    lsr.save(&dir.join("adapters/lsr"))?;
    let lora = Adapter::new_lora(
        "tiny",
        &cfg,
        &[Module::QProj, Module::VProj],
        4,
        8.0,
        Device::Cpu,
    )?
    .detached();
    for u in lora.updates.values() {
        if let Update::Lora(x) = u {
            let _ = x.b.shallow_clone().normal_(0.0, 0.2);
        }
    }
    lora.save(&dir.join("adapters/lora"))?;
    let other = tiny_config(tok.vocab_size(), 48);
    Adapter::new_lsr(
        "other",
        &other,
        &[Module::QProj],
        1,
        2,
        2,
        8.0,
        Init::Zero,
        Device::Cpu,
    )?
    .save(&dir.join("adapters/wrong-base"))?;
    Ok(())
}
