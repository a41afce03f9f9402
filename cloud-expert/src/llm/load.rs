//! Loading a LLaMA-family model with its tokenizer from a Hugging Face directory (`config.json`,
//! `*.safetensors`, `tokenizer.json`) or a GGUF file, and writing both formats (test fixtures and
//! conversions).

use super::gguf::{self, Gguf, Value};
use super::model::{Llama, LlamaConfig, ModelError};
use super::tokenizer::{Tokenizer, TokenizerError};
use super::tokenizer_io;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or written.
    #[error("{path}: {msg}")]
    File {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        msg: String,
    },
    /// The GGUF file is invalid.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// The weights do not make a model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer is missing or invalid.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A model and the tokenizer that belongs to it.
#[derive(Debug)]
pub struct LoadedLlm {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

/// Loads a GGUF file, or a Hugging Face directory, with its tokenizer.
pub fn load(path: &Path, device: Device) -> Result<LoadedLlm, LoadError> {
    if path.is_dir() {
        let model = load_hf_dir(path, device)?;
        let tokenizer = tokenizer_io::from_hf_dir(path)?;
        return Ok(LoadedLlm { model, tokenizer });
    }
    let g = read_gguf(path)?;
    let tokenizer = tokenizer_io::from_gguf(&g)?;
    let cfg = g.llama_config()?;
    let weights = g.llama_weights(&cfg)?;
    drop(g);
    let model = Llama::from_weights(cfg, weights, device)?;
    Ok(LoadedLlm { model, tokenizer })
}

fn read_gguf(path: &Path) -> Result<Gguf, LoadError> {
    Gguf::read(path).map_err(|e| match e {
        gguf::GgufError::Io(io) => file_err(path, io),
        other => other.into(),
    })
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::File {
        path: path.into(),
        msg: e.to_string(),
    }
}

/// Loads `dir/config.json` and every `dir/*.safetensors`.
pub fn load_hf_dir(dir: &Path, device: Device) -> Result<Llama, LoadError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
    let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|e| file_err(&cfg_path, e))?;
    let mut weights = HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| file_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(file_err(dir, "no *.safetensors file"));
    }
    for f in files {
        for (name, t) in Tensor::read_safetensors(&f).map_err(|e| file_err(&f, e))? {
            weights.insert(name, t);
        }
    }
    Ok(Llama::from_weights(cfg, weights, device)?)
}

/// Writes `dir/config.json`, `dir/model.safetensors` and, given one, the tokenizer files.
pub fn write_hf_dir(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    if let Some(t) = tokenizer {
        tokenizer_io::write_hf(t, dir).map_err(|e| file_err(dir, e))?;
    }
    let cfg = dir.join("config.json");
    let json = serde_json::to_string_pretty(&model.cfg).map_err(|e| file_err(&cfg, e))?;
    std::fs::write(&cfg, json).map_err(|e| file_err(&cfg, e))?;
    let mut named: Vec<(&String, &Tensor)> = model.weights().iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let st = dir.join("model.safetensors");
    Tensor::write_safetensors(&named, &st).map_err(|e| file_err(&st, e))
}

/// Loads a LLaMA GGUF file (weights dequantised to float32).
pub fn load_gguf(path: &Path, device: Device) -> Result<Llama, LoadError> {
    let g = read_gguf(path)?;
    let cfg = g.llama_config()?;
    let weights = g.llama_weights(&cfg)?;
    Ok(Llama::from_weights(cfg, weights, device)?)
}

