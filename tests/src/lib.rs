//! Helpers for the end-to-end tests: locate the workspace binaries, run them as real processes,
//! and build the small fixtures (legacy model, trained repository) the tests share.

pub mod certs;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory holding the workspace binaries (`target/<profile>`), next to the test executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the fix when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by `make test`)",
        p.display()
    );
    p
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Python of the project virtualenv (onnxruntime lives there); `OFFLOAD_TEST_PYTHON` overrides.
pub fn python() -> PathBuf {
    std::env::var_os("OFFLOAD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

/// Runs a binary with arguments and returns its output (never panics on a non-zero exit).
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn")
}

/// Starts a binary with its stdout piped (for tests that read its output while it runs).
pub fn spawn_piped<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> std::process::Child {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Runs and asserts success, returning stdout.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    stdout_of_success(&format!("{name} {args:?}"), run(name, args))
}

/// Runs any command (a tool, a script) and asserts success, returning stdout; panics naming
/// the command if it cannot start.
pub fn command_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    stdout_of_success(&what, out)
}

/// Asserts that `out` is a success, showing both streams if not; its stdout.
fn stdout_of_success(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs, asserts a clean failure (non-zero exit, no panic) and returns stderr.
pub fn run_err(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{name} {args:?} unexpectedly succeeded"
    );
    assert!(
        !stderr.contains("panicked"),
        "{name} {args:?} panicked:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code for {args:?}; stderr:\n{stderr}"
    );
    stderr
}

/// Writes a weak legacy model for `task` into `dir` and returns its path.
pub fn legacy(dir: &Path, task: &str) -> PathBuf {
    let p = dir.join(format!("legacy-{}.onnx", task.replace([':', ','], "_")));
    run_ok(
        "cloud-expert",
        &["legacy", "--task", task, "--out", p.to_str().unwrap()],
    );
    p
}

/// Trains a small repository version; returns the version directory.
pub fn train(dir: &Path, legacy: &Path, model: &str, extra: &[&str]) -> PathBuf {
    let repo = dir.join("repo");
    let mut args = vec![
        "train",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        model,
        "--legacy",
        legacy.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    run_ok("cloud-expert", &args);
    let v = offload_shared::repository::Repository::new(&repo)
        .versions(model)
        .unwrap();
    repo.join(model).join(v.last().unwrap().to_string())
}

/// A weak multi-class legacy model and a repository with one trained `digits` version
/// (`epochs` epochs) in `dir`; returns (legacy model, repository root).
pub fn digits_repo(dir: &Path, epochs: &str) -> (PathBuf, PathBuf) {
    let legacy = legacy(dir, "multiclass");
    train(dir, &legacy, "digits", &["--epochs", epochs]);
    (legacy, dir.join("repo"))
}

/// Reads a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A `cloud-expert serve` process on a loopback port, killed on drop.
pub struct CloudProcess {
    /// The child process.
    child: std::process::Child,
    /// Where it listens for gRPC.
    pub addr: String,
    /// Where it listens for HTTP (v2 REST, admin API, /metrics).
    pub http: String,
    /// Where its plaintext health-only listener is (`--health-addr`), or "".
    pub health: String,
}

impl CloudProcess {
    /// Starts a server with gRPC on `addr` (use `127.0.0.1:0` for an ephemeral port) and HTTP
    /// on an ephemeral loopback port (unless `extra` sets `--http-addr`), and waits for its
    /// "ready on ADDR http ADDR" line, i.e. until every model is warm.
    pub fn start(repo: &Path, addr: &str, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut cmd = Command::new(bin("cloud-expert"));
        cmd.args(["serve", "--repo", repo.to_str().unwrap(), "--addr", addr]);
        if !extra.iter().any(|a| a.starts_with("--http-addr")) {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cloud-expert serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let rest = line
            .trim()
            .strip_prefix("ready on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (rest, health) = rest.split_once(" health ").unwrap_or((rest, ""));
        let (addr, http) = rest.split_once(" http ").unwrap_or((rest, ""));
        Self {
            child,
            addr: addr.to_string(),
            http: http.to_string(),
            health: health.to_string(),
        }
    }

    /// The URL edge clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (what Kubernetes sends) and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait()
    }

    /// Sends SIGTERM without waiting (the server drains; see [`CloudProcess::wait`]).
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses JSON lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One HTTP exchange made with `curl` (a real client, also for TLS): status and body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// POSTs a JSON `body` with curl: the status and the parsed reply (Null if not JSON).
pub fn post_json(url: &str, body: &str) -> (u16, serde_json::Value) {
    post_with(url, &["-d", body])
}

/// POSTs JSON with curl's `data` arguments: the status and the parsed reply (Null if not JSON).
fn post_with(url: &str, data: &[&str]) -> (u16, serde_json::Value) {
    let mut args = vec!["-X", "POST", url, "-H", "content-type: application/json"];
    args.extend_from_slice(data);
    let (code, text) = curl(&args);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// POSTs the JSON in `body` through a file in `dir` (large bodies exceed argv limits): the
/// status and the parsed reply (Null if not JSON).
pub fn post_json_file(dir: &Path, url: &str, body: &str) -> (u16, serde_json::Value) {
    let f = dir.join("body.json");
    std::fs::write(&f, body).unwrap();
    post_with(url, &["--data-binary", &format!("@{}", f.display())])
}

/// Polls an analysis job (`GET {base}/v1/analysis/jobs/{id}`) until it ends; its final view.
pub fn wait_job(base: &str, id: &str) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let (code, text) = curl(&[&format!("{base}/v1/analysis/jobs/{id}")]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        assert_eq!(code, 200, "{v}");
        if !matches!(v["state"].as_str(), Some("queued" | "running")) {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(300),
            "job {id} never ended: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs a Python check script with `args` and asserts it printed "all checks passed";
/// returns its standard output.
pub fn python_check(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python())
        .arg(workspace_root().join(script))
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{script}: {stdout}");
    stdout
}

/// `(VmHWM, VmRSS)` of a process in KiB: peak and current resident memory.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Value of one Prometheus sample (`name{labels}`, labels exactly as exposed) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
