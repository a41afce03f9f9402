//! Reliability suite, sized for CI and bounded in time, loopback only: a load test with many
//! simulated devices (throughput, p50/p99/p999, error counts, peak RSS and RSS growth between
//! phases), and a fault suite in which edge clients keep answering every input while a TCP proxy
//! under the test's control delays, drops and stalls their connections and the server is
//! restarted under load.

use std::io::BufRead;
use std::time::{Duration, Instant};
use system_tests::proxy::{Mode, Proxy};
use system_tests::*;

fn trained() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, repo) = digits_repo(dir.path(), "10");
    (dir, legacy, repo)
}

fn loadgen(url: &str, protocol: &str, seconds: &str) -> serde_json::Value {
    let out = run_ok(
        "loadgen",
        &[
            "--url",
            url,
            "--protocol",
            protocol,
            "--devices",
            "32",
            "--concurrency",
            "128",
            "--seconds",
            seconds,
        ],
    );
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn load_test_many_devices_no_errors_and_bounded_memory() {
    let (_dir, _, repo) = trained();
    let cloud = CloudProcess::start(&repo, "127.0.0.1:0", &["--queue-depth", "1024"]);
    let mut phases = Vec::new();
    for (protocol, secs) in [("v2", "2"), ("v2", "2"), ("offload", "2")] {
        let r = loadgen(&cloud.url(), protocol, secs);
        let (hwm, rss) = rss_kib(cloud.pid());
        eprintln!(
            "load {protocol}: {:.0} req/s, p50 {} us, p99 {} us, p999 {} us, errors {}, server RSS {} KiB (peak {} KiB)",
            r["rps"].as_f64().unwrap(), r["p50_us"], r["p99_us"], r["p999_us"], r["errors"], rss, hwm
        );
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
        phases.push((rss, hwm));
    }
    // After the first phase has warmed every buffer and connection, further load of the same
    // shape must not grow the server's memory: allow 16 MiB of allocator noise.
    let growth = phases[1].0 as i64 - phases[0].0 as i64;
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB between identical load phases: {phases:?}"
    );
    assert!(phases[2].1 < 512 * 1024, "peak RSS {} KiB", phases[2].1);
    assert_eq!(
        curl(&[&format!("{}/v2/health/ready", cloud.http_url())]).0,
        200
    );
}

#[test]
fn edge_clients_never_lose_an_answer_through_delays_drops_stalls_and_restarts() {
    let (dir, legacy, repo) = trained();
    let mut cloud = CloudProcess::start(&repo, "127.0.0.1:0", &[]);
    let addr = cloud.addr.clone();
    let proxy = Proxy::start(addr.parse().unwrap());
    proxy.set_delay(Duration::from_millis(400));
    let proxy_url = proxy.url();
    let edge_args = |out: Option<&str>| {
        let mut a = vec![
            "run",
            "--cloud",
            &proxy_url,
            "--legacy",
            legacy.to_str().unwrap(),
            "--input",
            "digits",
            "--interval-ms",
            "1",
            "--deadline-ms",
            "150",
            "--breaker-backoff-ms",
            "150",
            "--sync-interval-secs",
            "0",
            "--telemetry-interval-secs",
            "0",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        if let Some(o) = out {
            a.extend(["--out".to_string(), o.to_string()]);
        }
        a
    };
    let started = Instant::now();
    // Background load straight at the server while the devices go through the proxy.
    let load = spawn_piped(
        "loadgen",
        &[
            "--url",
            &cloud.url(),
            "--devices",
            "8",
            "--concurrency",
            "16",
            "--seconds",
            "6",
        ],
    );
    let outs: Vec<_> = (1..3)
        .map(|i| dir.path().join(format!("edge-{i}.jsonl")))
        .collect();
    let others: Vec<_> = outs
        .iter()
        .map(|o| spawn_piped("edge-client", &edge_args(Some(o.to_str().unwrap()))))
        .collect();
    let mut main = spawn_piped("edge-client", &edge_args(None));
    let mut lines = Vec::new();
    let mut restarted = None;
    let mut schedule = vec![
        (200, "delay"),
        (400, "pass"),
        (550, "drop"),
        (700, "pass"),
        (850, "stall"),
        (1000, "pass"),
        (1000, "kill"),
        (1100, "restart"),
    ]
    .into_iter()
    .peekable();
    for line in std::io::BufReader::new(main.stdout.take().unwrap()).lines() {
        lines.push(serde_json::from_str::<serde_json::Value>(&line.unwrap()).unwrap());
        while let Some(&(at, what)) = schedule.peek() {
            if lines.len() < at {
                break;
            }
            schedule.next();
            match what {
                "delay" => proxy.set(Mode::Delay),
                "pass" => proxy.set(Mode::Pass),
                "drop" => proxy.set(Mode::Drop),
                "stall" => proxy.set(Mode::Stall),
                "kill" => cloud.kill(),
                _ => restarted = Some(CloudProcess::start(&repo, &addr, &[])),
            }
        }
    }
    assert!(main.wait().unwrap().success());
    for c in others {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    let _ = load.wait_with_output();
    drop(restarted);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(90),
        "fault suite took {elapsed:?}"
    );
    let check = |lines: &[serde_json::Value], name: &str| {
        assert_eq!(lines.len(), 1797, "{name}: every input answered");
        let ids: std::collections::BTreeSet<&str> =
            lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1797, "{name}: each exactly once");
        assert!(
            lines.iter().all(|l| l["label"].is_u64()),
            "{name}: every answer has a label"
        );
        let fallbacks = lines.iter().filter(|l| l["source"] == "fallback").count();
        let remote = lines.iter().filter(|l| l["source"] == "remote").count();
        eprintln!("{name}: {remote} remote, {fallbacks} fallback answers");
        assert!(
            fallbacks > 0 && remote > 0,
            "{name}: {remote} remote, {fallbacks} fallback"
        );
        assert!(lines
            .iter()
            .filter(|l| l["source"] == "fallback")
            .all(|l| l["fallback_reason"].is_string()));
    };
    check(&lines, "edge-0");
    assert!(
        lines[1500..].iter().any(|l| l["source"] == "remote"),
        "offloading resumed after the faults"
    );
    for o in &outs {
        let l = json_lines(&std::fs::read_to_string(o).unwrap());
        check(&l, &o.display().to_string());
    }
}
