//! Fleet telemetry: edge clients report their answer counts to the cloud's metrics, and expose
//! their own counters.

use system_tests::*;

#[test]
fn devices_report_fleet_counters_and_expose_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, repo) = digits_repo(dir.path(), "20");
    let cloud = CloudProcess::start(&repo, "127.0.0.1:0", &[]);
    let url = cloud.url();
    let out = run(
        "edge-client",
        &[
            "run",
            "--cloud",
            &url,
            "--legacy",
            legacy.to_str().unwrap(),
            "--input",
            "digits:test",
            "--telemetry-interval-secs",
            "1",
            "--device-id",
            "dev-7",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    let (_, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    let fleet = |kind: &str| {
        metric(
            &metrics,
            &format!(r#"fleet_answers_total{{kind="{kind}",model="digits"}}"#),
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!(
        fleet("local"),
        summary["local"].as_u64().unwrap(),
        "{metrics}"
    );
    assert_eq!(fleet("offloaded"), summary["remote"].as_u64().unwrap());
    assert_eq!(fleet("fallback"), summary["fallback"].as_u64().unwrap());
    assert_eq!(fleet("local") + fleet("offloaded") + fleet("fallback"), 359);
    // The device's own endpoint exposes its counters too.
    let mut dev = spawn_piped(
        "edge-client",
        &[
            "serve",
            "--cloud",
            &url,
            "--legacy",
            legacy.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dev.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let body = format!(r#"{{"inputs": [{:?}]}}"#, vec![3.0f32; 64]);
    let (code, r) = curl(&[
        "-X",
        "POST",
        &format!("http://{addr}/predict"),
        "-H",
        "content-type: application/json",
        "-d",
        &body,
    ]);
    assert_eq!(code, 200, "{r}");
    let (code, m) = curl(&[&format!("http://{addr}/metrics")]);
    let _ = dev.kill();
    let _ = dev.wait();
    assert_eq!(code, 200);
    let answered: f64 = ["local", "remote", "fallback"]
        .iter()
        .filter_map(|s| {
            metric(
                &m,
                &format!(r#"edge_answers_total{{model="digits",source="{s}"}}"#),
            )
        })
        .sum();
    assert_eq!(answered, 1.0, "{m}");
    assert!(m.contains("edge_bundle_info"), "{m}");
}
