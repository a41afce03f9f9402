//! The analysis endpoints end to end: `cloud-expert serve` (with the tiny LLM fixture) answers
//! `/v1/analysis/intrinsic-dimension`, cross-checked against scikit-dimension by
//! `tests/python/id_crosscheck.py`; duplicates are reported, bad input gets 422 naming the
//! field, input past the limits 413; `/openapi.json` documents the route.

use std::path::Path;
use system_tests::{bin, curl, post_json, python_check, run_err, run_ok, CloudProcess};

fn start(dir: &Path, extra: &[&str]) -> CloudProcess {
    run_ok(
        "cloud-expert",
        &["llm-fixture", "--out", dir.to_str().unwrap()],
    );
    std::fs::create_dir_all(dir.join("repo")).unwrap();
    let m = dir.join("tiny.gguf");
    let mut args = vec!["--llm", m.to_str().unwrap()];
    args.extend_from_slice(extra);
    CloudProcess::start(&dir.join("repo"), "127.0.0.1:0", &args)
}

#[test]
fn intrinsic_dimension_matches_scikit_dimension_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path(), &["--analysis-max-points", "5000"]);
    python_check(
        "tests/python/id_crosscheck.py",
        &[cloud.http_url().as_ref()],
    );
    let url = format!("{}/v1/analysis/intrinsic-dimension", cloud.http_url());
    // Duplicates are dropped and reported.
    let rows: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "[{}, {}, {}]",
                i % 25,
                (i % 25) * (i % 25) % 7,
                (i % 25) % 3
            )
        })
        .collect();
    let (code, dup) = post_json(
        &url,
        &format!(
            r#"{{"embeddings": [{}], "params": {{"k": 5}}}}"#,
            rows.join(",")
        ),
    );
    assert_eq!(code, 200, "{dup}");
    assert_eq!(
        (dup["n_points"].as_u64(), dup["n_dropped"].as_u64()),
        (Some(25), Some(5)),
        "{dup}"
    );
    // Bad input: ragged rows, a bad parameter, unknown fields; too many points.
    for (body, field) in [
        (r#"{"embeddings": [[1, 2], [3], [4, 5]]}"#, "embeddings"),
        (
            r#"{"embeddings": [[1, 2], [3, 4], [4, 5]], "params": {"alpha_ratio": 2}}"#,
            "alpha_ratio",
        ),
        (
            r#"{"embeddings": [[1, 2], [3, 4], [4, 5]], "params": {"k": 5}}"#,
            "k",
        ),
    ] {
        let (code, v) = post_json(&url, body);
        assert_eq!(code, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (code, v) = post_json(&url, r#"{"embeddings": [[1, 2]], "colour": 1}"#);
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("colour"),
        "{v}"
    );
    let big: Vec<&str> = vec!["[1]"; 5001];
    let (code, v) = post_json(&url, &format!(r#"{{"embeddings": [{}]}}"#, big.join(",")));
    assert_eq!(code, 413, "{v}");
    // Offline: the same analysis from a CSV file.
    let csv = dir.path().join("points.csv");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("{}, {}, {}", i % 25, (i % 25) * (i % 25) % 7, (i % 25) % 3))
        .collect();
    std::fs::write(&csv, lines.join("\n")).unwrap();
    let out = run_ok(
        "cloud-expert",
        &[
            "analyze",
            "intrinsic-dimension",
            "--input",
            csv.to_str().unwrap(),
            "--k",
            "5",
        ],
    );
    let offline: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        offline["estimates"], dup["estimates"],
        "offline equals served"
    );
    let (code, doc) = curl(&[&format!("{}/openapi.json", cloud.http_url())]);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(
        doc["paths"]["/v1/analysis/intrinsic-dimension"]["post"].is_object(),
        "{doc}"
    );
}

#[test]
fn batch_omp_matches_scikit_learn_orthogonal_mp_gram() {
    let dir = tempfile::tempdir().unwrap();
    python_check(
        "tests/python/omp_crosscheck.py",
        &[bin("cloud-expert").as_os_str(), dir.path().as_os_str()],
    );
    // A dictionary without unit-norm atoms is refused, naming the atom.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[[1, 1], [0, 1], [1, 0]]").unwrap();
    let sig = dir.path().join("sig.json");
    std::fs::write(&sig, "[[1, 0], [0, 1], [1, 1]]").unwrap();
    let err = run_err(
        "cloud-expert",
        &[
            "analyze",
            "sparse-code",
            "--input",
            sig.to_str().unwrap(),
            "--dictionary",
            bad.to_str().unwrap(),
            "--sparsity",
            "1",
        ],
    );
    assert!(err.contains("atom 0 has norm 1.414214"), "{err}");
}
