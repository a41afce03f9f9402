//! Continuous power-law fit of an eigenvalue tail with `xmin` chosen by the Kolmogorov-Smirnov
//! distance (spec §4; the same definitions as WeightWatcher's default fitter, `WWFit`):
//!
//! - data: the eigenvalues above `thresh` (1e-5), ascending; every value but the largest is a
//!   candidate `xmin_i`, with tail `x_i..x_{N-1}` of size `n = N - i`;
//! - `alpha_i = 1 + n / sum_j ln(x_j / xmin_i)` (for N < 20 the bias-corrected
//!   `1 + (n - 1) / sum` on tails of at least 8 values);
//! - `D_i = max_j |1 - (x_j / xmin_i)^(1 - alpha_i) - (j - i) / n|` (1 when `alpha_i <= 1`);
//! - the fit is the first `i` minimising `D_i`; `sigma = (alpha - 1) / sqrt(n)`.
//!
//! Cost: O(N^2) exponentials, split over threads; logs are taken once.

use serde::Serialize;

/// Below this many values WeightWatcher switches to its small-sample fitter.
const SMALL_N: usize = 20;
/// The small-sample fitter's shortest tail.
const SMALL_N_MIN_TAIL: usize = 8;

/// A fitted power law.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PowerLawFit {
    /// Exponent of the density `p(x) ~ x^-alpha` on `x >= xmin`.
    pub alpha: f64,
    /// Start of the tail (one of the eigenvalues).
    pub xmin: f64,
    /// Kolmogorov-Smirnov distance of the fit on the tail.
    pub ks_distance: f64,
    /// Standard error `(alpha - 1) / sqrt(n_tail)`.
    pub sigma: f64,
    /// Eigenvalues in the tail (`>= xmin`).
    pub n_tail: usize,
}

/// Fits `sorted` (ascending, all > 0). `None` for fewer than two values.
pub fn fit(sorted: &[f64]) -> Option<PowerLawFit> {
    let n_all = sorted.len();
    if n_all < 2 {
        return None;
    }
    let logs: Vec<f64> = sorted.iter().map(|x| x.ln()).collect();
    // suffix[i] = sum of logs[i..].
    let mut suffix = vec![0f64; n_all + 1];
    for i in (0..n_all).rev() {
        suffix[i] = suffix[i + 1] + logs[i];
    }
    let small = n_all < SMALL_N;
    let candidates = n_all - 1;
    let alphas: Vec<f64> = (0..candidates)
        .map(|i| {
            let n = (n_all - i) as f64;
            let s = suffix[i] - n * logs[i];
            if small {
                if n_all - i < SMALL_N_MIN_TAIL || s <= 1e-12 {
                    0.0
                } else {
                    1.0 + (n - 1.0) / s
                }
            } else {
                1.0 + n / s
            }
        })
        .collect();
    let mut ds = vec![1f64; candidates];
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(candidates.div_ceil(64));
    // Work per candidate shrinks with i: interleave candidates over threads to balance.
    let parts: Vec<Vec<(usize, f64)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (logs, alphas) = (&logs, &alphas);
                sc.spawn(move || {
                    (t..candidates)
                        .step_by(threads)
                        .filter(|&i| alphas[i] > 1.0)
                        .map(|i| (i, ks(&logs[i..], alphas[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, d) in parts.into_iter().flatten() {
        ds[i] = d;
    }
    let mut best = 0;
    for (i, &d) in ds.iter().enumerate() {
        if d < ds[best] {
            best = i;
        }
    }
    let n_tail = n_all - best;
    let alpha = alphas[best];
    Some(PowerLawFit {
        alpha,
        xmin: sorted[best],
        ks_distance: ds[best],
        sigma: (alpha - 1.0) / (n_tail as f64).sqrt(),
        n_tail,
    })
}

/// KS distance of the tail whose logs are `tail_logs` (first = ln xmin) under exponent `alpha`.
fn ks(tail_logs: &[f64], alpha: f64) -> f64 {
    let n = tail_logs.len() as f64;
    let l0 = tail_logs[0];
    let e = 1.0 - alpha;
    tail_logs
        .iter()
        .enumerate()
        .map(|(j, &l)| (1.0 - (e * (l - l0)).exp() - j as f64 / n).abs())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic Pareto(alpha) samples by inverse CDF on a stratified grid.
    fn pareto(alpha: f64, n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                (1.0 - u).powf(-1.0 / (alpha - 1.0))
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn recovers_the_exponent_of_a_pareto_sample() {
        let f = fit(&pareto(2.5, 4000)).unwrap();
        assert!((f.alpha - 2.5).abs() < 0.05, "{f:?}");
        assert!(f.ks_distance < 0.02, "{f:?}");
        assert_eq!(
            f.n_tail,
            4000 - pareto(2.5, 4000).iter().position(|&x| x == f.xmin).unwrap()
        );
    }

    #[test]
    fn the_chosen_xmin_has_the_smallest_ks_distance_brute_force() {
        // A bulk (uniform) followed by a heavy tail: xmin must land past the bulk.
        let mut v: Vec<f64> = (0..300).map(|i| 0.5 + i as f64 / 600.0).collect();
        v.extend(pareto(3.0, 200).iter().map(|x| x * 1.2));
        v.sort_by(f64::total_cmp);
        let f = fit(&v).unwrap();
        for i in 0..v.len() - 1 {
            let n = (v.len() - i) as f64;
            let s: f64 = v[i..].iter().map(|x| (x / v[i]).ln()).sum();
            let a = 1.0 + n / s;
            let d = v[i..]
                .iter()
                .enumerate()
                .map(|(j, x)| (1.0 - (x / v[i]).powf(1.0 - a) - j as f64 / n).abs())
                .fold(0.0, f64::max);
            assert!(d >= f.ks_distance - 1e-12, "candidate {i} beats the fit");
        }
        assert!(f.xmin >= 1.0, "{f:?}");
    }

    #[test]
    fn too_few_values_give_no_fit() {
        assert!(fit(&[1.0]).is_none());
        assert!(fit(&[]).is_none());
    }
}
