//! `cloud-expert bench-analysis`: intrinsic-dimension speed on n x d float32 points beside its
//! physical floor (one float32 GEMM of the same size, timed here) and, when given, the
//! reference figures of scikit-dimension from `scripts/bench_skdim.py` (same shape).

use super::id::{harmonic_mean, mle_pointwise, twonn};
use super::knn::knn;
use super::Points;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Best-of-3 wall time of `f` in seconds.
fn best<T>(mut f: impl FnMut() -> T) -> f64 {
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let _ = f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Runs the benchmark and prints its table; the figures as JSON.
pub fn run(
    n: usize,
    d: usize,
    threads: usize,
    reference: Option<serde_json::Value>,
) -> serde_json::Value {
    tch::set_num_threads(threads as i32);
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let x = Tensor::rand([n as i64, d as i64], (Kind::Float, Device::Cpu));
    let data = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap_or_default();
    let p = Points::new(data, n, d, "bench").unwrap_or_else(|e| panic!("{e}"));
    let gemm = best(|| x.matmul(&x.tr()));
    let flops = 2.0 * (n * n * d) as f64;
    let knn2 = best(|| knn(&p, 2));
    let knn20 = best(|| knn(&p, 20));
    let nn = knn(&p, 20).unwrap_or_else(|e| panic!("{e}"));
    let est_twonn = twonn(&nn, 0.1).unwrap_or(f64::NAN);
    let est_mle = harmonic_mean(&mle_pointwise(&nn, 20));
    let r = |k: &str| reference.as_ref().and_then(|r| r[k].as_f64());
    println!(
        "intrinsic dimension of {n} x {d} float32 points (uniform), {threads} threads, best of 3:"
    );
    println!(
        "floor: one {n} x {n} x {d} float32 GEMM = {gemm:.3} s ({:.0} GFLOP/s)",
        flops / gemm / 1e9
    );
    println!("| estimator | cloud-expert s | x GEMM floor | scikit-dimension s | speed-up |");
    println!("|---|---|---|---|---|");
    for (name, ours, key) in [("TwoNN", knn2, "twonn_s"), ("MLE (k = 20)", knn20, "mle_s")] {
        let reference = r(key).map_or("-".into(), |t| format!("{t:.3}"));
        let speed = r(key).map_or("-".into(), |t| format!("{:.2}x", t / ours));
        println!(
            "| {name} | {ours:.3} | {:.2} | {reference} | {speed} |",
            ours / gemm
        );
    }
    println!("estimates: TwoNN {est_twonn:.2}, MLE {est_mle:.2}");
    // Batch-OMP: S = 5 of 512 unit-norm atoms in R^64, 10,000 signals, from G and D^T h.
    let (m, c, signals, s) = (512i64, 64i64, 10_000i64, 5);
    let dict = Tensor::randn([m, c], (Kind::Double, Device::Cpu));
    let dict = &dict / dict.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let h = Tensor::randn([signals, c], (Kind::Double, Device::Cpu));
    let gram = Vec::<f64>::try_from(dict.matmul(&dict.tr()).flatten(0, -1)).unwrap_or_default();
    let xy = Vec::<f64>::try_from(h.matmul(&dict.tr()).flatten(0, -1)).unwrap_or_default();
    let omp = best(|| super::omp::batch_omp(&gram, m as usize, &xy, s));
    let omp_ref = r("omp_s");
    println!(
        "\nBatch-OMP, S = {s}, {m} atoms of dimension {c}, {signals} signals (from G and D^T h): {omp:.4} s{}",
        omp_ref.map_or(String::new(), |t| format!(
            "; scikit-learn orthogonal_mp_gram {t:.3} s ({:.1}x)",
            t / omp
        ))
    );
    let spectrum = spectrum_bench(reference.as_ref());
    // Gradients are needed here (the rest runs under no_grad).
    let pntk = tch::with_grad(super::attribution::bench::run);
    serde_json::json!({"n": n, "d": d, "gemm_s": gemm, "twonn_s": knn2, "mle_s": knn20,
        "twonn": est_twonn, "mle": est_mle, "omp_s": omp, "spectrum": spectrum, "pntk": pntk,
        "reference": reference})
}

/// The spectrum of one 2048 x 2048 layer (WeightWatcher's matrix when the reference names
/// it): eigenvalues plus the power-law fit, beside the float64 Gram GEMM it starts with and
/// WeightWatcher's analyze(); the fitted alpha, xmin and KS distance against WeightWatcher's.
fn spectrum_bench(reference: Option<&serde_json::Value>) -> serde_json::Value {
    use super::spectrum::{self, Matrix, SpectrumOptions};
    let r = |k: &str| reference.and_then(|r| r[k].as_f64());
    let loaded = reference
        .and_then(|r| r["spectrum_npy"].as_str())
        .and_then(|p| spectrum::read_matrices(std::path::Path::new(p)).ok())
        .and_then(|mut v| v.pop());
    let m = loaded.unwrap_or_else(|| {
        let w = Tensor::randn([2048, 2048], (Kind::Float, Device::Cpu)) * 0.02;
        let data = Vec::<f32>::try_from(w.flatten(0, -1)).unwrap_or_default();
        Matrix {
            name: "random".into(),
            rows: 2048,
            cols: 2048,
            data,
        }
    });
    let w = Tensor::from_slice(&m.data)
        .view([m.rows as i64, m.cols as i64])
        .to_kind(Kind::Double);
    let gemm = best(|| w.tr().mm(&w));
    let eig = best(|| spectrum::eigenvalues(&m));
    let evals = spectrum::eigenvalues(&m).unwrap_or_default();
    let tail: Vec<f64> = evals
        .iter()
        .copied()
        .filter(|&x| x > spectrum::EVALS_THRESH)
        .collect();
    let fit_t = best(|| super::powerlaw::fit(&tail));
    let full = best(|| spectrum::analyze(&m, None, &SpectrumOptions::default()));
    let fit = super::powerlaw::fit(&tail);
    println!(
        "\nspectrum of one {} x {} layer ({}), best of 3:",
        m.rows,
        m.cols,
        if reference.is_some() {
            "WeightWatcher's matrix"
        } else {
            "random"
        }
    );
    println!("floor: the float64 Gram GEMM W^T W = {gemm:.3} s");
    println!("| step | cloud-expert s | WeightWatcher s |");
    println!("|---|---|---|");
    println!(
        "| eigenvalues (Gram + eigvalsh) | {eig:.3} | {} (SVD) |",
        r("ww_svd_s").map_or("-".into(), |t| format!("{t:.3}"))
    );
    println!("| power-law fit (xmin by KS) | {fit_t:.4} | - |");
    let speed = r("ww_s").map_or("-".into(), |t| format!("{:.2}x", t / (eig + fit_t)));
    println!(
        "| eigenvalues + fit | {:.3} | {} analyze() | {speed}",
        eig + fit_t,
        r("ww_s").map_or("-".into(), |t| format!("{t:.3}"))
    );
    println!("| whole report (MP, entropy, ...) | {full:.3} | - |");
    if let (Some(f), Some(a)) = (fit, r("ww_alpha")) {
        println!(
            "alpha {:.9} (WeightWatcher {a:.9}, |diff| {:.1e}); xmin {:.9} (|diff| {:.1e}); KS {:.9} (|diff| {:.1e})",
            f.alpha,
            (f.alpha - a).abs(),
            f.xmin,
            (f.xmin - r("ww_xmin").unwrap_or(f64::NAN)).abs(),
            f.ks_distance,
            (f.ks_distance - r("ww_D").unwrap_or(f64::NAN)).abs()
        );
    }
    serde_json::json!({"gemm_s": gemm, "eigenvalues_s": eig, "fit_s": fit_t, "report_s": full,
        "alpha": fit.map(|f| f.alpha), "xmin": fit.map(|f| f.xmin), "ks": fit.map(|f| f.ks_distance)})
}
