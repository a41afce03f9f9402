//! Weight spectra end to end: `cloud-expert analyze spectrum` and `/v1/analysis/spectrum`
//! against WeightWatcher and powerlaw (`tests/python/spectrum_crosscheck.py`); a served
//! expert's layers as a job with drift from its first version; job progress, cancellation
//! and the job table; bad input named with its field.

use system_tests::post_json_file as post;
use system_tests::{bin, curl, digits_repo, python_check, run_ok, train, wait_job, CloudProcess};

fn get(url: &str) -> (u16, serde_json::Value) {
    let (code, text) = curl(&[url]);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A deterministic `rows x cols` matrix as JSON rows.
fn matrix_json(rows: usize, cols: usize, seed: u64) -> String {
    let mut s = seed;
    let rows: Vec<String> = (0..rows)
        .map(|_| {
            let r: Vec<String> = (0..cols)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    format!("{:.5}", ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5)
                })
                .collect();
            format!("[{}]", r.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// `cloud-expert analyze spectrum` of version 2 of the repository's digits expert.
fn offline_spectrum(repo: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let input = repo.join("digits/2/expert.safetensors");
    let mut args = vec!["analyze", "spectrum", "--input", input.to_str().unwrap()];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok("cloud-expert", &args)).unwrap()
}

#[test]
fn spectra_match_weightwatcher_and_served_experts_are_analysed_as_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, repo) = digits_repo(dir.path(), "2");
    train(dir.path(), &legacy, "digits", &["--epochs", "4"]);
    let cloud = CloudProcess::start(
        &repo,
        "127.0.0.1:0",
        &[
            "--analysis-max-concurrent",
            "1",
            "--analysis-max-values",
            "5000000",
        ],
    );
    let base = cloud.http_url();
    let work = dir.path().join("cross");
    std::fs::create_dir_all(&work).unwrap();
    let out = python_check(
        "tests/python/spectrum_crosscheck.py",
        &[
            bin("cloud-expert").as_os_str(),
            work.as_os_str(),
            base.as_ref(),
        ],
    );
    println!("{out}");

    // A served expert, every layer, with drift from version 1: a job.
    let url = format!("{base}/v1/analysis/spectrum");
    let (code, v) = post(
        dir.path(),
        &url,
        r#"{"model": "digits", "initial_version": "1", "options": {"svg": true}}"#,
    );
    assert_eq!(code, 202, "{v}");
    let done = wait_job(&base, v["job_id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{}", done["error"]);
    assert_eq!(done["kind"], "spectrum");
    let layers = done["result"]["layers"].as_array().unwrap();
    assert!(layers.len() >= 2);
    assert_eq!(done["done"].as_u64(), Some(layers.len() as u64));
    assert_eq!(done["total"].as_u64(), Some(layers.len() as u64));
    let offline = offline_spectrum(
        &repo,
        &[
            "--initial",
            repo.join("digits/1/expert.safetensors").to_str().unwrap(),
        ],
    );
    let offline = offline["layers"].as_array().unwrap();
    assert_eq!(layers.len(), offline.len());
    for (served, off) in layers.iter().zip(offline) {
        assert_eq!(served["name"], off["name"]);
        assert_eq!(served["power_law"]["n_tail"], off["power_law"]["n_tail"]);
        let (a, b) = (&served["power_law"]["alpha"], &off["power_law"]["alpha"]);
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9,
            "{a} vs {b}"
        );
        let (a, b) = (&served["drift"]["frobenius"], &off["drift"]["frobenius"]);
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9,
            "{a} vs {b}"
        );
        assert!(a.as_f64().unwrap() > 0.0);
        assert!(served["svg"].as_str().unwrap().starts_with("<svg"));
    }

    // Spike-data alignment: a direction for the served expert's first layer (an all-ones
    // input direction), served and offline alike.
    let (name, cols) = (
        layers[0]["name"].as_str().unwrap(),
        layers[0]["shape"][1].as_u64().unwrap() as usize,
    );
    let directions = format!(r#"[{{"name": "{name}", "values": {:?}}}]"#, vec![1.0; cols]);
    let (code, v) = post(
        dir.path(),
        &url,
        &format!(r#"{{"model": "digits", "directions": {directions}}}"#),
    );
    assert_eq!(code, 202, "{v}");
    let done = wait_job(&base, v["job_id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{}", done["error"]);
    let aligned = &done["result"]["layers"][0]["alignment"];
    assert_eq!(aligned["side"], "input", "{aligned}");
    let top = aligned["top"].as_f64().unwrap();
    assert!(top > 0.0 && top <= 1.0 + 1e-12, "{aligned}");
    assert_eq!(
        aligned["spikes"].as_array().unwrap().len(),
        done["result"]["layers"][0]["marchenko_pastur"]["spikes"]
            .as_array()
            .unwrap()
            .len()
    );
    assert!(done["result"]["layers"][1]["alignment"].is_null());
    let dfile = dir.path().join("directions.json");
    std::fs::write(&dfile, &directions).unwrap();
    let offline = offline_spectrum(&repo, &["--directions", dfile.to_str().unwrap()]);
    let off = offline["layers"][0]["alignment"]["top"].as_f64().unwrap();
    assert!((off - top).abs() < 1e-9, "{off} vs {top}");

    // A served model's directions are checked before any layer is computed: the job fails
    // at once, naming the field.
    let (code, v) = post(
        dir.path(),
        &url,
        r#"{"model": "digits", "directions": [{"name": "fc9.weight", "values": [1]}]}"#,
    );
    assert_eq!(code, 202, "{v}");
    let failed = wait_job(&base, v["job_id"].as_str().unwrap());
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["field"], "directions[0].name", "{failed}");
    assert_eq!(failed["done"], 0, "{failed}");

    // Cancellation: one permit; a long job runs (or waits) and a second waits behind it.
    let big: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"name": "m{i}", "values": {}}}"#,
                matrix_json(1000, 1000, i)
            )
        })
        .collect();
    let body = format!(
        r#"{{"matrices": [{}], "options": {{"randomize": true}}, "job": true}}"#,
        big.join(",")
    );
    let (code, a) = post(dir.path(), &url, &body);
    assert_eq!(code, 202, "{a}");
    let (code, b) = post(dir.path(), &url, &body);
    assert_eq!(code, 202, "{b}");
    let (a, b) = (a["job_id"].as_str().unwrap(), b["job_id"].as_str().unwrap());
    let (code, bv) = curl(&["-X", "DELETE", &format!("{base}/v1/analysis/jobs/{b}")]);
    assert_eq!(code, 200, "{bv}");
    let (code, _) = curl(&["-X", "DELETE", &format!("{base}/v1/analysis/jobs/{a}")]);
    assert_eq!(code, 200);
    for id in [a, b] {
        let v = wait_job(&base, id);
        assert_eq!(v["state"], "cancelled", "{v}");
        assert!(v["done"].as_u64().unwrap() < 4, "{v}");
        assert!(v.get("result").is_none(), "{v}");
    }
    // The permit is free again: a small synchronous request answers.
    let (code, v) = post(
        dir.path(),
        &url,
        &format!(
            r#"{{"matrices": [{{"name": "s", "values": {}}}]}}"#,
            matrix_json(40, 30, 9)
        ),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["layers"][0]["num_evals"], 30);
    assert_eq!(v["layers"][0]["shape"], serde_json::json!([40, 30]));

    // Bad input, each naming its field or cause.
    for (body, code_want, field) in [
        (
            r#"{"matrices": [{"name": "r", "values": [[1, 2], [3]]}]}"#,
            422,
            Some("matrices[0].values"),
        ),
        (
            r#"{"matrices": [{"name": "t", "values": [[1, 2, 3]]}]}"#,
            422,
            Some("matrices[t]"),
        ),
        (r#"{"matrices": []}"#, 422, Some("matrices")),
        (r#"{"model": "nope"}"#, 404, Some("model")),
        (r#"{"model": "digits", "version": "9"}"#, 404, Some("model")),
        (
            r#"{"model": "digits", "matrices": [{"name": "a", "values": [[1, 2], [3, 4]]}]}"#,
            422,
            Some("matrices"),
        ),
        (
            r#"{"matrices": [{"name": "a", "values": [[1, 2], [3, 4]]}], "options": {"colour": 1}}"#,
            422,
            None,
        ),
        (
            r#"{"matrices": [{"name": "a", "values": [[1, 2], [3, 4]]}], "directions": [{"name": "b", "values": [1, 0]}]}"#,
            422,
            Some("directions[0].name"),
        ),
        (
            r#"{"matrices": [{"name": "a", "values": [[1, 2], [3, 4]]}], "directions": [{"name": "a", "values": [1, 0, 0]}]}"#,
            422,
            Some("directions[0].values"),
        ),
    ] {
        let (code, v) = post(dir.path(), &url, body);
        assert_eq!(code, code_want, "{body}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{body}: {v}");
    }
    let (code, v) = post(
        dir.path(),
        &url,
        &format!(
            r#"{{"matrices": [{{"name": "huge", "values": {}}}]}}"#,
            matrix_json(2300, 2200, 1)
        ),
    );
    assert_eq!(code, 413, "{v}");
    let (code, v) = get(&format!("{base}/v1/analysis/jobs/job-404-0"));
    assert_eq!(
        (code, v["error"]["field"].as_str()),
        (404, Some("id")),
        "{v}"
    );
    let (code, doc) = get(&format!("{base}/openapi.json"));
    assert_eq!(code, 200);
    assert!(
        doc["paths"]["/v1/analysis/spectrum"]["post"].is_object(),
        "{doc}"
    );
    assert!(
        doc["paths"]["/v1/analysis/jobs/{id}"]["delete"].is_object(),
        "{doc}"
    );
    // Every schema the document refers to is in it.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "openapi.json refers to {r}, which it does not define"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["LayerSpectrum"]["properties"]["alignment"]["oneOf"][1]
            ["$ref"],
        "#/components/schemas/Alignment"
    );
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_string()),
                    _ => collect_refs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}
