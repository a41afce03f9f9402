//! Tests of `finetune.rs`.
use super::*;
use crate::llm::fixture::tiny_config;

fn setup() -> (Llama, Tokenizer, Vec<Example>, Vec<Example>) {
    let tok = Tokenizer::train_byte_level("red green blue 0123456789 -> colour of", 60);
    let model = Llama::random(tiny_config(tok.vocab_size(), 32), 3, tch::Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let colours = ["red", "green", "blue"];
    let mut lines = String::new();
    for i in 0..60 {
        let c = colours[i % 3];
        lines.push_str(
            &serde_json::json!({"messages": [
            {"role": "user", "content": format!("colour of {i}{c}")},
            {"role": "assistant", "content": c}]})
            .to_string(),
        );
        lines.push('\n');
    }
    lines.push_str(&serde_json::json!({"prompt": "x".repeat(300), "completion": "y"}).to_string());
    let p = dir.path().join("d.jsonl");
    std::fs::write(&p, lines).unwrap();
    let (all, skipped) = load_jsonl(&p, &tok, 64).unwrap();
    assert_eq!((all.len(), skipped), (60, 1));
    let (train, eval) = all.split_at(48);
    (model, tok, train.to_vec(), eval.to_vec())
}

fn cfg(method: Method, steps: usize) -> FinetuneConfig {
    FinetuneConfig {
        method,
        alpha: 16.0,
        targets: Module::ALL.to_vec(),
        lr: 3e-2,
        weight_decay: 0.0,
        steps,
        batch: 8,
        grad_accum: 2,
        clip: 1.0,
        eval_every: 0,
        checkpoint_every: 5,
        seed: 4,
        max_len: 64,
        max_new_tokens: 4,
        resume: false,
        progress: false,
    }
}

#[test]
fn training_lowers_the_eval_loss_saves_a_loadable_adapter_and_resumes_exactly() {
    let (model, tok, train, eval) = setup();
    let base = evaluate(&model, &tok, None, &eval, 4).unwrap();
    let out = tempfile::tempdir().unwrap();
    let lsr = Method::Lsr {
        s: 2,
        r1: 2,
        r2: 2,
        init: Init::Zero,
    };
    let (trained, report) = run(
        &model,
        &tok,
        "tiny",
        &train,
        &eval,
        0,
        &cfg(lsr, 60),
        out.path(),
    )
    .unwrap();
    let after = report.evals.last().unwrap().1;
    // The random tiny model's tied head caps logit margins near 3, so the loss floor is high:
    // require a clear drop and better answers, not a small loss.
    assert!(
        after.loss < base.loss * 0.85,
        "eval loss {} -> {}",
        base.loss,
        after.loss
    );
    assert!(
        after.accuracy > base.accuracy,
        "{} -> {}",
        base.accuracy,
        after.accuracy
    );
    let loaded = Adapter::load(out.path(), tch::Device::Cpu).unwrap();
    loaded.check_fits(&model.cfg).unwrap();
    assert_eq!(loaded.parameters(), report.trainable_parameters);
    assert!(out.path().join("finetune_report.json").exists());
    // 10 steps, then resume to 20 from the step-10 checkpoint = 20 steps straight.
    let a = tempfile::tempdir().unwrap();
    run(
        &model,
        &tok,
        "tiny",
        &train,
        &[],
        0,
        &cfg(lsr, 10),
        a.path(),
    )
    .unwrap();
    let resumed = FinetuneConfig {
        resume: true,
        ..cfg(lsr, 20)
    };
    let (r, rep) = run(&model, &tok, "tiny", &train, &[], 0, &resumed, a.path()).unwrap();
    assert_eq!(rep.steps, 10, "only the remaining steps ran");
    let b = tempfile::tempdir().unwrap();
    let (straight, _) = run(
        &model,
        &tok,
        "tiny",
        &train,
        &[],
        0,
        &cfg(lsr, 20),
        b.path(),
    )
    .unwrap();
    for (x, y) in r.tensors().iter().zip(straight.tensors()) {
        let d = (x - y).abs().max().double_value(&[]);
        assert!(d < 1e-6, "resumed and straight runs differ by {d}");
    }
    // LoRA at the same bottleneck trains too, with more parameters.
    let (lora, rl) = run(
        &model,
        &tok,
        "tiny",
        &train,
        &eval,
        0,
        &cfg(Method::Lora { r: 4 }, 60),
        &out.path().join("lora"),
    )
    .unwrap();
    assert!(rl.evals.last().unwrap().1.loss < base.loss * 0.85);
    assert!(trained.parameters() < lora.parameters());
}

#[test]
fn bad_lines_are_named() {
    let tok = Tokenizer::train_byte_level("abc", 5);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let e = load_jsonl(&p, &tok, 64).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2"), "{e}");
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
    )
    .unwrap();
    let e = load_jsonl(&p, &tok, 64).unwrap_err().to_string();
    assert!(e.contains("assistant"), "{e}");
}
