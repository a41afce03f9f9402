//! Dictionary learning for sparse codes (spec §3): alternate Batch-OMP coding (exactly S atoms)
//! with a dictionary update, keeping unit-norm atoms.
//!
//! - `mod`: Method of Optimal Directions, `D = (G^T G + 1e-10 I)^-1 G^T H` over all codes.
//! - `ksvd`: approximate K-SVD (Rubinstein, Zibulevsky and Elad 2008): for each atom in turn,
//!   one power step on the residual of the signals that use it updates the atom and their
//!   coefficients together.
//! - `online`: Mairal et al. (2009): mini-batches accumulate `A = sum g g^T`, `B = sum g h^T`,
//!   then one block-coordinate pass over the atoms, each renormalised to unit norm.
//!
//! Initialisation: M distinct signals chosen by a seeded shuffle (seeded Gaussian atoms when
//! there are fewer signals than atoms). An atom no signal uses is replaced by the signal worst
//! reconstructed at that moment (each signal used once), so no atom stays dead by accident.
//! Deterministic given the seed.

use super::omp::{encode, squared_error, Codes};
use super::{AnalysisError, Progress};
use offload_shared::rng::SplitMix64;

/// The dictionary update.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Approximate K-SVD.
    Ksvd,
    /// Method of Optimal Directions.
    Mod,
    /// Mairal's online update on mini-batches.
    Online,
}

/// Learning settings.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LearnParams {
    /// The update.
    pub method: Method,
    /// Atoms M.
    pub atoms: usize,
    /// Passes over the signals.
    pub iterations: usize,
    /// Seed of the initialisation (and of the online order).
    pub seed: u64,
    /// Signals per mini-batch (`online`).
    pub batch_size: usize,
}

impl Default for LearnParams {
    /// K-SVD, 512 atoms (the spec's code default), 10 passes, seed 0, batches of 256.
    fn default() -> Self {
        Self {
            method: Method::Ksvd,
            atoms: 512,
            iterations: 10,
            seed: 0,
            batch_size: 256,
        }
    }
}

/// A learned dictionary.
#[derive(Debug, Clone)]
pub struct Learned {
    /// M x C, unit-norm rows.
    pub dict: Vec<f64>,
    /// Atoms.
    pub m: usize,
    /// Reconstruction MSE (per value) of the codes at the start of each pass, then at the end.
    pub mse_history: Vec<f64>,
    /// Dead atoms replaced by badly reconstructed signals, over all passes.
    pub replaced: usize,
}

/// Fisher-Yates with `next_u64() % (i + 1)` (this module's established stream; the shared
/// `SplitMix64::shuffle` draws indices differently).
fn shuffle(rng: &mut SplitMix64, v: &mut [usize]) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// Normalises `a` to unit norm; false if it is (numerically) zero.
fn normalise(a: &mut [f64]) -> bool {
    let n = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n < 1e-12 {
        return false;
    }
    a.iter_mut().for_each(|x| *x /= n);
    true
}

/// Learns `p.atoms` atoms for the signals `h` (rows of `c`), `s` atoms per code.
pub fn learn(
    h: &[f64],
    c: usize,
    s: usize,
    p: &LearnParams,
    progress: &Progress,
) -> Result<Learned, AnalysisError> {
    let n = h.len() / c.max(1);
    let m = p.atoms;
    if m < s || m == 0 {
        return Err(AnalysisError::invalid(
            "learn.atoms",
            format!("must be at least the sparsity {s}"),
        ));
    }
    if p.iterations == 0 || p.iterations > 10_000 {
        return Err(AnalysisError::invalid(
            "learn.iterations",
            "must be in 1..=10000",
        ));
    }
    if p.method == Method::Online && p.batch_size == 0 {
        return Err(AnalysisError::invalid(
            "learn.batch_size",
            "must be positive",
        ));
    }
    let mut rng = SplitMix64::new(p.seed);
    let mut dict = vec![0f64; m * c];
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut rng, &mut order);
    let mut taken = order
        .iter()
        .copied()
        .filter(|&i| h[i * c..(i + 1) * c].iter().any(|&v| v != 0.0));
    for k in 0..m {
        let atom = &mut dict[k * c..(k + 1) * c];
        match taken.next() {
            Some(i) => atom.copy_from_slice(&h[i * c..(i + 1) * c]),
            None => atom.iter_mut().for_each(|x| *x = rng.normal()),
        }
        if !normalise(atom) {
            atom[k % c] = 1.0;
        }
    }
    progress.plan(p.iterations);
    let mut out = Learned {
        dict,
        m,
        mse_history: Vec::new(),
        replaced: 0,
    };
    for _ in 0..p.iterations {
        progress.check()?;
        match p.method {
            Method::Mod | Method::Ksvd => {
                let mut codes = encode(&out.dict, m, c, h, s)?;
                out.mse_history
                    .push(squared_error(&out.dict, c, h, &codes) / (n * c) as f64);
                if p.method == Method::Mod {
                    mod_update(&mut out.dict, m, c, h, &codes)?;
                } else {
                    ksvd_update(&mut out.dict, m, c, h, &mut codes);
                }
                out.replaced += replace_dead(&mut out.dict, m, c, h, &codes);
            }
            Method::Online => {
                let (mse, replaced) =
                    online_pass(&mut out.dict, m, c, h, s, p.batch_size, &mut rng, progress)?;
                out.mse_history.push(mse);
                out.replaced += replaced;
            }
        }
        progress.step()?;
    }
    let codes = encode(&out.dict, m, c, h, s)?;
    out.mse_history
        .push(squared_error(&out.dict, c, h, &codes) / (n * c) as f64);
    Ok(out)
}

