//! `cloud-expert analyze <kind>`: the HTTP analyses on local files, same definitions and JSON.

use super::{dictlearn, id, omp, spectrum, AnalysisError, Points};
use crate::config::{AnalyzeArgs, AnalyzeKind};

/// Runs the analysis `a` asks for; its report as JSON.
pub fn run(a: &AnalyzeArgs) -> Result<serde_json::Value, AnalysisError> {
    let json = |r: Result<_, AnalysisError>| r.map(|v| serde_json::to_value(v).unwrap_or_default());
    match a.kind {
        AnalyzeKind::IntrinsicDimension => {
            let params = id::IdParams {
                k: a.k,
                discard_fraction: a.discard_fraction,
                alpha_ratio: a.alpha_ratio,
                pointwise: a.pointwise,
            };
            json(id::intrinsic_dimension(
                &Points::read_file(&a.input)?,
                &params,
            ))
        }
        AnalyzeKind::SparseCode => {
            let signals = Points::read_file(&a.input)?;
            if let Some(d) = &a.dictionary {
                return omp::report(&signals, &Points::read_file(d)?, a.sparsity);
            }
            let method: dictlearn::Method = serde_json::from_value(serde_json::json!(a.method))
                .map_err(|_| AnalysisError::invalid("--method", "one of ksvd, mod, online"))?;
            let params = dictlearn::LearnParams {
                method,
                atoms: a.atoms,
                iterations: a.iterations,
                seed: a.seed,
                ..dictlearn::LearnParams::default()
            };
            if a.sparsity == 0 || a.sparsity > a.atoms {
                return Err(AnalysisError::invalid(
                    "--sparsity",
                    format!("must be in 1..={}", a.atoms),
                ));
            }
            let h: Vec<f64> = signals.data.iter().map(|&v| f64::from(v)).collect();
            let learned = dictlearn::learn(
                &h,
                signals.d,
                a.sparsity,
                &params,
                &super::Progress::default(),
            )?;
            let mut r = omp::report_with(
                &learned.dict,
                learned.m,
                signals.d,
                &h,
                signals.dropped,
                a.sparsity,
            )?;
            r["dictionary_learning"] = serde_json::json!({"method": method, "atoms": learned.m,
                "iterations": a.iterations, "seed": a.seed, "mse_history": learned.mse_history,
                "replaced_atoms": learned.replaced});
            Ok(r)
        }
        AnalyzeKind::Spectrum => {
            let layers = spectrum::read_matrices(&a.input)?;
            let initial = match &a.initial {
                Some(p) => spectrum::read_matrices(p)?,
                None => Vec::new(),
            };
            let opts = spectrum::SpectrumOptions {
                eigenvalues: a.eigenvalues,
                randomize: a.randomize,
                seed: 0,
                svg: a.svg_dir.is_some(),
            };
            let mut out = Vec::new();
            for (i, m) in layers.iter().enumerate() {
                // A single .npy pair matches by position, layers of a file by name.
                let init = initial
                    .iter()
                    .find(|w| w.name == m.name)
                    .or_else(|| (layers.len() == 1 && initial.len() == 1).then(|| &initial[0]));
                let mut r = spectrum::analyze(m, init, &opts)?;
                if let (Some(dir), Some(svg)) = (&a.svg_dir, r.svg.take()) {
                    std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::write(dir.join(format!("layer{i:03}.svg")), svg))
                        .map_err(|e| AnalysisError::invalid("--svg-dir", e.to_string()))?;
                }
                out.push(r);
            }
            Ok(serde_json::json!({ "layers": out }))
        }
    }
}
