//! Reading and writing [`Tokenizer`]s: GGUF `tokenizer.ggml.*` metadata (model `gpt2`) and
//! Hugging Face `tokenizer.json` + `tokenizer_config.json` with a `ByteLevel` pre-tokeniser.

use super::gguf::{Gguf, Value};
use super::tokenizer::{Tokenizer, TokenizerError};
use serde_json::{json, Value as Json};
use std::collections::HashSet;
use std::path::Path;

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

fn strings(v: Option<&Value>, key: &str) -> Result<Vec<String>, TokenizerError> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(String::from)
                    .ok_or_else(|| invalid(format!("{key} holds a non-string")))
            })
            .collect(),
        _ => Err(invalid(format!("{key} is missing"))),
    }
}

/// The tokenizer stored in a GGUF file's metadata.
pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
    let m = &g.metadata;
    match m.get("tokenizer.ggml.model").and_then(Value::as_str) {
        Some("gpt2") => {}
        Some(other) => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF tokenizer model `{other}` (gpt2 byte-level BPE is implemented)"
            )))
        }
        None => return Err(invalid("tokenizer.ggml.model is missing")),
    }
    let tokens = strings(m.get("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")?;
    let merges = strings(m.get("tokenizer.ggml.merges"), "tokenizer.ggml.merges")?;
    // Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let special: HashSet<u32> = match m.get("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.as_u64(), Some(3 | 4)))
            .map(|(i, _)| i as u32)
            .collect(),
        _ => HashSet::new(),
    };
    let mut t = Tokenizer::new(tokens, &merges, special)?;
    let id = |k: &str| m.get(k).and_then(Value::as_u64).map(|v| v as u32);
    t.bos = id("tokenizer.ggml.bos_token_id");
    t.eos = id("tokenizer.ggml.eos_token_id");
    t.add_bos = matches!(
        m.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    t.chat_template = m
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(String::from);
    Ok(t)
}

/// GGUF metadata entries describing `t`.
pub fn gguf_metadata(t: &Tokenizer) -> Vec<(&'static str, Value)> {
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::Str).collect());
    let types = (0..t.vocab_size() as u32)
        .map(|i| Value::I64(if t.is_special(i) { 3 } else { 1 }))
        .collect();
    let mut out = vec![
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(t.tokens().to_vec())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strs(t.merge_strings())),
        ("tokenizer.ggml.add_bos_token", Value::Bool(t.add_bos)),
    ];
    if let Some(b) = t.bos {
        out.push(("tokenizer.ggml.bos_token_id", Value::U64(b.into())));
    }
    if let Some(e) = t.eos {
        out.push(("tokenizer.ggml.eos_token_id", Value::U64(e.into())));
    }
    if let Some(c) = &t.chat_template {
        out.push(("tokenizer.chat_template", Value::Str(c.clone())));
    }
    out
}

fn read_json(path: &Path) -> Result<Json, TokenizerError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn is_byte_level(pre: &Json) -> bool {
    match pre.get("type").and_then(Json::as_str) {
        Some("ByteLevel") => true,
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Json::as_array)
            .is_some_and(|v| v.len() == 1 && is_byte_level(&v[0])),
        _ => false,
    }
}

/// The tokenizer of a Hugging Face model directory (`tokenizer.json`, and
/// `tokenizer_config.json` for the chat template and BOS/EOS when present).
pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let j = read_json(&dir.join("tokenizer.json"))?;
    let model = &j["model"];
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(TokenizerError::Unsupported(format!(
            "tokenizer.json model type {} (BPE is implemented)",
            model["type"]
        )));
    }
    if !is_byte_level(&j["pre_tokenizer"]) {
        return Err(TokenizerError::Unsupported(format!(
            "pre_tokenizer {} (ByteLevel is implemented)",
            j["pre_tokenizer"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| invalid("tokenizer.json model.vocab is not an object"))?;
    let mut pairs: Vec<(u64, String)> = vocab
        .iter()
        .map(|(k, v)| {
            v.as_u64()
                .map(|i| (i, k.clone()))
                .ok_or_else(|| invalid(format!("vocab id of `{k}`")))
        })
        .collect::<Result<_, _>>()?;
    let added = j["added_tokens"].as_array().cloned().unwrap_or_default();
    let mut special = HashSet::new();
    for a in &added {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(invalid("added_tokens entry without id/content"));
        };
        if !vocab.contains_key(content) {
            pairs.push((id, content.to_string()));
        }
        special.insert(id as u32);
    }
    pairs.sort();
    let mut tokens = vec![String::new(); pairs.last().map_or(0, |p| p.0 as usize + 1)];
    for (i, s) in pairs {
        tokens[i as usize] = s;
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| invalid("tokenizer.json model.merges is missing"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            _ => Err(invalid(format!("merge {m}"))),
        })
        .collect::<Result<_, _>>()?;
    let mut t = Tokenizer::new(tokens, &merges, special)?;
    let cfg_path = dir.join("tokenizer_config.json");
    if cfg_path.exists() {
        let c = read_json(&cfg_path)?;
        let tok = |k: &str| {
            let v = &c[k];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .and_then(|s| t.token_id(s))
        };
        let (bos, eos) = (tok("bos_token"), tok("eos_token"));
        t.bos = bos;
        t.eos = eos;
        t.add_bos = c["add_bos_token"].as_bool().unwrap_or(false);
        t.chat_template = c["chat_template"].as_str().map(String::from);
    }
    Ok(t)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write_hf(t: &Tokenizer, dir: &Path) -> std::io::Result<()> {
    let vocab: serde_json::Map<String, Json> = t
        .tokens()
        .iter()
        .enumerate()
        .filter(|(i, _)| !t.is_special(*i as u32))
        .map(|(i, s)| (s.clone(), json!(i)))
        .collect();
    let mut specials: Vec<u32> = t.special_ids().iter().copied().collect();
    specials.sort();
    let added: Vec<Json> = specials
        .iter()
        .map(|&i| {
            json!({"id": i, "content": t.tokens()[i as usize], "special": true,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false})
        })
        .collect();
    let tj = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": t.merge_strings()},
    });
    let name = |id: Option<u32>| id.map(|i| t.tokens()[i as usize].clone());
    let cj = json!({
        "bos_token": name(t.bos),
        "eos_token": name(t.eos),
        "add_bos_token": t.add_bos,
        "chat_template": t.chat_template,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let pretty = |v: &Json| serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(dir.join("tokenizer.json"), pretty(&tj))?;
    std::fs::write(dir.join("tokenizer_config.json"), pretty(&cj))
}
