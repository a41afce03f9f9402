//! The analysis endpoints end to end: `cloud-expert serve` (with the tiny LLM fixture) answers
//! `/v1/analysis/intrinsic-dimension`, cross-checked against scikit-dimension by
//! `tests/python/id_crosscheck.py`; duplicates are reported, bad input gets 422 naming the
//! field, input past the limits 413; `/openapi.json` documents the route.

use std::path::Path;
use system_tests::{bin, curl, post_json, python_check, run_err, run_ok, wait_job, CloudProcess};

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
    // Without a dictionary one is learned; the error falls pass after pass.
    let out = run_ok(
        "cloud-expert",
        &[
            "analyze",
            "sparse-code",
            "--input",
            dir.path().join("signals.npy").to_str().unwrap(),
            "--atoms",
            "64",
            "--method",
            "mod",
            "--iterations",
            "5",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hist = v["dictionary_learning"]["mse_history"].as_array().unwrap();
    assert_eq!(hist.len(), 6);
    assert!(
        hist[5].as_f64().unwrap() < hist[0].as_f64().unwrap(),
        "{hist:?}"
    );
    let err = run_err(
        "cloud-expert",
        &[
            "analyze",
            "sparse-code",
            "--input",
            sig.to_str().unwrap(),
            "--method",
            "svd",
        ],
    );
    assert!(err.contains("--method"), "{err}");
}

/// Signals in R^8 that are exact 2-sparse combinations of the planted atoms `atoms` (unit
/// norm, rows), as JSON rows; deterministic.
fn sparse_signals(atoms: &[[f64; 8]], n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let (a, b) = (i % atoms.len(), (i * 7 + 3) % atoms.len());
            let b = if a == b { (b + 1) % atoms.len() } else { b };
            let (ga, gb) = (1.0 + (i % 5) as f64 * 0.3, -0.5 - (i % 3) as f64 * 0.4);
            let v: Vec<String> = (0..8)
                .map(|t| format!("{:.9}", ga * atoms[a][t] + gb * atoms[b][t]))
                .collect();
            format!("[{}]", v.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

#[test]
fn sparse_codes_over_http_with_a_given_or_a_learned_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path(), &[]);
    let base = cloud.http_url();
    let url = format!("{base}/v1/analysis/sparse-code");
    // The standard basis of R^8 plus two mixed unit atoms.
    let mut atoms: Vec<[f64; 8]> = (0..8)
        .map(|k| {
            let mut a = [0.0; 8];
            a[k] = 1.0;
            a
        })
        .collect();
    atoms.push([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    atoms.push([0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 0.5, -0.5]);
    let dict: Vec<String> = atoms
        .iter()
        .map(|a| {
            format!(
                "[{}]",
                a.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    let dict = format!("[{}]", dict.join(","));
    let signals = sparse_signals(&atoms[..8], 40);
    let (code, v) = post_json(
        &url,
        &format!(r#"{{"signals": {signals}, "dictionary": {dict}, "sparsity": 2}}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["mse"].as_f64().unwrap() < 1e-12, "{v}");
    assert_eq!(v["codes"].as_array().unwrap().len(), 40);
    assert_eq!(v["atom_usage"].as_array().unwrap().len(), 10);
    assert_eq!(v["dead_atoms"], 2, "the mixed atoms are never needed: {v}");

    // Learned: K-SVD from scratch recovers a code as good as the planted one (a job).
    let planted: Vec<[f64; 8]> = (0..6)
        .map(|k| {
            let mut a = [0.0; 8];
            for (t, x) in a.iter_mut().enumerate() {
                *x = (((k * 8 + t) * 37 % 17) as f64 - 8.0) / 8.0;
            }
            let n = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            a.iter_mut().for_each(|x| *x /= n);
            a
        })
        .collect();
    let signals = sparse_signals(&planted, 300);
    for method in ["ksvd", "mod", "online"] {
        let (code, v) = post_json(
            &url,
            &format!(
                r#"{{"signals": {signals}, "sparsity": 2, "return_dictionary": true,
                    "learn": {{"method": "{method}", "atoms": 6, "iterations": 30, "seed": 3, "batch_size": 50}}}}"#
            ),
        );
        assert_eq!(code, 202, "{v}");
        let job = wait_job(&base, v["job_id"].as_str().unwrap());
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(
            (job["done"].as_u64(), job["total"].as_u64()),
            (Some(30), Some(30))
        );
        let r = &job["result"];
        let hist = r["dictionary_learning"]["mse_history"].as_array().unwrap();
        let (first, last) = (
            hist[0].as_f64().unwrap(),
            hist.last().unwrap().as_f64().unwrap(),
        );
        assert!(last < first / 10.0, "{method}: {first} -> {last}");
        assert!((r["mse"].as_f64().unwrap() - last).abs() < 1e-12);
        let d = r["dictionary"].as_array().unwrap();
        assert_eq!(d.len(), 6);
        for atom in d {
            let n: f64 = atom
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap().powi(2))
                .sum();
            assert!((n - 1.0).abs() < 1e-9);
        }
    }

    // Bad input, naming the field.
    for (body, field) in [
        (format!(r#"{{"signals": [[1, 0], [0, 1], [1, 1]], "dictionary": {dict}}}"#), "dictionary"),
        (r#"{"signals": [[1, 0], [0, 1], [1, 1]], "sparsity": 9, "learn": {"atoms": 4}}"#.to_string(), "sparsity"),
        (r#"{"signals": [[1, 0], [0, 1], [1]], "dictionary": [[1, 0], [0, 1]]}"#.to_string(), "signals"),
        (r#"{"signals": [[1, 0], [0, 1], [1, 1]], "dictionary": [[1, 1], [0, 1]], "sparsity": 1}"#.to_string(), "dictionary"),
    ] {
        let (code, v) = post_json(&url, &body);
        assert_eq!(code, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (code, v) = post_json(
        &url,
        r#"{"signals": [[1, 0], [0, 1], [1, 1]], "learn": {"method": "pca"}}"#,
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("pca"),
        "{v}"
    );
}

#[test]
fn stratification_matches_scikit_learn_scores_and_scikit_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path(), &[]);
    let out = python_check(
        "tests/python/stratify_crosscheck.py",
        &[cloud.http_url().as_ref()],
    );
    println!("{out}");
    let url = format!("{}/v1/analysis/stratify", cloud.http_url());
    let (code, v) = post_json(&url, r#"{"embeddings": [[1, 2], [3, 4]]}"#);
    assert_eq!(code, 202, "{v}");
    let job = wait_job(&cloud.http_url(), v["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["field"], "embeddings", "{job}");
    let (code, v) = post_json(
        &url,
        r#"{"embeddings": [[1, 2]], "params": {"experts": "many"}}"#,
    );
    assert_eq!(code, 422, "{v}");
}

#[test]
fn texts_are_embedded_by_the_served_llm_like_transformers_and_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let lora = format!("lora={}", dir.path().join("adapters/lora").display());
    let cloud = start(dir.path(), &["--adapter", &lora]);
    let base = cloud.http_url();
    // Spectra of an adapter's updates: scale B A of rank 4 for q and v of both blocks.
    let (code, v) = post_json(
        &format!("{base}/v1/analysis/spectrum"),
        r#"{"model": "lora", "options": {"eigenvalues": true}}"#,
    );
    assert_eq!(code, 202, "{v}");
    let job = wait_job(&base, v["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    let layers = job["result"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4, "{job}");
    assert!(
        layers[0]["name"]
            .as_str()
            .unwrap()
            .ends_with("q_proj.weight.delta"),
        "{}",
        layers[0]["name"]
    );
    for l in layers {
        let ev: Vec<f64> = serde_json::from_value(l["eigenvalues"].clone()).unwrap();
        let top = ev.iter().cloned().fold(0.0, f64::max);
        let rank = ev.iter().filter(|&&e| e > 1e-8 * top).count();
        assert_eq!(rank, 4, "{}: {ev:?}", l["name"]);
    }
    // The same from the adapter directory offline.
    let out = run_ok(
        "cloud-expert",
        &[
            "analyze",
            "spectrum",
            "--input",
            dir.path().join("adapters/lora").to_str().unwrap(),
        ],
    );
    let offline: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        offline["layers"][1]["stable_rank"],
        layers[1]["stable_rank"]
    );
    assert_eq!(offline["layers"][1]["lambda_max"], layers[1]["lambda_max"]);
    let out = python_check(
        "tests/python/embed_crosscheck.py",
        &[
            base.as_ref(),
            dir.path().as_os_str(),
            "tiny.gguf".as_ref(),
            "2".as_ref(),
        ],
    );
    println!("{out}");
    // Intrinsic dimension of texts: a job whose answer equals the one for their embeddings.
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "\"item {i} costs {} coins and weighs {} grams\"",
                i * 7 % 13,
                i * i % 17
            )
        })
        .collect();
    let texts = texts.join(",");
    let (code, emb) = post_json(
        &format!("{base}/v1/analysis/embed"),
        &format!(r#"{{"texts": [{texts}], "embedding": {{"layer": 1}}}}"#),
    );
    assert_eq!(code, 200, "{emb}");
    let (code, v) = post_json(
        &format!("{base}/v1/analysis/intrinsic-dimension"),
        &format!(r#"{{"texts": [{texts}], "embedding": {{"layer": 1}}, "params": {{"k": 5}}}}"#),
    );
    assert_eq!(code, 202, "{v}");
    let job = wait_job(&base, v["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    let (code, direct) = post_json(
        &format!("{base}/v1/analysis/intrinsic-dimension"),
        &format!(
            r#"{{"embeddings": {}, "params": {{"k": 5}}}}"#,
            emb["embeddings"]
        ),
    );
    assert_eq!(code, 200, "{direct}");
    assert_eq!(job["result"]["estimates"], direct["estimates"]);
    // Bad layer, empty text, both inputs.
    for (body, field) in [
        (
            r#"{"texts": ["a"], "embedding": {"layer": 3}}"#,
            "embedding.layer",
        ),
        (r#"{"texts": ["a", ""]}"#, "texts[1]"),
        (
            r#"{"texts": ["a"], "embedding": {"model": "other"}}"#,
            "embedding.model",
        ),
    ] {
        let (code, v) = post_json(&format!("{base}/v1/analysis/embed"), body);
        assert_eq!(code, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (code, v) = post_json(
        &format!("{base}/v1/analysis/intrinsic-dimension"),
        r#"{"texts": ["a"], "embeddings": [[1, 2]]}"#,
    );
    assert_eq!(
        (code, v["error"]["field"].as_str()),
        (422, Some("texts")),
        "{v}"
    );
}