/// Adds the codes' statistics of signals `h` (rows of `c`): `A += sum_i g_i g_i^T` (M x M)
/// and `B += sum_i g_i h_i^T` (M x C), both row-major, over each code's non-zeros only.
fn accumulate(a: &mut [f64], b: &mut [f64], m: usize, c: usize, h: &[f64], codes: &Codes) {
    for (i, code) in codes.atoms.iter().enumerate() {
        let hi = &h[i * c..(i + 1) * c];
        for &(k, g) in code {
            for &(l, gl) in code {
                a[k * m + l] += g * gl;
            }
            b[k * c..(k + 1) * c]
                .iter_mut()
                .zip(hi)
                .for_each(|(x, y)| *x += g * y);
        }
    }
}

/// MOD: least-squares dictionary for fixed codes, then unit rows.
fn mod_update(
    dict: &mut [f64],
    m: usize,
    c: usize,
    h: &[f64],
    codes: &Codes,
) -> Result<(), AnalysisError> {
    let mut a = vec![0f64; m * m];
    let mut b = vec![0f64; m * c];
    accumulate(&mut a, &mut b, m, c, h, codes);
    for k in 0..m {
        a[k * m + k] += 1e-10;
    }
    // Cholesky A = L L^T, then solve for every column of B.
    let mut l = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|t| l[i * m + t] * l[j * m + t]).sum();
            if i == j {
                let d = a[i * m + i] - sum;
                if d <= 0.0 {
                    return Err(AnalysisError::Compute(
                        "MOD: codes' Gram matrix is not positive definite".into(),
                    ));
                }
                l[i * m + i] = d.sqrt();
            } else {
                l[i * m + j] = (a[i * m + j] - sum) / l[j * m + j];
            }
        }
    }
    for col in 0..c {
        let mut y = vec![0f64; m];
        for i in 0..m {
            let sum: f64 = (0..i).map(|t| l[i * m + t] * y[t]).sum();
            y[i] = (b[i * c + col] - sum) / l[i * m + i];
        }
        for i in (0..m).rev() {
            let sum: f64 = (i + 1..m).map(|t| l[t * m + i] * dict[t * c + col]).sum();
            dict[i * c + col] = (y[i] - sum) / l[i * m + i];
        }
    }
    for k in 0..m {
        normalise(&mut dict[k * c..(k + 1) * c]);
    }
    Ok(())
}

