//! The LLM server end to end, as a user runs it: `cloud-expert serve --llm` on the tiny fixture
//! model (GGUF, and the Hugging Face directory), driven by the official `openai` Python package
//! and by curl: adapters by name, run-time load/unload with an LRU cap, incompatible adapters,
//! mixed-adapter batches, 429 when full, and cancellation when a streaming client goes away.

use std::path::Path;
use system_tests::{bin, curl, metric, post_json, python, workspace_root, CloudProcess};

fn fixtures(dir: &Path) {
    let out = std::process::Command::new(bin("cloud-expert"))
        .args(["llm-fixture", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.join("repo")).unwrap();
}

fn start(dir: &Path, model: &str, extra: &[&str]) -> CloudProcess {
    let m = dir.join(model);
    let mut args = vec!["--llm", m.to_str().unwrap(), "--llm-name", "tiny"];
    args.extend_from_slice(extra);
    CloudProcess::start(&dir.join("repo"), "127.0.0.1:0", &args)
}

#[test]
fn the_official_openai_client_gets_completions_chat_streams_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let lsr = format!("lsr={}", dir.path().join("adapters/lsr").display());
    let cloud = start(dir.path(), "tiny.gguf", &["--adapter", &lsr]);
    let out = std::process::Command::new(python())
        .arg(workspace_root().join("tests/python/openai_client.py"))
        .args([&cloud.http_url(), "tiny", "lsr"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    let (_, m) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    assert!(
        metric(&m, r#"llm_requests_total{endpoint="chat",status="200"}"#).unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert!(metric(
        &m,
        r#"llm_requests_total{endpoint="completions",status="404"}"#
    )
    .is_none());
    assert!(
        metric(&m, r#"llm_requests_total{endpoint="chat",status="404"}"#) == Some(1.0),
        "{m}"
    );
}

#[test]
fn adapters_load_unload_and_evict_and_misfits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let cloud = start(dir.path(), "tiny-hf", &["--max-loaded-adapters", "1"]);
    let url = cloud.http_url();
    let ad = |n: &str| dir.path().join("adapters").join(n).display().to_string();
    let gen = |model: &str| {
        post_json(
            &format!("{url}/v1/completions"),
            &serde_json::json!({"model": model, "prompt": "Hello", "max_tokens": 6, "temperature": 0}).to_string(),
        )
    };
    let (code, base) = gen("tiny");
    assert_eq!(code, 200, "{base}");
    // Load two adapters with a cap of one: the first is evicted, then reloaded on demand.
    for name in ["lsr", "lora"] {
        let (code, body) = post_json(
            &format!("{url}/v1/adapters"),
            &serde_json::json!({"name": name, "path": ad(name)}).to_string(),
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["loaded"], true);
    }
    let (_, list) = curl(&[&format!("{url}/v1/adapters")]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let loaded: Vec<(String, bool)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["loaded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(loaded, [("lora".into(), true), ("lsr".into(), false)]);
    let (code, via_lsr) = gen("lsr");
    assert_eq!(code, 200, "{via_lsr}");
    assert_ne!(via_lsr["choices"][0]["text"], base["choices"][0]["text"]);
    let (code, via_lora) = gen("lora");
    assert_eq!(code, 200);
    assert_ne!(via_lora["choices"][0]["text"], base["choices"][0]["text"]);
    // An adapter made for another model is refused with the reason.
    let (code, body) = post_json(
        &format!("{url}/v1/adapters"),
        &serde_json::json!({"name": "wrong", "path": ad("wrong-base")}).to_string(),
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["code"], "adapter_incompatible");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hidden_size: 48"),
        "{body}"
    );
    let (code, body) = post_json(
        &format!("{url}/v1/adapters"),
        &serde_json::json!({"name": "ghost", "path": "/nonexistent/adapter"}).to_string(),
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = post_json(
        &format!("{url}/v1/adapters"),
        &serde_json::json!({"name": "tiny", "path": ad("lsr")}).to_string(),
    );
    assert_eq!(code, 400, "the base model's name is reserved: {body}");
    // Unload: the name is gone.
    let (code, _) = curl(&["-X", "DELETE", &format!("{url}/v1/adapters/lsr")]);
    assert_eq!(code, 200);
    let (code, body) = gen("lsr");
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (code, _) = curl(&["-X", "DELETE", &format!("{url}/v1/adapters/lsr")]);
    assert_eq!(code, 404);
    // Malformed bodies get OpenAI-shaped 400s naming the problem.
    let (code, body) = post_json(
        &format!("{url}/v1/chat/completions"),
        r#"{"model": "tiny", "messages": "hi"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid"),
        "{body}"
    );
    let (code, body) = post_json(
        &format!("{url}/v1/chat/completions"),
        r#"{"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}"#,
    );
    assert_eq!(
        (code, body["error"]["param"].as_str()),
        (400, Some("messages[0].role"))
    );
}

#[test]
fn mixed_adapter_batches_fill_up_answer_429_and_streams_cancel_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let lsr = format!("lsr={}", dir.path().join("adapters/lsr").display());
    let lora = format!("lora={}", dir.path().join("adapters/lora").display());
    let cloud = start(
        dir.path(),
        "tiny.gguf",
        &[
            "--adapter",
            &lsr,
            "--adapter",
            &lora,
            "--llm-max-seqs",
            "3",
            "--llm-max-queue",
            "1",
            "--llm-max-new-tokens",
            "200",
            "--llm-step-delay-ms",
            "5",
        ],
    );
    let url = cloud.http_url();
    // Alone, each model's greedy answer.
    let body = |model: &str| {
        serde_json::json!({"model": model, "prompt": "The quick brown fox", "max_tokens": 40,
            "temperature": 0, "ignore_eos": true})
        .to_string()
    };
    let alone: Vec<serde_json::Value> = ["tiny", "lsr", "lora"]
        .iter()
        .map(|m| post_json(&format!("{url}/v1/completions"), &body(m)).1)
        .collect();
    // Together: 3 run, 1 waits, the rest are refused with 429 and Retry-After.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (url, b) = (url.clone(), body(["tiny", "lsr", "lora"][i % 3]));
            std::thread::spawn(move || post_json(&format!("{url}/v1/completions"), &b))
        })
        .collect();
    let results: Vec<(u16, serde_json::Value)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let full = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(ok + full, 8, "{results:?}");
    assert!(ok >= 4 && full >= 1, "ok {ok}, 429 {full}");
    for (i, (code, r)) in results.iter().enumerate() {
        if *code == 200 {
            assert_eq!(
                r["choices"][0]["text"],
                alone[i % 3]["choices"][0]["text"],
                "request {i} in a mixed batch"
            );
        } else {
            assert_eq!(r["error"]["code"], "rate_limit_exceeded");
        }
    }
    let (_, m) = curl(&[&format!("{url}/metrics")]);
    assert!(
        metric(&m, r#"llm_engine_totals{kind="mixed_adapter_steps"}"#).unwrap_or(0.0) > 0.0 || {
            std::thread::sleep(std::time::Duration::from_millis(700));
            let (_, m) = curl(&[&format!("{url}/metrics")]);
            metric(&m, r#"llm_engine_totals{kind="mixed_adapter_steps"}"#).unwrap_or(0.0) > 0.0
        }
    );
    // A streaming client that hangs up after 0.3 s is cancelled, and its slot comes back.
    let _ = curl(&[
        "-N",
        "--max-time",
        "0.3",
        "-X",
        "POST",
        &format!("{url}/v1/completions"),
        "-H",
        "content-type: application/json",
        "-d",
        &serde_json::json!({"model": "tiny", "prompt": "x", "max_tokens": 200, "stream": true,
            "ignore_eos": true})
        .to_string(),
    ]);
    let mut cancelled = 0.0;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let (_, m) = curl(&[&format!("{url}/metrics")]);
        cancelled = metric(&m, r#"llm_engine_totals{kind="cancelled"}"#).unwrap_or(0.0);
        let running = metric(&m, r#"llm_engine{state="running"}"#).unwrap_or(1.0);
        if cancelled >= 1.0 && running == 0.0 {
            break;
        }
    }
    assert!(cancelled >= 1.0, "the dropped stream was not cancelled");
}
