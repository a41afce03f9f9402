//! The device's bundle handling and local HTTP endpoint, with real processes.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use system_tests::*;

/// Two legacy models and a repository with two versions of `digits` (for the first legacy model).
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let legacy_a = legacy(dir.path(), "multiclass");
        let other = dir.path().join("other.onnx");
        run_ok(
            "cloud-expert",
            &["legacy", "--seed", "7", "--out", other.to_str().unwrap()],
        );
        for _ in 0..2 {
            train(
                dir.path(),
                &legacy_a,
                "digits",
                &["--epochs", "4", "--grid", "1,0.25"],
            );
        }
        let repo = dir.path().join("repo");
        (dir, legacy_a, other, repo)
    })
}

fn run_edge(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(bin("edge-client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.success(),
        json_lines(&String::from_utf8_lossy(&out.stdout)),
        stderr,
    )
}

#[test]
fn the_device_picks_up_the_newer_bundle_and_starts_offline_from_its_cache() {
    let (dir, legacy, _, repo) = fixture();
    let cache = dir.path().join("cache-a");
    let v1 = repo.join("digits/1");
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let url = cloud.url();
    let l = legacy.to_str().unwrap();
    let c = cache.to_str().unwrap();
    // Installed with version 1; the cloud serves version 2: the start-up sync swaps it in.
    let (ok, lines, _) = run_edge(&[
        "run",
        "--cloud",
        &url,
        "--legacy",
        l,
        "--bundle",
        v1.to_str().unwrap(),
        "--bundle-cache",
        c,
    ]);
    assert!(ok);
    assert!(lines.iter().all(|a| a["r_version"] == "2"), "{}", lines[0]);
    drop(cloud);
    // Cloud gone, no --bundle: the cached version 2 is used, offloads fall back.
    let (ok, lines, _) = run_edge(&[
        "run",
        "--cloud",
        &url,
        "--legacy",
        l,
        "--bundle-cache",
        c,
        "--deadline-ms",
        "100",
    ]);
    assert!(ok);
    assert_eq!(lines.len(), 359);
    assert!(lines
        .iter()
        .all(|a| a["r_version"] == "2" && a["source"] != "remote"));
    assert!(lines.iter().any(|a| a["source"] == "fallback"));
}

#[test]
fn corrupt_or_foreign_bundles_are_refused_and_the_good_one_stays() {
    let (dir, legacy, other, repo) = fixture();
    let l = legacy.to_str().unwrap();
    let cache = dir.path().join("cache-b");
    let c = cache.to_str().unwrap();
    let v2 = repo.join("digits/2");
    // A bundle trained for another legacy model is refused at install.
    let (ok, _, err) = run_edge(&[
        "run",
        "--legacy",
        other.to_str().unwrap(),
        "--bundle",
        v2.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("legacy model"), "{err}");
    // Fill the cache, then corrupt the cached ONNX: the device refuses it and, without a cloud
    // or an install source, says why it cannot start.
    let (ok, _, _) = run_edge(&[
        "run",
        "--legacy",
        l,
        "--bundle",
        v2.to_str().unwrap(),
        "--bundle-cache",
        c,
    ]);
    assert!(ok);
    let onnx = cache.join("rejector.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let (ok, _, err) = run_edge(&["run", "--legacy", l, "--bundle-cache", c]);
    assert!(!ok && err.contains("no rejector bundle"), "{err}");
    // With the cloud reachable the device fetches a good bundle and repairs its cache.
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let (ok, lines, _) = run_edge(&[
        "run",
        "--cloud",
        &cloud.url(),
        "--legacy",
        l,
        "--bundle-cache",
        c,
    ]);
    assert!(ok && lines.iter().any(|a| a["source"] == "remote"));
    let (ok, _, _) = run_edge(&["run", "--legacy", l, "--bundle-cache", c]);
    assert!(ok, "the repaired cache starts the device offline");
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn the_local_http_endpoint_predicts_and_reports() {
    let (_, legacy, _, repo) = fixture();
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let mut edge = spawn_piped(
        "edge-client",
        &[
            "serve",
            "--cloud",
            &cloud.url(),
            "--legacy",
            legacy.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let mut line = String::new();
    std::io::BufReader::new(edge.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let data = offload_shared::dataset::load_digits().unwrap();
    let inputs: Vec<Vec<f32>> = (0..20).map(|i| data.row(i).to_vec()).collect();
    let (status, body) = http(
        &addr,
        "POST",
        "/predict",
        &serde_json::json!({ "inputs": inputs }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answers = body["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 20);
    let correct = answers
        .iter()
        .enumerate()
        .filter(|(i, a)| a["label"] == data.labels()[*i])
        .count();
    assert!(correct >= 17, "{correct}/20");
    let (status, body) = http(&addr, "POST", "/predict", r#"{"inputs": [[1.0, 2.0]]}"#);
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("inputs[0]"));
    let (status, _) = http(&addr, "POST", "/predict", "{not json");
    assert_eq!(status, 400);
    let (status, body) = http(&addr, "GET", "/health", "");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (_, stats) = http(&addr, "GET", "/stats", "");
    assert_eq!(stats["total"], 20);
    // A live policy change: offload everything (threshold below any score), then nothing.
    let (status, _) = http(&addr, "POST", "/policy", r#"{"threshold": -1.0}"#);
    assert_eq!(status, 200);
    let (_, body) = http(
        &addr,
        "POST",
        "/predict",
        &serde_json::json!({ "inputs": inputs }).to_string(),
    );
    assert!(
        body["answers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["source"] == "remote"),
        "{body}"
    );
    let (_, _) = http(&addr, "POST", "/policy", r#"{"threshold": 2.0}"#);
    let (_, body) = http(
        &addr,
        "POST",
        "/predict",
        &serde_json::json!({ "inputs": inputs }).to_string(),
    );
    assert!(body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["source"] == "local"));
    let (status, _) = http(&addr, "POST", "/policy", r#"{"target_rate": 1.5}"#);
    assert_eq!(status, 422);
    let _ = edge.kill();
    let _ = edge.wait();
}
