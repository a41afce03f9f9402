//! `cloud-expert analyze <kind>`: the HTTP analyses on local files, same definitions and JSON.

use super::{id, omp, spectrum, AnalysisError, Points};
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
            let d = a.dictionary.as_ref().ok_or_else(|| {
                AnalysisError::invalid("--dictionary", "sparse-code needs a dictionary")
            })?;
            omp::report(
                &Points::read_file(&a.input)?,
                &Points::read_file(d)?,
                a.sparsity,
            )
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
