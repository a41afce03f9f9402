//! End-to-end: the real binaries train on the bundled digits, write a model repository, evaluate
//! against the baselines, and export a rejector that other engines read identically.

use system_tests::*;

#[test]
fn multiclass_training_writes_the_repository_and_l2h_beats_confidence() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "multiclass");
    let v = train(dir.path(), &legacy, "digits", &["--rejector-agreement"]);
    for f in [
        "expert.safetensors",
        "expert.json",
        "rejector.onnx",
        "rejector.json",
        "legacy.onnx",
        "report.json",
        "curves.svg",
    ] {
        assert!(v.join(f).exists(), "missing {f}");
    }
    let report = json(&v.join("report.json"));
    for key in ["1,0", "1,0.25", "1.25,0.25"] {
        let r = &report["results"][key];
        for m in ["local", "expert", "random", "confidence", "oracle", "l2h"] {
            assert!(r[m]["system_loss"].is_number(), "{key}/{m} missing");
        }
        let (l2h, conf) = (
            r["l2h"]["system_loss"].as_f64().unwrap(),
            r["confidence"]["system_loss"].as_f64().unwrap(),
        );
        assert_eq!(
            r["l2h"]["offloaded"], r["confidence"]["offloaded"],
            "same offload rate"
        );
        assert!(l2h < conf, "{key}: L2H {l2h} vs confidence {conf}");
        assert!(r["oracle"]["system_loss"].as_f64().unwrap() <= l2h);
    }
    assert!(report["gap_closed"]["1,0.25"].as_f64().unwrap() >= 0.5);
    assert!(report["export_max_abs_diff"].as_f64().unwrap() <= 1e-5);
    let meta = json(&v.join("rejector.json"));
    assert_eq!(meta["opset"], 13);
    assert_eq!(meta["score_quantiles"].as_array().unwrap().len(), 101);
    assert_eq!(
        meta["legacy_sha256"].as_str().unwrap(),
        offload_shared::engine::sha256_hex(&std::fs::read(&legacy).unwrap())
    );
    let svg = std::fs::read_to_string(v.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 9);

    // `eval` re-scores the stored pair with the device engine: same L2H figures as training.
    let out = run_ok(
        "cloud-expert",
        &[
            "eval",
            "--repo",
            dir.path().join("repo").to_str().unwrap(),
            "--model",
            "digits",
        ],
    );
    let l2h_line = out
        .lines()
        .skip_while(|l| !l.contains("(1,0.25)"))
        .find(|l| l.trim_start().starts_with("l2h"))
        .unwrap()
        .to_string();
    let loss = report["results"]["1,0.25"]["l2h"]["system_loss"]
        .as_f64()
        .unwrap();
    assert!(
        l2h_line.contains(&format!("{loss:.4}")),
        "{l2h_line} vs {loss}"
    );

    // The device binary makes the same decisions from the bundle directory.
    let lines = run_ok("edge-client", &["decide", "--bundle", v.to_str().unwrap()]);
    assert_eq!(lines.lines().count(), 1797);
}

#[test]
fn exported_rejector_matches_tch_in_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "multiclass");
    let repo = dir.path().join("repo");
    for (model, extra) in [
        ("plain", &[][..]),
        ("agree", &["--rejector-agreement"][..]),
        (
            "plugin",
            &["--mode", "plug-in", "--rejector-arch", "cnn:4/16"][..],
        ),
    ] {
        let mut args = vec!["--epochs", "3", "--grid", "1,0.25"];
        args.extend_from_slice(extra);
        train(dir.path(), &legacy, model, &args);
        let out = dir.path().join(format!("check-{model}"));
        let stdout = run_ok(
            "cloud-expert",
            &[
                "check-export",
                "--repo",
                repo.to_str().unwrap(),
                "--model",
                model,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(stdout.contains("matches tch"), "{stdout}");
        let py = python();
        assert!(py.exists(), "{} missing: run `make setup`", py.display());
        let status = std::process::Command::new(&py)
            .arg(workspace_root().join("scripts/onnxruntime_check.py"))
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "onnxruntime disagrees for {model}");
    }
}

#[test]
fn binary_task_trains_with_the_surrogate() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "odd-even");
    let v = train(
        dir.path(),
        &legacy,
        "oddeven",
        &[
            "--task",
            "odd-even",
            "--rejector-agreement",
            "--grid",
            "1,0.25",
        ],
    );
    let report = json(&v.join("report.json"));
    assert_eq!(report["mode"], "BinarySurrogate");
    assert!(report["training"]["1,0.25"]["alpha"].as_f64().unwrap() > 0.0);
    let r = &report["results"]["1,0.25"];
    assert!(
        r["l2h"]["system_loss"].as_f64().unwrap()
            < r["confidence"]["system_loss"].as_f64().unwrap()
    );
    assert_eq!(json(&v.join("expert.json"))["single_score"], true);
}
