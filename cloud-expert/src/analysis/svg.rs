//! A self-contained SVG of one layer's ESD: the histogram of log10 eigenvalues (as a density
//! per unit log10 lambda), the Marchenko-Pastur density of the fitted bulk, and the power-law
//! density on the tail.

use super::powerlaw::PowerLawFit;
use super::spectrum::{log_histograms, MpFit, BINS};
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 400.0;
const PAD: f64 = 50.0;

/// The plot as an SVG document.
pub fn esd_plot(
    name: &str,
    evals: &[f64],
    mp: &MpFit,
    n: usize,
    m: usize,
    pl: Option<&PowerLawFit>,
) -> String {
    let (hist, _, lo, width) = log_histograms(evals, evals, BINS);
    let total = evals.len().max(1) as f64;
    let kept = evals.iter().filter(|&&x| x > 1e-12).count() as f64;
    // Density per unit log10 lambda, over all eigenvalues.
    let bars: Vec<f64> = hist.iter().map(|f| f * kept / total / width).collect();
    let hi = lo + width * BINS as f64;
    let ln10 = std::f64::consts::LN_10;
    let curve = |f: &dyn Fn(f64) -> f64| -> Vec<(f64, f64)> {
        (0..=400)
            .map(|i| lo + (hi - lo) * i as f64 / 400.0)
            .map(|l| (l, f(10f64.powf(l))))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect()
    };
    // MP density of lambda / (s2 N) with ratio y = M / N, times the Jacobian to log10 lambda.
    let y = m as f64 / n as f64;
    let scale = mp.sigma2 * n as f64;
    let mp_pts = curve(&|lam| {
        let x = lam / scale;
        let (a, b) = ((1.0 - y.sqrt()).powi(2), (1.0 + y.sqrt()).powi(2));
        if x <= a || x >= b {
            return 0.0;
        }
        ((b - x) * (x - a)).sqrt() / (2.0 * std::f64::consts::PI * y * x) * x * ln10
    });
    let pl_pts = pl.map(|p| {
        let frac = p.n_tail as f64 / total;
        curve(&|lam| {
            if lam < p.xmin {
                return 0.0;
            }
            frac * (p.alpha - 1.0) / p.xmin * (lam / p.xmin).powf(-p.alpha) * lam * ln10
        })
    });
    let ymax = bars
        .iter()
        .copied()
        .chain(mp_pts.iter().map(|p| p.1))
        .fold(1e-12, f64::max)
        * 1.1;
    let px = |l: f64| PAD + (l - lo) / (hi - lo).max(1e-12) * (W - 2.0 * PAD);
    let py = |v: f64| H - PAD - v.min(ymax) / ymax * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">ESD of {}</text>"#,
        W / 2.0,
        escape(name)
    );
    for (i, b) in bars.iter().enumerate() {
        let (x0, x1) = (px(lo + width * i as f64), px(lo + width * (i + 1) as f64));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#9ecae1"/>"##,
            py(*b),
            (x1 - x0).max(0.5),
            H - PAD - py(*b)
        );
    }
    let poly = |pts: &[(f64, f64)], style: &str| {
        let p: Vec<String> = pts
            .iter()
            .map(|(l, v)| format!("{:.1},{:.1}", px(*l), py(*v)))
            .collect();
        format!(
            r#"<polyline fill="none" {style} points="{}"/>"#,
            p.join(" ")
        )
    };
    s.push_str(&poly(&mp_pts, r##"stroke="#d62728" stroke-width="2""##));
    if let Some(pts) = &pl_pts {
        s.push_str(&poly(
            pts,
            r##"stroke="#2ca02c" stroke-width="2" stroke-dasharray="6 4""##,
        ));
    }
    // Axes with decade ticks.
    let _ = write!(
        s,
        r#"<line x1="{PAD}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{0}" stroke="black"/>"#,
        H - PAD,
        W - PAD
    );
    for d in (lo.ceil() as i64)..=(hi.floor() as i64) {
        let x = px(d as f64);
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{0}" x2="{x:.1}" y2="{1}" stroke="black"/><text x="{x:.1}" y="{2}" text-anchor="middle">1e{d}</text>"#,
            H - PAD,
            H - PAD + 5.0,
            H - PAD + 18.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">eigenvalue of W^T W (log scale)</text>"#,
        W / 2.0,
        H - 12.0
    );
    let legend = match pl {
        Some(p) => format!(
            "MP bulk (red), power law alpha = {:.3}, xmin = {:.4e} (green)",
            p.alpha, p.xmin
        ),
        None => "MP bulk (red)".to_string(),
    };
    let _ = write!(
        s,
        r#"<text x="{}" y="40" text-anchor="end">{legend}</text></svg>"#,
        W - PAD
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
