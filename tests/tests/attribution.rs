//! pNTK data attribution end to end: `cloud-expert analyze attribution` on a trained digits
//! expert cross-checked against torch.func, scikit-learn and SciPy
//! (`tests/python/attribution_crosscheck.py`); `/v1/analysis/attribution` as a job for a
//! served expert (its training set from `expert.json`, the test split or given queries), the
//! flipped-label check, limits and errors named with their field.

use std::path::Path;
use system_tests::post_json_file as post;
use system_tests::{curl, digits_repo, python_check, run_ok, wait_job, CloudProcess};

/// Submits an attribution job and waits for its final view.
fn job(dir: &Path, base: &str, body: &str) -> serde_json::Value {
    let (code, v) = post(dir, &format!("{base}/v1/analysis/attribution"), body);
    assert_eq!(code, 202, "{v}");
    wait_job(base, v["job_id"].as_str().unwrap())
}

#[test]
fn attribution_matches_torch_func_and_scikit_learn_and_runs_as_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let (_legacy, repo) = digits_repo(dir.path(), "6");
    let version = repo.join("digits").join("1");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Offline, cross-checked: pNTK with a label-fitted surrogate, and trNTK.
    let common = [
        "analyze",
        "attribution",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        "digits",
        "--max-train",
        "300",
    ];
    let mut a = common.to_vec();
    let (pd, pr, td) = (p("pntk.json"), p("pntk-report.json"), p("trntk.json"));
    a.extend([
        "--targets",
        "labels",
        "--l2",
        "0.001",
        "--surrogate-tol",
        "1e-9",
        "--dump",
        &pd,
        "--json",
        &pr,
    ]);
    run_ok("cloud-expert", &a);
    let mut b = common.to_vec();
    b.extend(["--kernel", "trntk", "--dump", &td]);
    run_ok("cloud-expert", &b);
    let out = python_check(
        "tests/python/attribution_crosscheck.py",
        &[
            version.as_os_str(),
            pd.as_ref(),
            pr.as_ref(),
            td.as_ref(),
            "0.001".as_ref(),
        ],
    );
    eprintln!("{out}");

    // Served: the whole training split against the test split.
    let cloud = CloudProcess::start(&repo, "127.0.0.1:0", &["--analysis-max-values", "2000000"]);
    let base = cloud.http_url();
    let v = job(
        dir.path(),
        &base,
        r#"{"model": "digits", "params": {"top_k": 3}}"#,
    );
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = &v["result"];
    assert_eq!(r["kernel"]["n_train"], 1079, "{}", r["kernel"]);
    assert_eq!(r["kernel"]["n_queries"], 359);
    assert_eq!(r["kernel"]["method"], "factored");
    let s = &r["surrogate"];
    assert!(s["kendall_tau"].as_f64().unwrap() > 0.3, "{s}");
    assert!(s["class_agreement"].as_f64().unwrap() > 0.9, "{s}");
    let q = &r["queries"][0];
    assert_eq!(q["top"].as_array().unwrap().len(), 3, "{q}");
    let k0 = q["top"][0]["kernel"].as_f64().unwrap();
    assert!((-1.0..=1.0 + 1e-9).contains(&k0), "{q}");
    // The strongest support of a query mostly shares the network's class.
    let same = r["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["top"][0]["label"] == q["network_class"])
        .count();
    assert!(same * 10 >= 359 * 9, "{same} of 359");

    // Given queries with labels, a projected trNTK.
    let queries: Vec<Vec<f64>> = (0..4).map(|i| vec![f64::from(i); 64]).collect();
    let body = serde_json::json!({"model": "digits", "queries": queries,
        "query_labels": [0, 1, 2, 3],
        "params": {"kernel": "trntk", "projection": 512, "max_train": 200}});
    let v = job(dir.path(), &base, &body.to_string());
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"]["kernel"]["n_queries"], 4);
    assert_eq!(v["result"]["kernel"]["projection"], 512);
    assert_eq!(v["result"]["queries"][2]["label"], 2);

    // The flipped-label check on the expert's data and architecture.
    let v = job(
        dir.path(),
        &base,
        r#"{"model": "digits", "poison_check": {"fraction": 0.1, "epochs": 60}}"#,
    );
    assert_eq!(v["state"], "succeeded", "{v}");
    let pk = &v["result"]["precision_at_k"];
    eprintln!(
        "poison check: {pk} memorised {}",
        v["result"]["flipped_memorised"]
    );
    assert_eq!(v["result"]["n_flipped"], 108);
    assert!(pk["attribution"].as_f64().unwrap() > 0.5, "{pk}");

    // Errors name their field; a kernel past the limit says how to shrink it.
    let url = format!("{base}/v1/analysis/attribution");
    for (body, code, field) in [
        (r#"{"model": "nope"}"#.to_string(), 404, "model"),
        (
            r#"{"model": "digits", "version": "9"}"#.into(),
            404,
            "model",
        ),
        (
            r#"{"model": "digits", "queries": [[1, 2], [3]]}"#.into(),
            422,
            "queries[1]",
        ),
        (
            r#"{"model": "digits", "query_labels": [1]}"#.into(),
            422,
            "query_labels",
        ),
    ] {
        let (c, v) = post(dir.path(), &url, &body);
        assert_eq!(
            (c, v["error"]["field"].as_str()),
            (code, Some(field)),
            "{body}: {v}"
        );
    }
    let (c, v) = post(
        dir.path(),
        &url,
        r#"{"model": "digits", "params": {"kernel": "ntk"}}"#,
    );
    assert_eq!(c, 422, "{v}");
    let v = job(
        dir.path(),
        &base,
        r#"{"model": "digits", "queries": [[0.5, 1]]}"#,
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["field"], "queries", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 features"),
        "{v}"
    );
    let cloud_small =
        CloudProcess::start(&repo, "127.0.0.1:0", &["--analysis-max-values", "100000"]);
    let small = cloud_small.http_url();
    let v = job(dir.path(), &small, r#"{"model": "digits"}"#);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_train"),
        "{v}"
    );
    let v = job(
        dir.path(),
        &small,
        r#"{"model": "digits", "params": {"max_train": 150}}"#,
    );
    assert_eq!(v["state"], "succeeded", "{v}");
    let (code, doc) = curl(&[&format!("{base}/openapi.json")]);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/v1/analysis/attribution",
        "/v1/analysis/stratify",
        "/v1/analysis/sparse-code",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
}
