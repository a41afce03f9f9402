//! The kernel surrogate of spec §5: a multinomial logistic regression with an L2 penalty whose
//! features are the kernel rows `K(x, train)`, fitted by truncated Newton in float64, and Kendall's tau-b
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
    /// Newton iterations run.
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

/// Conjugate-gradient steps at most per Newton step.
const MAX_CG: usize = 500;

/// Fits the surrogate to `targets` (`[n, classes]` rows summing to one).
///
/// Truncated Newton (scikit-learn's `newton-cg`): each step solves `H d = -g` approximately by
/// conjugate gradients on Hessian-vector products (two matrix products each, the Hessian is
/// never formed), to a relative residual `min(0.5, sqrt(|g|))`, then backtracks along `d`.
/// Kernel rows are strongly correlated, which leaves first-order methods crawling (L-BFGS took
/// 746-1,000+ iterations where this takes about 15).
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
    // Objective, gradient and the class probabilities (the Hessian's ingredient) at theta.
    let eval = |theta: &Tensor| -> (f64, Tensor, Tensor) {
        let (w, b) = split(theta);
        let logp = (f.mm(&w) + &b).log_softmax(1, Kind::Double);
        let loss = -(&t * &logp).sum(Kind::Double).double_value(&[]) / n as f64
            + 0.5 * l2 * w.square().sum(Kind::Double).double_value(&[]);
        let probs = logp.exp();
        let r = (&probs - &t) / n as f64;
        let gw = f.tr().mm(&r) + &w * l2;
        let gb = r.sum_dim_intlist(0, false, Kind::Double);
        (loss, Tensor::cat(&[gw.view([-1]), gb], 0), probs)
    };
    // H v: the softmax Jacobian (diag(P) - P P^T per row) between the two products with F.
    let hvp = |probs: &Tensor, v: &Tensor| -> Tensor {
        let (vw, vb) = split(v);
        let u = f.mm(&vw) + &vb;
        let pu = probs * &u;
        let s = (&pu - probs * pu.sum_dim_intlist(1, true, Kind::Double)) / n as f64;
        let hw = f.tr().mm(&s) + &vw * l2;
        let hb = s.sum_dim_intlist(0, false, Kind::Double);
        Tensor::cat(&[hw.view([-1]), hb], 0)
    };
    let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Double).double_value(&[]);
    let mut theta = Tensor::zeros([p * c + c], (Kind::Double, tch::Device::Cpu));
    let (mut loss, mut grad, mut probs) = eval(&theta);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        if grad.abs().max().double_value(&[]) < tol {
            converged = true;
            break;
        }
        let dir = newton_direction(&grad, |v| hvp(&probs, v), dot);
        let slope = dot(&grad, &dir);
        // Backtracking Armijo line search (the full step is taken near the optimum).
        let mut step = 1.0;
        let (new_theta, new_loss, new_grad, new_probs) = loop {
            let cand = &theta + &dir * step;
            let (l, g, pr) = eval(&cand);
            if l <= loss + 1e-4 * step * slope || step < 1e-12 {
                break (cand, l, g, pr);
            }
            step *= 0.5;
        };
        let improvement = loss - new_loss;
        (theta, loss, grad, probs) = (new_theta, new_loss, new_grad, new_probs);
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

/// Conjugate gradients on `H d = -g` from `d = 0`, stopped at a relative residual
/// `min(0.5, sqrt(|g|))` (superlinear near the optimum) or at non-positive curvature; falls
/// back to `-g` if the first direction already has none. Invariant: the result descends.
fn newton_direction(
    grad: &Tensor,
    hvp: impl Fn(&Tensor) -> Tensor,
    dot: impl Fn(&Tensor, &Tensor) -> f64,
) -> Tensor {
    let gnorm = dot(grad, grad).sqrt();
    let target = 0.5f64.min(gnorm.sqrt()) * gnorm;
    let mut d = grad.zeros_like();
    let mut r = -grad;
    let mut q = r.copy();
    let mut rr = gnorm * gnorm;
    for k in 0..MAX_CG {
        if rr.sqrt() <= target {
            break;
        }
        let hq = hvp(&q);
        let curvature = dot(&q, &hq);
        if curvature <= 0.0 {
            if k == 0 {
                return -grad;
            }
            break;
        }
        let alpha = rr / curvature;
        d += &q * alpha;
        r -= &hq * alpha;
        let rr_next = dot(&r, &r);
        q = &r + &q * (rr_next / rr);
        rr = rr_next;
    }
    d
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
