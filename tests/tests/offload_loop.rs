//! The offload loop live: real `cloud-expert serve` and `edge-client run` processes on loopback.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use system_tests::*;

/// Legacy model and a trained repository shared by the tests of this file.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let legacy = legacy(dir.path(), "multiclass");
        train(
            dir.path(),
            &legacy,
            "digits",
            &["--rejector-agreement", "--grid", "1,0.25"],
        );
        let repo = dir.path().join("repo");
        (dir, legacy, repo)
    })
}

fn edge_args<'a>(cloud: &'a str, legacy: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--cloud",
        cloud,
        "--legacy",
        legacy.to_str().unwrap(),
        "--sync-interval-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn live_labels_equal_the_offline_l2h_answers() {
    let (dir, legacy, repo) = fixture();
    let offline = dir.path().join("offline.jsonl");
    run_ok(
        "cloud-expert",
        &[
            "eval",
            "--repo",
            repo.to_str().unwrap(),
            "--predictions-out",
            offline.to_str().unwrap(),
        ],
    );
    let offline = json_lines(&std::fs::read_to_string(&offline).unwrap());
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let url = cloud.url();
    let args = edge_args(&url, legacy, &["--deadline-ms", "2000"]);
    let live = json_lines(&run_ok(
        "edge-client",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(live.len(), offline.len());
    let mut remote = 0;
    for (l, o) in live.iter().zip(&offline) {
        assert_eq!(l["id"].as_str().unwrap(), o["id"].to_string());
        assert_eq!(
            l["label"], o["label"],
            "input {}: live {l} offline {o}",
            o["id"]
        );
        assert_eq!(
            l["source"] == "remote",
            o["offload"].as_bool().unwrap(),
            "{l} vs {o}"
        );
        assert!((l["score"].as_f64().unwrap() - o["score"].as_f64().unwrap()).abs() < 1e-6);
        remote += (l["source"] == "remote") as usize;
    }
    assert!(remote > 0, "nothing was offloaded");
}

#[test]
fn cloud_killed_mid_run_every_input_is_answered_and_offloading_resumes() {
    let (_, legacy, repo) = fixture();
    let mut cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let addr = cloud.addr.clone();
    let url = cloud.url();
    let args = edge_args(
        &url,
        legacy,
        &[
            "--input",
            "digits",
            "--interval-ms",
            "2",
            "--deadline-ms",
            "300",
            "--breaker-backoff-ms",
            "200",
        ],
    );
    let mut edge = spawn_piped("edge-client", &args);
    let reader = std::io::BufReader::new(edge.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut restarted = None;
    for line in reader.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        lines.push(v);
        if lines.len() == 400 {
            cloud.kill();
        }
        if lines.len() == 600 {
            restarted = Some(CloudProcess::start(repo, &addr, &[]));
        }
    }
    assert!(edge.wait().unwrap().success());
    drop(restarted);
    assert_eq!(lines.len(), 1797, "every input answered exactly once");
    let ids: std::collections::BTreeSet<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1797);
    let count = |range: std::ops::Range<usize>, src: &str| {
        lines[range].iter().filter(|l| l["source"] == src).count()
    };
    assert!(count(0..400, "remote") > 0, "offloads before the outage");
    assert_eq!(count(0..400, "fallback"), 0);
    assert!(
        count(400..600, "fallback") > 0,
        "outage answered by fallback"
    );
    assert_eq!(count(400..600, "remote"), 0);
    assert!(
        count(900..1797, "remote") > 0,
        "offloading resumed after the restart"
    );
}

#[test]
fn a_slow_expert_is_answered_by_fallback_within_the_deadline() {
    let (_, legacy, repo) = fixture();
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &["--expert-delay-ms", "400"]);
    let url = cloud.url();
    let args = edge_args(
        &url,
        legacy,
        &["--deadline-ms", "50", "--breaker-failures", "1000"],
    );
    let live = json_lines(&run_ok(
        "edge-client",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let fallbacks: Vec<_> = live.iter().filter(|l| l["source"] == "fallback").collect();
    assert!(!fallbacks.is_empty());
    assert!(live.iter().all(|l| l["source"] != "remote"));
    for f in fallbacks {
        let total_ms = f["total_latency_us"].as_f64().unwrap() / 1e3;
        assert!(total_ms < 50.0 + 100.0, "fallback after {total_ms} ms");
    }
}

#[test]
fn many_edge_clients_against_a_small_queue_get_pushback_not_hangs() {
    let (_, legacy, repo) = fixture();
    let cloud = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &[
            "--queue-depth",
            "1",
            "--max-batch",
            "1",
            "--expert-delay-ms",
            "15",
        ],
    );
    let url = cloud.url();
    let args = edge_args(
        &url,
        legacy,
        &["--deadline-ms", "1000", "--breaker-failures", "100000"],
    );
    let children: Vec<_> = (0..6).map(|_| spawn_piped("edge-client", &args)).collect();
    let mut exhausted = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(lines.len(), 359);
        exhausted += lines
            .iter()
            .filter(|l| {
                l["fallback_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Unavailable"))
            })
            .count();
    }
    assert!(exhausted > 0, "the small queue never pushed back");
    // The server is still healthy: a lone client is served.
    let lone = json_lines(&run_ok(
        "edge-client",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(lone.iter().any(|l| l["source"] == "remote"));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let (_, legacy, repo) = fixture();
    let mut cloud = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &["--grace-secs", "2", "--expert-delay-ms", "300"],
    );
    let url = cloud.url();
    // One offload in flight when SIGTERM arrives still gets its answer.
    let args = edge_args(
        &url,
        legacy,
        &[
            "--deadline-ms",
            "3000",
            "--threshold=-1",
            "--input",
            "digits:test",
        ],
    );
    let mut edge = spawn_piped("edge-client", &args);
    let mut reader = std::io::BufReader::new(edge.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"remote\""), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let status = cloud.terminate();
    assert!(status.success(), "server exit status {status:?}");
    let mut second = String::new();
    reader.read_line(&mut second).unwrap();
    assert!(
        second.contains("\"remote\""),
        "the in-flight offload was lost: {second}"
    );
    let _ = edge.kill();
    let _ = edge.wait();
}