/// Writes a model as a LLaMA GGUF file: norms in F32, matrices as `matrix_type` (F32, F16 or
/// Q8_0), Q/K rows permuted as llama.cpp's converter does; the tokenizer, given one, in the
/// `tokenizer.ggml.*` metadata.
pub fn write_gguf(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    path: &Path,
    matrix_type: u32,
) -> Result<(), LoadError> {
    let c = &model.cfg;
    let u = |v: usize| Value::U64(v as u64);
    let mut meta = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.num_key_value_heads)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F64(c.rms_norm_eps),
        ),
        ("llama.rope.freq_base", Value::F64(c.rope_theta)),
        ("llama.context_length", u(c.max_position_embeddings)),
        ("llama.vocab_size", u(c.vocab_size)),
    ];
    if let Some(t) = tokenizer {
        meta.extend(tokenizer_io::gguf_metadata(t));
    }
    let hd = c.head_dim() as i64;
    let tensors: Vec<(String, Tensor, u32)> =
        gguf::name_map(c.num_hidden_layers, c.tie_word_embeddings)
            .into_iter()
            .map(|(hf, gg)| {
                let mut t = model.weights()[&hf].shallow_clone();
                if hf.ends_with("q_proj.weight") {
                    t = gguf::permute(&t, c.num_attention_heads as i64, hd);
                } else if hf.ends_with("k_proj.weight") {
                    t = gguf::permute(&t, c.num_key_value_heads as i64, hd);
                }
                let ty = if t.dim() == 1 {
                    gguf::ty::F32
                } else {
                    matrix_type
                };
                (gg, t, ty)
            })
            .collect();
    gguf::write(path, &meta, &tensors).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::{Adapt, KvCache};

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 64,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            max_position_embeddings: 32,
        }
    }

    fn logits(m: &Llama) -> Tensor {
        let t = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6]).view([1, 8]);
        m.forward(&t, &mut KvCache::default(), Adapt::None).unwrap()
    }

    #[test]
    fn tiny_model_round_trips_through_both_formats() {
        let _g = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let m = Llama::random(tiny(), 7, Device::Cpu).unwrap();
        let want = logits(&m);
        write_hf_dir(&m, None, &dir.path().join("hf")).unwrap();
        let hf = load_hf_dir(&dir.path().join("hf"), Device::Cpu).unwrap();
        assert_eq!((logits(&hf) - &want).abs().max().double_value(&[]), 0.0);
        for (ty, tol) in [
            (gguf::ty::F32, 1e-6),
            (gguf::ty::F16, 2e-3),
            (gguf::ty::Q8_0, 3e-2),
        ] {
            let p = dir.path().join(format!("m-{ty}.gguf"));
            write_gguf(&m, None, &p, ty).unwrap();
            let g = load_gguf(&p, Device::Cpu).unwrap();
            assert_eq!(g.cfg, tiny());
            let d = (logits(&g) - &want).abs().max().double_value(&[]);
            assert!(d < tol, "ggml type {ty}: max |diff| {d}");
        }
        // Errors name the problem.
        std::fs::write(dir.path().join("bad.gguf"), b"GGUF\x03\x00\x00\x00").unwrap();
        let e = load_gguf(&dir.path().join("bad.gguf"), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = load_hf_dir(dir.path(), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn the_tokenizer_travels_with_the_model_in_both_formats() {
        let _g = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let mut tok = Tokenizer::train_byte_level("hello world, hello there; 1 + 2 = 3", 20);
        tok.add_bos = true;
        let m = Llama::random(
            LlamaConfig {
                vocab_size: tok.vocab_size(),
                ..tiny()
            },
            7,
            Device::Cpu,
        )
        .unwrap();
        let gg = dir.path().join("m.gguf");
        write_gguf(&m, Some(&tok), &gg, gguf::ty::F32).unwrap();
        write_hf_dir(&m, Some(&tok), &dir.path().join("hf")).unwrap();
        let text = "<|im_start|>user\nhello world 12<|im_end|>";
        for p in [gg, dir.path().join("hf")] {
            let l = load(&p, Device::Cpu).unwrap();
            assert_eq!(l.model.cfg.vocab_size, tok.vocab_size());
            assert_eq!(
                l.tokenizer.encode(text),
                tok.encode(text),
                "{}",
                p.display()
            );
            assert_eq!(
                (l.tokenizer.bos, l.tokenizer.eos, l.tokenizer.add_bos),
                (Some(1), Some(2), true)
            );
            assert_eq!(l.tokenizer.chat_template, tok.chat_template);
        }
        // A GGUF without tokenizer metadata is refused by `load` with the missing key named.
        let bare = dir.path().join("bare.gguf");
        write_gguf(&m, None, &bare, gguf::ty::F32).unwrap();
        let e = load(&bare, Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");
    }

    #[test]
    fn quantised_blocks_dequantise_by_the_ggml_formulas() {
        let h = |v: f32| gguf::f32_to_half(v).to_le_bytes();
        // Q4_0: d = 0.5; nibble q -> d * (q - 8); low nibbles first, then high nibbles.
        let mut q40 = h(0.5).to_vec();
        q40.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = gguf::dequantize(gguf::ty::Q4_0, &q40, 32).unwrap();
        assert_eq!(v[0], -4.0);
        assert_eq!(v[15], 3.5);
        assert_eq!(v[16], 3.5);
        assert_eq!(v[31], -4.0);
        // Q4_1: x = d * q + m.
        let mut q41 = h(0.25).to_vec();
        q41.extend(h(-1.0));
        q41.extend((0..16u8).map(|j| j | (j << 4)));
        let v = gguf::dequantize(gguf::ty::Q4_1, &q41, 32).unwrap();
        assert_eq!((v[0], v[15], v[31]), (-1.0, 2.75, 2.75));
        // Q8_0: d * int8.
        let mut q80 = h(0.125).to_vec();
        q80.extend((0..32i8).map(|i| (i - 16) as u8));
        let v = gguf::dequantize(gguf::ty::Q8_0, &q80, 32).unwrap();
        assert_eq!((v[0], v[31]), (-2.0, 1.875));
        assert!(
            gguf::dequantize(gguf::ty::Q8_0, &q80, 64).is_none(),
            "short buffer"
        );
        assert_eq!(gguf::half_to_f32(0x3c00), 1.0);
        assert_eq!(gguf::half_to_f32(0x0001), 2f32.powi(-24));
    }
}
