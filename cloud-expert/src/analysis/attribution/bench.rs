//! pNTK benchmark (part of `cloud-expert bench-analysis`): the kernel of 2,000 training points
//! for a digits MLP expert (64 -> 256 -> 128 -> 10, 50,890 parameters, trained here for 30
//! epochs). The bundled digits set has 1,797 images; the other 203 are copies shifted one
//! pixel right. Reports the time and the memory (peak resident growth while building, and the
//! kernel's own bytes) of each variant and of the surrogate fit.

use super::ntk::{gradient_kernel, KernelKind, KernelOptions};
use super::poison::{train_classifier, PoisonParams};
use super::surrogate;
use crate::analysis::Progress;
use offload_shared::dataset::DataSource;
use offload_shared::rng::SplitMix64;
use std::time::Instant;
use tch::{Kind, Tensor};

/// `(VmHWM, VmRSS)` of this process in bytes.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Runs `f` with the peak-RSS counter reset (Linux `clear_refs` 5): seconds and the peak growth
/// over the resident size before, in bytes.
fn measured<T>(f: impl FnOnce() -> T) -> (T, f64, u64) {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss().1;
    let t0 = Instant::now();
    let out = f();
    let secs = t0.elapsed().as_secs_f64();
    (out, secs, rss().0.saturating_sub(before))
}

/// The 2,000 points: every digit, then the first 203 shifted one pixel right.
fn points() -> (Vec<f32>, Vec<u32>) {
    let data = DataSource::Digits
        .load()
        .unwrap_or_else(|e| panic!("bundled digits: {e}"));
    let mut x = data.features().to_vec();
    let mut y = data.labels().to_vec();
    for i in 0..(2000 - data.len()) {
        let img = &data.features()[i * 64..(i + 1) * 64];
        for r in 0..8 {
            x.push(0.0);
            x.extend_from_slice(&img[r * 8..r * 8 + 7]);
        }
        y.push(data.labels()[i]);
    }
    (x, y)
}

/// Prints the table; the figures as JSON.
pub fn run() -> serde_json::Value {
    let (x, y) = points();
    let n = y.len();
    let p = PoisonParams {
        epochs: 30,
        ..PoisonParams::default()
    };
    let progress = Progress::default();
    let (vs, net) = train_classifier(&x, &y, 64, 10, &p, &mut SplitMix64::new(0), &progress)
        .unwrap_or_else(|e| panic!("{e}"));
    let params = vs.trainable_variables();
    let dim: usize = params
        .iter()
        .filter(|t| t.requires_grad())
        .map(|t| t.numel())
        .sum();
    let xt = Tensor::from_slice(&x).view([n as i64, 64]);
    println!("\npNTK of {n} training points, digits MLP expert ({dim} parameters):");
    println!("| kernel | method | seconds | peak RSS growth MB | kernel MB |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    let variants = [
        ("pNTK exact", KernelKind::Pntk, None, false),
        ("trNTK exact", KernelKind::Trntk, None, false),
        ("pNTK, projection 1024", KernelKind::Pntk, Some(1024), false),
        ("pNTK per-sample gradients", KernelKind::Pntk, None, true),
    ];
    let mut exact = None;
    for (name, kind, projection, per_sample) in variants {
        let o = KernelOptions {
            kind,
            projection,
            per_sample,
            ..KernelOptions::default()
        };
        let (k, secs, grew) = measured(|| gradient_kernel(&net, &params, &xt, n, &o, &progress));
        let k = k.unwrap_or_else(|e| panic!("{e}"));
        let mb = (k.k.numel() * 8) as f64 / 1e6;
        println!(
            "| {name} | {} | {secs:.3} | {:.1} | {mb:.1} |",
            k.method,
            grew as f64 / 1e6
        );
        rows.push(
            serde_json::json!({"kernel": name, "method": k.method, "seconds": secs,
            "peak_rss_growth_bytes": grew, "kernel_bytes": k.k.numel() * 8}),
        );
        if exact.is_none() {
            exact = Some(k.k);
        }
    }
    let k = exact.expect("the first variant is exact");
    let probs = tch::no_grad(|| net.forward(&xt, None).softmax(-1, Kind::Double));
    let (s, secs, grew) = measured(|| surrogate::fit(&k, &probs, 1e-3, 1000, 1e-6));
    let s = s.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "| surrogate (kernel logistic regression, Newton-CG) | {} iterations{} | {secs:.3} | {:.1} | - |",
        s.iterations,
        if s.converged { "" } else { ", not converged" },
        grew as f64 / 1e6
    );
    rows.push(
        serde_json::json!({"kernel": "surrogate fit", "iterations": s.iterations,
        "seconds": secs, "peak_rss_growth_bytes": grew}),
    );
    serde_json::json!({"n": n, "parameters": dim, "rows": rows})
}
