//! Batch-OMP (Rubinstein, Zibulevsky and Elad 2008; spec §3): exactly `S` atoms per signal over
//! a dictionary with unit-norm atoms, from the Gram matrix `G = D^T D` and `alpha0 = D^T h`,
//! with a Cholesky factor of `G[I, I]` grown by one row per step and a least-squares refit each
//! step. Equals scikit-learn's `orthogonal_mp_gram(Gram=G, Xy=D^T h, n_nonzero_coefs=S)`.
//! Signals are independent: they are split over threads.
//!
//! Invariant: a chosen atom is never chosen again; if the next atom is linearly dependent on the
//! chosen ones (Cholesky pivot <= 1e-12), the signal stops early with fewer atoms.

use super::AnalysisError;

/// Sparse codes: for each signal, up to `S` (atom, coefficient) pairs in selection order.
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// Per signal.
    pub atoms: Vec<Vec<(usize, f64)>>,
}

/// Codes for every signal, given `gram` (M x M, row-major) and `xy` (signals x M).
pub fn batch_omp(gram: &[f64], m: usize, xy: &[f64], s: usize) -> Result<Codes, AnalysisError> {
    if gram.len() != m * m || m == 0 || !xy.len().is_multiple_of(m) {
        return Err(AnalysisError::invalid(
            "dictionary",
            "Gram matrix and D^T h do not match",
        ));
    }
    if s == 0 || s > m {
        return Err(AnalysisError::invalid(
            "sparsity",
            format!("must be in 1..={m}"),
        ));
    }
    let n = xy.len() / m;
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let per = n.div_ceil(threads).max(1);
    let mut atoms = vec![Vec::new(); n];
    std::thread::scope(|sc| {
        for (t, out) in atoms.chunks_mut(per).enumerate() {
            sc.spawn(move || {
                for (r, o) in out.iter_mut().enumerate() {
                    let i = t * per + r;
                    *o = one(gram, m, &xy[i * m..(i + 1) * m], s);
                }
            });
        }
    });
    Ok(Codes { atoms })
}

/// One signal.
fn one(g: &[f64], m: usize, alpha0: &[f64], s: usize) -> Vec<(usize, f64)> {
    let mut alpha = alpha0.to_vec();
    let mut chosen: Vec<usize> = Vec::with_capacity(s);
    // Lower-triangular Cholesky factor of G[I, I], row-major s x s.
    let mut l = vec![0f64; s * s];
    let mut gamma = Vec::new();
    for step in 0..s {
        let Some(k) = alpha
            .iter()
            .enumerate()
            .filter(|(j, _)| !chosen.contains(j))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(j, _)| j)
        else {
            break;
        };
        // w = L^-1 G[I, k]; new row [w, sqrt(G_kk - w.w)].
        let mut w = vec![0f64; step];
        for r in 0..step {
            let acc: f64 = (0..r).map(|c| l[r * s + c] * w[c]).sum();
            w[r] = (g[chosen[r] * m + k] - acc) / l[r * s + r];
        }
        let pivot = g[k * m + k] - w.iter().map(|v| v * v).sum::<f64>();
        if pivot <= 1e-12 {
            break;
        }
        l[step * s..step * s + step].copy_from_slice(&w);
        l[step * s + step] = pivot.sqrt();
        chosen.push(k);
        // gamma = (L L^T)^-1 alpha0[I].
        let q = chosen.len();
        let mut y = vec![0f64; q];
        for r in 0..q {
            let acc: f64 = (0..r).map(|c| l[r * s + c] * y[c]).sum();
            y[r] = (alpha0[chosen[r]] - acc) / l[r * s + r];
        }
        gamma = vec![0f64; q];
        for r in (0..q).rev() {
            let acc: f64 = (r + 1..q).map(|c| l[c * s + r] * gamma[c]).sum();
            gamma[r] = (y[r] - acc) / l[r * s + r];
        }
        // alpha = alpha0 - G[:, I] gamma.
        for (j, a) in alpha.iter_mut().enumerate() {
            let row = &g[j * m..(j + 1) * m];
            *a = alpha0[j]
                - chosen
                    .iter()
                    .zip(&gamma)
                    .map(|(&c, gm)| row[c] * gm)
                    .sum::<f64>();
        }
    }
    chosen.into_iter().zip(gamma).collect()
}