/// Approximate K-SVD: atoms in order, each with one power step on its signals' residual.
fn ksvd_update(dict: &mut [f64], m: usize, c: usize, h: &[f64], codes: &mut Codes) {
    // Residuals and, per atom, (signal, position in its code).
    let mut r: Vec<f64> = h.to_vec();
    let mut users: Vec<Vec<(usize, usize)>> = vec![Vec::new(); m];
    for (i, code) in codes.atoms.iter().enumerate() {
        for (pos, &(k, g)) in code.iter().enumerate() {
            r[i * c..(i + 1) * c]
                .iter_mut()
                .zip(&dict[k * c..(k + 1) * c])
                .for_each(|(x, d)| *x -= g * d);
            users[k].push((i, pos));
        }
    }
    for (k, us) in users.iter().enumerate() {
        if us.is_empty() {
            continue;
        }
        // E = R[w] + g d^T; d' = E^T g / |E^T g|; g' = E d'; R[w] = E - g' d'^T.
        let d_old = dict[k * c..(k + 1) * c].to_vec();
        let mut d = vec![0f64; c];
        for &(i, pos) in us {
            let g = codes.atoms[i][pos].1;
            let ri = &mut r[i * c..(i + 1) * c];
            ri.iter_mut().zip(&d_old).for_each(|(x, dv)| *x += g * dv);
            d.iter_mut()
                .zip(ri.iter())
                .for_each(|(acc, e)| *acc += g * e);
        }
        if !normalise(&mut d) {
            d = d_old;
        }
        for &(i, pos) in us {
            let ri = &mut r[i * c..(i + 1) * c];
            let g: f64 = ri.iter().zip(&d).map(|(e, dv)| e * dv).sum();
            ri.iter_mut().zip(&d).for_each(|(x, dv)| *x -= g * dv);
            codes.atoms[i][pos].1 = g;
        }
        dict[k * c..(k + 1) * c].copy_from_slice(&d);
    }
}

/// Replaces atoms no code uses by the worst-reconstructed signals; how many were replaced.
fn replace_dead(dict: &mut [f64], m: usize, c: usize, h: &[f64], codes: &Codes) -> usize {
    let mut used = vec![false; m];
    codes
        .atoms
        .iter()
        .flatten()
        .for_each(|&(k, _)| used[k] = true);
    let dead: Vec<usize> = (0..m).filter(|&k| !used[k]).collect();
    if dead.is_empty() {
        return 0;
    }
    let mut err: Vec<(f64, usize)> = codes
        .atoms
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let mut ri = h[i * c..(i + 1) * c].to_vec();
            for &(k, g) in code {
                ri.iter_mut()
                    .zip(&dict[k * c..(k + 1) * c])
                    .for_each(|(x, d)| *x -= g * d);
            }
            (ri.iter().map(|v| v * v).sum::<f64>(), i)
        })
        .collect();
    err.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut replaced = 0;
    for (k, (_, i)) in dead.into_iter().zip(err) {
        let mut atom = h[i * c..(i + 1) * c].to_vec();
        if normalise(&mut atom) {
            dict[k * c..(k + 1) * c].copy_from_slice(&atom);
            replaced += 1;
        }
    }
    replaced
}

/// One online pass (Mairal et al. 2009) in seeded order; the pass's mean coding MSE and the
/// atoms replaced.
#[allow(clippy::too_many_arguments)]
fn online_pass(
    dict: &mut [f64],
    m: usize,
    c: usize,
    h: &[f64],
    s: usize,
    batch: usize,
    rng: &mut SplitMix64,
    progress: &Progress,
) -> Result<(f64, usize), AnalysisError> {
    let n = h.len() / c;
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(rng, &mut order);
    let mut a = vec![0f64; m * m];
    let mut b = vec![0f64; m * c];
    let (mut se, mut replaced) = (0.0, 0);
    for chunk in order.chunks(batch) {
        progress.check()?;
        let hb: Vec<f64> = chunk
            .iter()
            .flat_map(|&i| h[i * c..(i + 1) * c].iter().copied())
            .collect();
        let codes = encode(dict, m, c, &hb, s)?;
        se += squared_error(dict, c, &hb, &codes);
        accumulate(&mut a, &mut b, m, c, &hb, &codes);
        for j in 0..m {
            let ajj = a[j * m + j];
            if ajj < 1e-12 {
                continue;
            }
            // u = (b_j - D^T a_j) / A_jj + d_j.
            let mut u = b[j * c..(j + 1) * c].to_vec();
            for k in 0..m {
                let akj = a[k * m + j];
                if akj != 0.0 {
                    u.iter_mut()
                        .zip(&dict[k * c..(k + 1) * c])
                        .for_each(|(x, d)| *x -= akj * d);
                }
            }
            u.iter_mut()
                .zip(&dict[j * c..(j + 1) * c])
                .for_each(|(x, d)| *x = *x / ajj + d);
            if normalise(&mut u) {
                dict[j * c..(j + 1) * c].copy_from_slice(&u);
            }
        }
    }
    // Atoms no mini-batch used in the whole pass are replaced (per batch, most atoms are unused).
    if (0..m).any(|j| a[j * m + j] < 1e-12) {
        let codes = encode(dict, m, c, h, s)?;
        replaced += replace_dead(dict, m, c, h, &codes);
    }
    Ok((se / h.len().max(1) as f64, replaced))
}

#[cfg(test)]
mod tests;
