//! Production serving through real clients: Open Inference Protocol v2 driven by `tritonclient`
//! (gRPC and HTTP), the bad-input table over both protocols, and limits with their own statuses
//! and metrics. Fleet telemetry is in `telemetry.rs`.

use offload_proto::inference as ipb;
use offload_proto::v1 as opb;
use std::path::PathBuf;
use std::sync::OnceLock;
use system_tests::*;
use tonic::Code;

/// Legacy model and trained repository shared by this file's tests.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (legacy, repo) = digits_repo(dir.path(), "20");
        (dir, legacy, repo)
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn v2_request(shape: Vec<i64>, datatype: &str, raw: Vec<u8>) -> ipb::ModelInferRequest {
    ipb::ModelInferRequest {
        model_name: "digits".into(),
        inputs: vec![ipb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn tritonclient_grpc_and_http_answers_match_the_offload_client() {
    let (dir, _, repo) = fixture();
    let cloud = CloudProcess::start(repo, "127.0.0.1:0", &[]);
    let data = offload_shared::dataset::load_digits().unwrap();
    let n = 24;
    let inputs: Vec<Vec<f32>> = (0..n).map(|i| data.row(i).to_vec()).collect();
    // Reference values from the project's own protocol, one input per request, as devices send.
    let expected: Vec<Vec<f32>> = rt().block_on(async {
        let mut c = opb::expert_client::ExpertClient::connect(cloud.url())
            .await
            .unwrap();
        let mut out = Vec::new();
        for x in &inputs {
            let r = c
                .infer(opb::InferRequest {
                    model: "digits".into(),
                    input: Some(offload_shared::wire::encode_f32(x, &[1, 1, 8, 8])),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            out.push(r.probabilities);
        }
        out
    });
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!({
            "inputs": inputs, "probabilities": expected, "input_shape": [1, 8, 8], "version": "1",
        })
        .to_string(),
    )
    .unwrap();
    let script = workspace_root().join("tests/python/oip_tritonclient.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([&cloud.addr, &cloud.http, "digits", cases.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // Every protocol's requests are counted by method, model and status.
    let (code, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    assert_eq!(code, 200);
    for series in [
        r#"cloud_requests_total{method="ModelInfer",model="digits",protocol="v2-grpc",status="ok"}"#,
        r#"cloud_requests_total{method="ModelInfer",model="digits",protocol="v2-rest",status="ok"}"#,
        r#"cloud_requests_total{method="Infer",model="digits",protocol="offload",status="ok"}"#,
        r#"cloud_requests_total{method="ModelInfer",model="_unknown",protocol="v2-grpc",status="not_found"}"#,
    ] {
        assert!(
            metric(&metrics, series).unwrap_or(0.0) >= 1.0,
            "{series} missing:\n{metrics}"
        );
    }
    assert!(metrics.contains("cloud_request_duration_seconds_bucket"));
    assert!(metrics.contains("cloud_batch_rows_bucket"));
    assert!(metrics.contains(r#"cloud_queue_depth{model="digits"} 0"#));
}

#[test]
fn bad_input_gets_its_own_status_over_rest_and_grpc() {
    let (_, _, repo) = fixture();
    let cloud = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &["--max-message-bytes", "65536", "--max-rows", "4"],
    );
    let infer = format!("{}/v2/models/digits/infer", cloud.http_url());
    let row: Vec<f32> = (0..64).map(|i| (i % 16) as f32).collect();
    let json = |shape: &str, dtype: &str, data: &str| {
        format!(
            r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{dtype}","data":{data}}}]}}"#
        )
    };
    let good = json("[1,64]", "FP32", &format!("{row:?}"));
    let nan_bin = {
        let mut v = row.clone();
        v[5] = f32::NAN;
        f32_bytes(&v)
    };
    let dir = tempfile::tempdir().unwrap();
    let binary_body = |name: &str, size: usize, tail: &[u8]| {
        let header = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
        );
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(tail);
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        (p, header.len())
    };
    let (nan_file, nan_hdr) = binary_body("nan.bin", 256, &nan_bin);
    let (trunc_file, trunc_hdr) = binary_body("trunc.bin", 256, &nan_bin[..100]);
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        json(
            "[1,64]",
            "FP32",
            &format!("[{}]", vec!["1.0"; 40_000].join(",")),
        ),
    )
    .unwrap();
    let five_rows = json(
        "[5,64]",
        "FP32",
        &format!(
            "{:?}",
            [
                row.clone(),
                row.clone(),
                row.clone(),
                row.clone(),
                row.clone()
            ]
            .concat()
        ),
    );
    let post = |body: &str| curl(&["-X", "POST", &infer, "-d", body]);
    let post_file = |file: &PathBuf, hdr: Option<usize>| {
        let mut args = vec![
            "-X".to_string(),
            "POST".into(),
            infer.clone(),
            "--data-binary".into(),
            format!("@{}", file.display()),
        ];
        if let Some(h) = hdr {
            args.push("-H".into());
            args.push(format!("Inference-Header-Content-Length: {h}"));
        }
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let cases: Vec<(&str, (u16, String), u16, &str)> = vec![
        ("good request", post(&good), 200, "probabilities"),
        (
            "wrong dtype",
            post(&json("[1,64]", "BYTES", &format!("{row:?}"))),
            400,
            "inputs[0].datatype",
        ),
        (
            "wrong shape",
            post(&json("[1,63]", "FP32", &format!("{:?}", &row[..63]))),
            400,
            "inputs[0].shape",
        ),
        (
            "data shorter than shape",
            post(&json("[1,64]", "FP32", "[1,2,3]")),
            400,
            "3 elements",
        ),
        (
            "string in data",
            post(&json("[1,64]", "FP32", r#"["a"]"#)),
            400,
            "expected numbers in (nested) arrays",
        ),
        (
            "NaN in binary data",
            post_file(&nan_file, Some(nan_hdr)),
            400,
            "not finite",
        ),
        (
            "truncated binary data",
            post_file(&trunc_file, Some(trunc_hdr)),
            400,
            "binary_data_size",
        ),
        (
            "header length beyond body",
            curl(&[
                "-X",
                "POST",
                &infer,
                "-H",
                "Inference-Header-Content-Length: 99999",
                "-d",
                &good,
            ]),
            400,
            "exceeds the body",
        ),
        (
            "malformed JSON",
            post("{\"inputs\": [}"),
            400,
            "malformed request body",
        ),
        (
            "unknown output",
            post(&good.replace("}]}", r#"}],"outputs":[{"name":"logits"}]}"#)),
            400,
            "outputs[0].name",
        ),
        (
            "two inputs",
            post(&format!(
                r#"{{"inputs":[{0},{0}]}}"#,
                &good[11..good.len() - 2]
            )),
            400,
            "exactly one",
        ),
        ("too many rows", post(&five_rows), 422, "limit of 4"),
        (
            "oversized body",
            post_file(&big, None),
            413,
            "exceeds the limit",
        ),
        (
            "unknown model",
            curl(&["-X", "POST", &infer.replace("digits", "nope"), "-d", &good]),
            404,
            "no model named `nope`",
        ),
        (
            "unknown version",
            curl(&[
                "-X",
                "POST",
                &infer.replace("digits/infer", "digits/versions/7/infer"),
                "-d",
                &good,
            ]),
            404,
            "version `7`",
        ),
        (
            "unknown endpoint",
            curl(&[&format!("{}/v2/nothing", cloud.http_url())]),
            404,
            "no such endpoint",
        ),
    ];
    for (name, (code, body), want, text) in &cases {
        assert_eq!(code, want, "{name}: {body}");
        assert!(body.contains(text), "{name}: {body:?} lacks {text:?}");
        if *want != 200 {
            let v: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{name}: not JSON: {body}"));
            assert!(v["error"].is_string(), "{name}: {body}");
        }
    }
    // gRPC: the same mistakes over inference.GRPCInferenceService.
    let codes: Vec<(&str, Code, String)> = rt().block_on(async {
        let mut c =
            ipb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(cloud.url())
                .await
                .unwrap();
        let mut nan = row.clone();
        nan[0] = f32::INFINITY;
        let mut two = v2_request(vec![1, 64], "FP32", f32_bytes(&row));
        two.inputs.push(two.inputs[0].clone());
        let mut unknown = v2_request(vec![1, 64], "FP32", f32_bytes(&row));
        unknown.model_name = "nope".into();
        let reqs = vec![
            ("good", v2_request(vec![1, 64], "FP32", f32_bytes(&row))),
            (
                "wrong dtype",
                v2_request(vec![1, 64], "BYTES", f32_bytes(&row)),
            ),
            (
                "wrong shape",
                v2_request(vec![2, 64], "FP32", f32_bytes(&row)),
            ),
            (
                "truncated raw",
                v2_request(vec![1, 64], "FP32", f32_bytes(&row)[..255].to_vec()),
            ),
            (
                "infinite value",
                v2_request(vec![1, 64], "FP32", f32_bytes(&nan)),
            ),
            ("two inputs", two),
            (
                "too many rows",
                v2_request(
                    vec![5, 64],
                    "FP32",
                    f32_bytes(
                        &[
                            row.clone(),
                            row.clone(),
                            row.clone(),
                            row.clone(),
                            row.clone(),
                        ]
                        .concat(),
                    ),
                ),
            ),
            (
                "oversized message",
                v2_request(vec![1, 64], "FP32", vec![0; 70_000]),
            ),
            ("unknown model", unknown),
        ];
        let mut out = Vec::new();
        for (name, r) in reqs {
            match c.model_infer(r).await {
                Ok(_) => out.push((name, Code::Ok, String::new())),
                Err(s) => out.push((name, s.code(), s.message().to_string())),
            }
        }
        out
    });
    let want = [
        ("good", Code::Ok, ""),
        ("wrong dtype", Code::InvalidArgument, "inputs[0].datatype"),
        (
            "wrong shape",
            Code::InvalidArgument,
            "raw_input_contents[0]",
        ),
        ("truncated raw", Code::InvalidArgument, "255 bytes"),
        ("infinite value", Code::InvalidArgument, "not finite"),
        ("two inputs", Code::InvalidArgument, "exactly one"),
        ("too many rows", Code::InvalidArgument, "limit of 4"),
        ("oversized message", Code::OutOfRange, ""),
        ("unknown model", Code::NotFound, "nope"),
    ];
    for ((name, code, msg), (wname, wcode, wtext)) in codes.iter().zip(want) {
        assert_eq!((*name, *code), (wname, wcode), "{msg}");
        assert!(msg.contains(wtext), "{name}: {msg:?} lacks {wtext:?}");
    }
    let (_, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    for limit in ["message_size", "batch_rows"] {
        assert!(
            metric(
                &metrics,
                &format!(r#"cloud_rejected_total{{limit="{limit}"}}"#)
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{limit}:\n{metrics}"
        );
    }
    // The server survived all of it.
    assert_eq!(post(&good).0, 200);
}

#[test]
fn rate_and_queue_limits_answer_429_and_503_with_their_metrics() {
    let (dir, _, repo) = fixture();
    let creds = dir.path().join("rate-credentials.toml");
    std::fs::write(
        &creds,
        "[[devices]]\nid = \"greedy\"\ntoken = \"g\"\nmodels = [\"*\"]\n[[devices]]\nid = \"polite\"\ntoken = \"p\"\nmodels = [\"*\"]\n",
    )
    .unwrap();
    // A bucket of 3 that refills once every 100 s: timing cannot matter.
    let cloud = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &[
            "--auth",
            "token",
            "--credentials",
            creds.to_str().unwrap(),
            "--rate-per-device",
            "0.01",
            "--rate-burst",
            "3",
        ],
    );
    let good = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":{:?}}}]}}"#,
        vec![1.0f32; 64]
    );
    let infer = format!("{}/v2/models/digits/infer", cloud.http_url());
    let codes: Vec<u16> = (0..5)
        .map(|_| {
            curl(&[
                "-X",
                "POST",
                &infer,
                "-H",
                "authorization: Bearer g",
                "-d",
                &good,
            ])
            .0
        })
        .collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    let (_, headers) = curl(&[
        "-i",
        "-X",
        "POST",
        &infer,
        "-H",
        "authorization: Bearer g",
        "-d",
        &good,
    ]);
    assert!(
        headers.to_lowercase().contains("retry-after: 1"),
        "{headers}"
    );
    // gRPC: the same device is still over its rate; another device is unaffected.
    let codes = rt().block_on(async {
        let mut c = opb::expert_client::ExpertClient::connect(cloud.url())
            .await
            .unwrap();
        let mut out = Vec::new();
        for token in ["g", "g", "p"] {
            let mut req = tonic::Request::new(opb::InferRequest {
                model: "digits".into(),
                input: Some(offload_shared::wire::encode_f32(&[1.0; 64], &[1, 64])),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            out.push(c.infer(req).await.map(|_| ()).map_err(|s| s.code()));
        }
        out
    });
    assert_eq!(
        codes,
        [
            Err(Code::ResourceExhausted),
            Err(Code::ResourceExhausted),
            Ok(())
        ]
    );
    let (_, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    assert_eq!(
        metric(&metrics, r#"cloud_rejected_total{limit="rate"}"#),
        Some(5.0),
        "{metrics}"
    );
    // Unauthenticated clients are limited by address: rotating the declared device id buys
    // nothing.
    let open = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &["--rate-per-device", "0.01", "--rate-burst", "2"],
    );
    let codes = rt().block_on(async {
        let mut c = opb::expert_client::ExpertClient::connect(open.url())
            .await
            .unwrap();
        let mut out = Vec::new();
        for i in 0..4 {
            let req = opb::InferRequest {
                model: "digits".into(),
                device_id: format!("fresh-id-{i}"),
                input: Some(offload_shared::wire::encode_f32(&[1.0; 64], &[1, 64])),
                ..Default::default()
            };
            out.push(c.infer(req).await.map(|_| ()).map_err(|s| s.code()));
        }
        out
    });
    assert_eq!(
        codes,
        [
            Ok(()),
            Ok(()),
            Err(Code::ResourceExhausted),
            Err(Code::ResourceExhausted)
        ]
    );
    // Queue: depth 1 and a 100 ms expert; many devices at once overflow it -> UNAVAILABLE.
    let cloud = CloudProcess::start(
        repo,
        "127.0.0.1:0",
        &["--queue-depth", "1", "--expert-delay-ms", "100"],
    );
    let out = run_ok(
        "loadgen",
        &[
            "--url",
            &cloud.url(),
            "--devices",
            "8",
            "--concurrency",
            "8",
            "--seconds",
            "1",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["errors"]["Unavailable"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["ok"].as_u64().unwrap() > 0, "{v}");
    let (_, metrics) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    assert!(
        metric(&metrics, r#"cloud_rejected_total{limit="queue_full"}"#).unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
}
