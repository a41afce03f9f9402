//! The kernel surrogate of spec §5: a multinomial logistic regression with an L2 penalty whose
//! features are the kernel rows `K(x, train)`, fitted by L-BFGS in float64, and Kendall's tau-b
//! for its faithfulness.
//!
//! Objective over `n` rows with target distributions `T` (one-hot labels or the network's
//! probabilities): `mean_i CE(T_i, softmax(F_i W + b)) + l2/2 ||W||^2` (the intercept is not
//! penalised). With one-hot targets this is scikit-learn's `LogisticRegression(C = 1/(n l2))`.

use crate::analysis::AnalysisError;
use tch::{Kind, Tensor};

/// A fitted surrogate.
#[derive(Debug)]
pub struct Surrogate {
    /// `[features, classes]`: one weight per training point and class.
    pub w: Tensor,
    /// `[classes]`.
    pub b: Tensor,
    /// L-BFGS iterations run.
    pub iterations: usize,
    /// Whether the gradient norm fell below the tolerance.
    pub converged: bool,
    /// Final objective value.
    pub objective: f64,
}

impl Surrogate {
    /// Class probabilities of feature rows `[m, features]`.
    pub fn proba(&self, f: &Tensor) -> Tensor {
        (f.mm(&self.w) + &self.b).softmax(1, Kind::Double)
    }
}

/// History length of L-BFGS.
const MEMORY: usize = 10;

/// Fits the surrogate to `targets` (`[n, classes]` rows summing to one).
pub fn fit(
    f: &Tensor,
    targets: &Tensor,
    l2: f64,
    max_iter: usize,
    tol: f64,
) -> Result<Surrogate, AnalysisError> {
    if !(l2 > 0.0 && l2.is_finite()) {
        return Err(AnalysisError::invalid("l2", "must be positive"));
    }
    let (n, p) = (f.size()[0], f.size()[1]);
    let c = targets.size()[1];
    let f = f.to_kind(Kind::Double);
    let t = targets.to_kind(Kind::Double);
    // theta = [vec(W) (p*c), b (c)]
    let split = |theta: &Tensor| {
        (
            theta.narrow(0, 0, p * c).view([p, c]),
            theta.narrow(0, p * c, c),
        )
    };
    let eval = |theta: &Tensor| -> (f64, Tensor) {
        let (w, b) = split(theta);
        let z = f.mm(&w) + &b;
        let logp = z.log_softmax(1, Kind::Double);
        let loss = -(&t * &logp).sum(Kind::Double).double_value(&[]) / n as f64
            + 0.5 * l2 * w.square().sum(Kind::Double).double_value(&[]);
        let r = (logp.exp() - &t) / n as f64;
        let gw = f.tr().mm(&r) + &w * l2;
        let gb = r.sum_dim_intlist(0, false, Kind::Double);
        (loss, Tensor::cat(&[gw.view([-1]), gb], 0))
    };
    let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Double).double_value(&[]);
    let mut theta = Tensor::zeros([p * c + c], (Kind::Double, tch::Device::Cpu));
    let (mut loss, mut grad) = eval(&theta);
    let mut hist: Vec<(Tensor, Tensor, f64)> = Vec::new();
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        let gmax = grad.abs().max().double_value(&[]);
        if gmax < tol {
            converged = true;
            break;
        }
        // Two-loop recursion.
        let mut q = grad.copy();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q -= y * a;
            alphas.push(a);
        }
        let gamma = hist.last().map_or(
            1.0 / grad.norm().double_value(&[]).max(1e-12),
            |(s, y, _)| dot(s, y) / dot(y, y),
        );
        let mut r = q * gamma;
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &r);
            r += s * (a - beta);
        }
        // A direction that does not descend (lost curvature) falls back to the gradient.
        let dir = if dot(&grad, &r) > 0.0 {
            -r
        } else {
            -grad.copy()
        };
        let slope = dot(&grad, &dir);
        // Backtracking Armijo line search.
        let mut step = 1.0;
        let (new_theta, new_loss, new_grad) = loop {
            let cand = &theta + &dir * step;
            let (l, g) = eval(&cand);
            if l <= loss + 1e-4 * step * slope || step < 1e-12 {
                break (cand, l, g);
            }
            step *= 0.5;
        };
        let s = &new_theta - &theta;
        let y = &new_grad - &grad;
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            hist.push((s, y, 1.0 / sy));
            if hist.len() > MEMORY {
                let _ = hist.remove(0);
            }
        }
        let improvement = loss - new_loss;
        theta = new_theta;
        loss = new_loss;
        grad = new_grad;
        iterations += 1;
        if improvement.abs() <= 1e-15 * loss.abs().max(1.0) && step < 1e-12 {
            break;
        }
    }
    if !loss.is_finite() {
        return Err(AnalysisError::Compute(
            "the surrogate's objective is not finite".into(),
        ));
    }
    let (w, b) = split(&theta);
    Ok(Surrogate {
        w: w.copy(),
        b: b.copy(),
        iterations,
        converged,
        objective: loss,
    })
}

/// Kendall's tau-b of two equally long series (ties in either series handled as scipy does).
pub fn kendall_tau(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            match (dx == 0.0, dy == 0.0) {
                (true, true) => {}
                (true, false) => ties_x += 1,
                (false, true) => ties_y += 1,
                (false, false) => {
                    if (dx > 0.0) == (dy > 0.0) {
                        concordant += 1;
                    } else {
                        discordant += 1;
                    }
                }
            }
        }
    }
    let n0 = (concordant + discordant) as f64;
    let denom = ((n0 + ties_x as f64) * (n0 + ties_y as f64)).sqrt();
    if denom == 0.0 {
        f64::NAN
    } else {
        (concordant - discordant) as f64 / denom
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kendall_tau_matches_hand_counts() {
        // Perfect agreement, reversal, and a tie (scipy: tau_b = 0.7071...).
        assert!((kendall_tau(&[1., 2., 3.], &[4., 5., 6.]) - 1.0).abs() < 1e-15);
        assert!((kendall_tau(&[1., 2., 3.], &[6., 5., 4.]) + 1.0).abs() < 1e-15);
        let t = kendall_tau(&[1., 2., 3.], &[1., 1., 2.]);
        assert!((t - 2.0 / 6f64.sqrt()).abs() < 1e-15, "{t}");
    }

    #[test]
    fn surrogate_reaches_the_optimum_gradient_free_point() {
        let _seeded = crate::analysis::seeded_section();
        tch::manual_seed(3);
        let f = Tensor::randn([60, 8], (Kind::Double, tch::Device::Cpu));
        let labels = f.narrow(1, 0, 3).argmax(1, false);
        let t = labels.one_hot(3).to_kind(Kind::Double);
        let s = fit(&f, &t, 1e-2, 500, 1e-9).unwrap();
        assert!(s.converged, "{} iterations", s.iterations);
        // Stationarity: the gradient vanishes at the returned point.
        let r = (s.proba(&f) - &t) / 60.0;
        let gw = f.tr().mm(&r) + &s.w * 1e-2;
        assert!(gw.abs().max().double_value(&[]) < 1e-8);
        let acc = s
            .proba(&f)
            .argmax(1, false)
            .eq_tensor(&labels)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(acc > 0.9, "{acc}");
    }
}
