//! SVG plot of the accuracy-versus-offload-rate curves, one panel per cost pair.

use crate::report::Report;
use std::fmt::Write;

const W: f64 = 360.0;
const H: f64 = 280.0;
const PAD: f64 = 45.0;

/// Renders the report's curves (L2H, confidence, random) with the oracle and L2H operating points.
pub fn curves_svg(report: &Report) -> String {
    let panels: Vec<_> = report.curves.iter().collect();
    let width = W * panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let lo = panels
        .iter()
        .flat_map(|(_, c)| c.values().flatten().map(|p| p.system_accuracy))
        .fold(1.0f64, f64::min)
        .clamp(0.0, 1.0);
    let lo = (lo * 20.0).floor() / 20.0;
    for (i, (key, curves)) in panels.iter().enumerate() {
        let x0 = i as f64 * W;
        let px = |r: f64| x0 + PAD + r * (W - 1.5 * PAD);
        let py = |a: f64| H - PAD - (a - lo) / (1.0 - lo).max(1e-9) * (H - 1.7 * PAD);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="16" text-anchor="middle" font-weight="bold">(c_1, c_e) = ({key})</text>"#,
            x0 + W / 2.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            px(0.0),
            py(1.0),
            px(1.0) - px(0.0),
            py(lo) - py(1.0)
        );
        for t in 0..=4 {
            let r = t as f64 / 4.0;
            let a = lo + (1.0 - lo) * r;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.2}</text>"#,
                px(r),
                H - PAD + 14.0,
                r
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{:.2}</text>"#,
                px(0.0) - 4.0,
                py(a) + 4.0,
                a
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">offload rate</text>"#,
            x0 + W / 2.0,
            H - 8.0
        );
        for (name, color, dash) in [
            ("random", "#999", "4 3"),
            ("confidence", "#e67e22", ""),
            ("l2h", "#1f77b4", ""),
        ] {
            if let Some(pts) = curves.get(name) {
                let path: Vec<String> = pts
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", px(p.offload_rate), py(p.system_accuracy)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6" stroke-dasharray="{dash}"/>"#,
                    path.join(" ")
                );
            }
        }
        if let Some(methods) = report.results.get(*key) {
            for (name, color) in [
                ("oracle", "#2ca02c"),
                ("l2h", "#1f77b4"),
                ("confidence", "#e67e22"),
            ] {
                if let Some(r) = methods.get(name) {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{name}</title></circle>"#,
                        px(r.offload_rate),
                        py(r.system_accuracy)
                    );
                }
            }
        }
        for (j, (name, color)) in [
            ("L2H", "#1f77b4"),
            ("confidence", "#e67e22"),
            ("random", "#999"),
            ("oracle", "#2ca02c"),
        ]
        .iter()
        .enumerate()
        {
            let y = py(lo) - 12.0 - 13.0 * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="10" height="3" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
                px(0.62),
                y - 3.0,
                px(0.62) + 14.0,
                y + 1.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
