//! Bad input gets a clear error naming the problem, exit code 1, and never a panic.

use system_tests::*;

#[test]
fn malformed_data_files_are_refused_with_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "1,2,0\n3,oops,1\n").unwrap();
    let data = format!("csv:{}", csv.display());
    let err = run_err(
        "cloud-expert",
        &[
            "legacy",
            "--data",
            &data,
            "--out",
            dir.path().join("l.onnx").to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("line 2, column 2") && err.contains("oops"),
        "{err}"
    );
    let err = run_err(
        "cloud-expert",
        &[
            "legacy",
            "--data",
            "npy:/nonexistent/x.npy,/nonexistent/y.npy",
            "--out",
            "x.onnx",
        ],
    );
    assert!(err.contains("/nonexistent/x.npy"), "{err}");
}

#[test]
fn shape_mismatch_between_data_and_legacy_model_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "multiclass");
    let csv = dir.path().join("three.csv");
    std::fs::write(
        &csv,
        (0..60)
            .map(|i| format!("{i},1,2,{}\n", i % 10))
            .collect::<String>(),
    )
    .unwrap();
    let data = format!("csv:{}", csv.display());
    let repo = dir.path().join("repo");
    let err = run_err(
        "cloud-expert",
        &[
            "train",
            "--data",
            &data,
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            legacy.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("64 values") && err.contains("3 values"),
        "{err}"
    );
    // Same features, wrong class count: the binary view against a 10-class legacy model.
    let err = run_err(
        "cloud-expert",
        &[
            "train",
            "--task",
            "odd-even",
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            legacy.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("predicts 10 classes but the task has 2"),
        "{err}"
    );
}

#[test]
fn an_onnx_file_that_is_not_a_classifier_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "multiclass");
    let v = train(
        dir.path(),
        &legacy,
        "digits",
        &["--epochs", "2", "--grid", "1,0.25"],
    );
    let repo = dir.path().join("repo2");
    // A rejector outputs a score per input, not class scores.
    let err = run_err(
        "cloud-expert",
        &[
            "train",
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            v.join("rejector.onnx").to_str().unwrap(),
        ],
    );
    assert!(err.contains("not usable as a classifier"), "{err}");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"definitely not protobuf \xff\xff\xff").unwrap();
    let err = run_err(
        "cloud-expert",
        &[
            "train",
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            junk.to_str().unwrap(),
        ],
    );
    assert!(err.contains("not a loadable ONNX model"), "{err}");
}

#[test]
fn costs_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = legacy(dir.path(), "multiclass");
    let repo = dir.path().join("repo");
    for (flag, val) in [("--ce", "1.5"), ("--c1", "-1"), ("--ce", "NaN")] {
        let arg = format!("{flag}={val}");
        let err = run_err(
            "cloud-expert",
            &[
                "train",
                "--repo",
                repo.to_str().unwrap(),
                "--legacy",
                legacy.to_str().unwrap(),
                &arg,
            ],
        );
        assert!(err.contains("costs"), "{flag} {val}: {err}");
    }
    let err = run_err(
        "cloud-expert",
        &[
            "train",
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            legacy.to_str().unwrap(),
            "--grid",
            "1;x",
        ],
    );
    assert!(err.contains("cost pair"), "{err}");
}