/// Atom usage of codes over `m` atoms (spec §3): `p_k` = the share of all selections that
/// picked atom k (mean over signals of `1[gamma_k != 0] / S` when every signal has S atoms),
/// its perplexity `exp(H(p))`, and the number of atoms never used.
pub fn usage(codes: &Codes, m: usize) -> (Vec<f64>, f64, usize) {
    let mut count = vec![0f64; m];
    for c in &codes.atoms {
        for &(k, _) in c {
            count[k] += 1.0;
        }
    }
    let total: f64 = count.iter().sum::<f64>().max(1.0);
    let p: Vec<f64> = count.iter().map(|c| c / total).collect();
    let h: f64 = -p
        .iter()
        .filter(|&&v| v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>();
    let dead = count.iter().filter(|&&c| c == 0.0).count();
    (p, h.exp(), dead)
}

/// Codes of `signals` (rows) over `dict` (one atom per row, unit norm within 1e-4) with
/// `s` atoms each, as JSON: per-signal `[atom, coefficient]` pairs, reconstruction MSE, atom
/// usage, its perplexity and the dead atoms.
pub fn report(
    signals: &super::Points,
    dict: &super::Points,
    s: usize,
) -> Result<serde_json::Value, AnalysisError> {
    if dict.d != signals.d {
        return Err(AnalysisError::invalid(
            "dictionary",
            format!("atoms have {} values, signals {}", dict.d, signals.d),
        ));
    }
    let (m, c) = (dict.n, dict.d);
    let atom = |k: usize| dict.row(k).iter().map(|&v| v as f64);
    for k in 0..m {
        let norm = atom(k).map(|v| v * v).sum::<f64>().sqrt();
        if (norm - 1.0).abs() > 1e-4 {
            return Err(AnalysisError::invalid(
                "dictionary",
                format!("atom {k} has norm {norm:.6}; atoms must have unit norm"),
            ));
        }
    }
    let dd: Vec<f64> = dict.data.iter().map(|&v| v as f64).collect();
    let h: Vec<f64> = signals.data.iter().map(|&v| v as f64).collect();
    report_with(&dd, m, c, &h, signals.dropped, s)
}

/// [`report`] over a validated dictionary `dd` (m x c) and signals `h` (rows of c).
pub fn report_with(
    dd: &[f64],
    m: usize,
    c: usize,
    h: &[f64],
    dropped: usize,
    s: usize,
) -> Result<serde_json::Value, AnalysisError> {
    let n = h.len() / c;
    let codes = encode(dd, m, c, h, s)?;
    let se = squared_error(dd, c, h, &codes);
    let (p, perplexity, dead) = usage(&codes, m);
    Ok(serde_json::json!({
        "codes": codes.atoms.iter().map(|c| c.iter().map(|&(k, g)| serde_json::json!([k, g])).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "mse": se / (n * c) as f64,
        "atom_usage": p,
        "usage_perplexity": perplexity,
        "dead_atoms": dead,
        "n_signals": n,
        "n_dropped": dropped,
    }))
}

/// Codes of the signals `h` (rows of length `c`) over the dictionary `dd` (M = `m` unit-norm
/// rows of length `c`), from `G = D D^T` and `D h`; signals are split over threads.
pub fn encode(dd: &[f64], m: usize, c: usize, h: &[f64], s: usize) -> Result<Codes, AnalysisError> {
    let gram: Vec<f64> = (0..m * m)
        .map(|ij| dot(&dd[ij / m * c..][..c], &dd[ij % m * c..][..c]))
        .collect();
    let n = h.len() / c.max(1);
    let mut xy = vec![0f64; n * m];
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (t, out) in xy.chunks_mut(per * m).enumerate() {
            sc.spawn(move || {
                for (r, row) in out.chunks_mut(m).enumerate() {
                    let hi = &h[(t * per + r) * c..][..c];
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = dot(&dd[k * c..(k + 1) * c], hi);
                    }
                }
            });
        }
    });
    batch_omp(&gram, m, &xy, s)
}

/// `sum_i ||h_i - D^T gamma_i||^2`.
pub fn squared_error(dd: &[f64], c: usize, h: &[f64], codes: &Codes) -> f64 {
    let mut se = 0.0;
    for (i, code) in codes.atoms.iter().enumerate() {
        let mut r = h[i * c..(i + 1) * c].to_vec();
        for &(k, g) in code {
            r.iter_mut()
                .zip(&dd[k * c..(k + 1) * c])
                .for_each(|(r, a)| *r -= g * a);
        }
        se += r.iter().map(|v| v * v).sum::<f64>();
    }
    se
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exactly_sparse_signal_and_refuses_bad_sizes() {
        // Orthonormal-ish dictionary: identity atoms plus one mixed atom, in R^4.
        let d = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [0.5, 0.5, 0.5, 0.5],
        ];
        let m = d.len();
        let g: Vec<f64> = (0..m * m)
            .map(|ij| (0..4).map(|t| d[ij / m][t] * d[ij % m][t]).sum())
            .collect();
        let h = [3.0, 0.0, -2.0, 0.0];
        let xy: Vec<f64> = d
            .iter()
            .map(|a| (0..4).map(|t| a[t] * h[t]).sum())
            .collect();
        let c = batch_omp(&g, m, &xy, 2).unwrap();
        assert_eq!(c.atoms[0].len(), 2);
        let mut got = c.atoms[0].clone();
        got.sort_by_key(|p| p.0);
        assert_eq!(got[0].0, 0);
        assert!((got[0].1 - 3.0).abs() < 1e-12 && got[1].0 == 2 && (got[1].1 + 2.0).abs() < 1e-12);
        let (p, perplexity, dead) = usage(&c, m);
        assert_eq!(dead, 3);
        assert!((p[0] - 0.5).abs() < 1e-12 && (perplexity - 2.0).abs() < 1e-12);
        assert!(batch_omp(&g, m, &xy, 6).is_err());
        assert!(batch_omp(&g[1..], m, &xy, 2).is_err());
    }
}
