//! Model repository operations on a running server: new versions are picked up by polling,
//! several versions are served side by side, a version that fails to load never displaces the
//! one serving, the admin API loads and unloads, and expert and rejector move as a pair.

use offload_proto::v1 as opb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use system_tests::*;

/// Publishes version `to` as a copy of version `from` (same weights), written in a temporary
/// directory and renamed into place, as a careful publisher would; `corrupt` truncates its
/// weights before publishing.
fn publish_copy(model_dir: &Path, from: u64, to: u64, corrupt: bool) -> PathBuf {
    let tmp = model_dir.join(format!(".tmp-{to}"));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in std::fs::read_dir(model_dir.join(from.to_string())).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let text_fix = |s: String| {
            s.replace(
                &format!("\"version\": \"{from}\""),
                &format!("\"version\": \"{to}\""),
            )
            .replace(
                &format!("\"expert_version\": \"{from}\""),
                &format!("\"expert_version\": \"{to}\""),
            )
        };
        if name.ends_with(".json") {
            std::fs::write(
                tmp.join(&name),
                text_fix(std::fs::read_to_string(&f).unwrap()),
            )
            .unwrap();
        } else {
            std::fs::copy(&f, tmp.join(&name)).unwrap();
        }
    }
    if corrupt {
        let w = tmp.join("expert.safetensors");
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    }
    let dst = model_dir.join(to.to_string());
    std::fs::rename(&tmp, &dst).unwrap();
    dst
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn infer_version(http: &str, version: Option<&str>) -> (u16, String) {
    let path = match version {
        Some(v) => format!("{http}/v2/models/digits/versions/{v}/infer"),
        None => format!("{http}/v2/models/digits/infer"),
    };
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":{:?}}}]}}"#,
        vec![2.0f32; 64]
    );
    curl(&["-X", "POST", &path, "-d", &body])
}

#[test]
fn versions_hot_reload_failed_loads_keep_serving_and_admin_api_works() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = digits_repo(dir.path(), "10");
    let model_dir = repo.join("digits");
    let cloud = CloudProcess::start(
        &repo,
        "127.0.0.1:0",
        &[
            "--poll-secs",
            "0.2",
            "--keep-versions",
            "2",
            "--admin-token",
            "adm",
        ],
    );
    let http = cloud.http_url();
    let ready = |v: &str| curl(&[&format!("{http}/v2/models/digits/versions/{v}/ready")]).0 == 200;
    assert!(ready("1"));

    // v2 appears on disk: polled in, served beside v1; unpinned requests and bundles go to v2.
    publish_copy(&model_dir, 1, 2, false);
    wait_until("version 2", || ready("2"));
    let (_, meta) = curl(&[&format!("{http}/v2/models/digits")]);
    assert!(meta.contains(r#""versions":["1","2"]"#), "{meta}");
    let (code, body) = infer_version(&http, None);
    assert_eq!(code, 200);
    assert!(body.contains(r#""model_version":"2""#), "{body}");
    let (code, body) = infer_version(&http, Some("1"));
    assert!(
        code == 200 && body.contains(r#""model_version":"1""#),
        "{body}"
    );
    let bundle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = opb::model_sync_client::ModelSyncClient::connect(cloud.url())
                .await
                .unwrap();
            c.get_rejector_bundle(opb::BundleRequest {
                model: "digits".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        });
    assert_eq!(
        (bundle.version.as_str(), bundle.expert_version.as_str()),
        ("2", "2"),
        "bundle and expert move as a pair"
    );

    // v3 is broken (truncated weights): it fails to load, v2 keeps serving, the failure is counted.
    let v3 = publish_copy(&model_dir, 2, 3, true);
    let weights = v3.join("expert.safetensors");
    let good_weights = std::fs::read(model_dir.join("2/expert.safetensors")).unwrap();
    wait_until("the failed load to be counted", || {
        let (_, m) = curl(&[&format!("{http}/metrics")]);
        metric(
            &m,
            r#"cloud_model_loads_total{model="digits",result="failed"}"#,
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    assert!(!ready("3"));
    let (code, body) = infer_version(&http, None);
    assert!(
        code == 200 && body.contains(r#""model_version":"2""#),
        "{body}"
    );
    // An explicit load retries it and reports the failure; the previous versions still serve.
    let admin = |path: &str, token: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &format!("authorization: Bearer {token}"),
            &format!("{http}/v2/repository{path}"),
        ])
    };
    let (code, body) = admin("/models/digits/load", "adm");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("error"), "{body}");
    assert!(
        body.contains("digits/3") && body.contains("previous versions keep serving"),
        "{body}"
    );
    assert!(ready("1") && ready("2"));

    // Fixed v3 loads through the admin API; v1 is retired (two versions kept).
    std::fs::write(&weights, &good_weights).unwrap();
    let (code, body) = admin("/models/digits/load", "adm");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("digits/3") && body.contains("digits/1"),
        "{body}"
    );
    assert!(ready("3") && ready("2") && !ready("1"));
    let (code, body) = infer_version(&http, Some("1"));
    assert!(code == 404 && body.contains("serving 2, 3"), "{body}");

    // Unload: gone, and polling does not bring it back; load restores it.
    assert_eq!(admin("/models/digits/unload", "wrong").0, 401);
    let (code, body) = admin("/models/digits/unload", "adm");
    assert_eq!(code, 200, "{body}");
    assert_eq!(infer_version(&http, None).0, 404);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(infer_version(&http, None).0, 404);
    assert_eq!(admin("/models/digits/load", "adm").0, 200);
    let (code, body) = infer_version(&http, None);
    assert!(
        code == 200 && body.contains(r#""model_version":"3""#),
        "{body}"
    );
    assert_eq!(admin("/models/nothing-here/load", "adm").0, 404);
}

#[test]
fn a_broken_newest_version_at_start_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = digits_repo(dir.path(), "5");
    let v2 = publish_copy(&repo.join("digits"), 1, 2, false);
    std::fs::write(v2.join("rejector.onnx"), b"not onnx").unwrap();
    let cloud = CloudProcess::start(&repo, "127.0.0.1:0", &["--keep-versions", "1"]);
    let (code, body) = infer_version(&cloud.http_url(), None);
    assert!(
        code == 200 && body.contains(r#""model_version":"1""#),
        "{body}"
    );
    let (_, m) = curl(&[&format!("{}/metrics", cloud.http_url())]);
    assert_eq!(
        metric(
            &m,
            r#"cloud_model_loads_total{model="digits",result="failed"}"#
        ),
        Some(1.0),
        "{m}"
    );
    // With nothing loadable the server refuses to start, naming the cause.
    std::fs::write(repo.join("digits/1/rejector.onnx"), b"not onnx").unwrap();
    let err = run_err(
        "cloud-expert",
        &[
            "serve",
            "--repo",
            repo.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
        ],
    );
    assert!(err.contains("sha256 does not match"), "{err}");
}
