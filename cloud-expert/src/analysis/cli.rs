//! `cloud-expert analyze <kind>`: the HTTP analyses on local files, same definitions and JSON.

use super::attribution::{expert, poison::PoisonParams, AttributionParams};
use super::{dictlearn, id, omp, spectrum, AnalysisError, Points};
use crate::config::{AnalyzeArgs, AnalyzeKind};

/// Runs the analysis `a` asks for; its report as JSON.
pub fn run(a: &AnalyzeArgs) -> Result<serde_json::Value, AnalysisError> {
    let json = |r: Result<_, AnalysisError>| r.map(|v| serde_json::to_value(v).unwrap_or_default());
    if let AnalyzeKind::Attribution = a.kind {
        return attribution(a);
    }
    let input = a
        .input
        .as_deref()
        .ok_or_else(|| AnalysisError::invalid("--input", "required for this analysis"))?;
    match a.kind {
        AnalyzeKind::Attribution => unreachable!("handled above"),
        AnalyzeKind::IntrinsicDimension => {
            let params = id::IdParams {
                k: a.k,
                discard_fraction: a.discard_fraction,
                alpha_ratio: a.alpha_ratio,
                pointwise: a.pointwise,
            };
            json(id::intrinsic_dimension(&Points::read_file(input)?, &params))
        }
        AnalyzeKind::SparseCode => {
            let signals = Points::read_file(input)?;
            if let Some(d) = &a.dictionary {
                return omp::report(&signals, &Points::read_file(d)?, a.sparsity);
            }
            let method: dictlearn::Method = enum_arg(&a.method, "--method", "ksvd, mod, online")?;
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
            let layers = spectrum::read_matrices(input)?;
            let initial = match &a.initial {
                Some(p) => spectrum::read_matrices(p)?,
                None => Vec::new(),
            };
            let directions: Vec<spectrum::alignment::Direction> = match &a.directions {
                Some(p) => {
                    let field = "--directions";
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| AnalysisError::invalid(field, e.to_string()))?;
                    serde_json::from_str(&text)
                        .map_err(|e| AnalysisError::invalid(field, e.to_string()))?
                }
                None => Vec::new(),
            };
            spectrum::alignment::check(
                &directions,
                layers.iter().map(|m| (m.name.as_str(), m.rows, m.cols)),
            )?;
            let opts = spectrum::SpectrumOptions {
                eigenvalues: a.eigenvalues,
                randomize: a.randomize,
                seed: 0,
                directions,
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

/// `analyze attribution`: an expert of `--repo` against its recorded training set.
fn attribution(a: &AnalyzeArgs) -> Result<serde_json::Value, AnalysisError> {
    let need = |flag: &str| AnalysisError::invalid(flag, "required for attribution");
    let repo = a.repo.as_ref().ok_or_else(|| need("--repo"))?;
    let model = a.model.as_deref().ok_or_else(|| need("--model"))?;
    let dir = offload_shared::repository::Repository::new(repo)
        .version_dir(model, a.version.as_deref())
        .map_err(|e| AnalysisError::invalid("--model", e.to_string()))?;
    let params = AttributionParams {
        kernel: enum_arg(&a.kernel, "--kernel", "pntk, trntk")?,
        projection: a.projection,
        l2: a.l2,
        targets: enum_arg(&a.targets, "--targets", "network, labels")?,
        max_train: a.max_train,
        seed: a.seed,
        tol: a.surrogate_tol,
        ..AttributionParams::default()
    };
    let poison = a.poison_fraction.map(|fraction| PoisonParams {
        fraction,
        epochs: a.poison_epochs,
        seed: a.seed,
        ..PoisonParams::default()
    });
    let out = expert::run(
        &dir,
        None,
        &params,
        poison.as_ref(),
        usize::MAX,
        &super::Progress::default(),
    )?;
    if let (Some(path), expert::Outcome::Attribution(r)) = (&a.dump, &out) {
        if let Some(arrays) = &r.arrays {
            dump(path, arrays)?;
        }
    }
    Ok(out.to_json())
}

/// Writes the attribution's arrays as JSON (for cross-checks against other tools).
fn dump(path: &std::path::Path, a: &super::attribution::Arrays) -> Result<(), AnalysisError> {
    let rows = |t: &tch::Tensor| -> Result<Vec<Vec<f64>>, AnalysisError> {
        let t = t.to_kind(tch::Kind::Double);
        Ok(Vec::<Vec<f64>>::try_from(&t)?)
    };
    let v = serde_json::json!({
        "points": rows(&a.points)?,
        "kernel": rows(&a.kernel)?,
        "surrogate_query_proba": rows(&a.surrogate_query_proba)?,
        "network_query_proba": rows(&a.network_query_proba)?,
        "train_index": a.train_index,
        "train_labels": a.train_labels,
    });
    std::fs::write(path, v.to_string()).map_err(|e| AnalysisError::invalid("--dump", e.to_string()))
}

/// A kebab/lowercase enum flag parsed by its serde name.
fn enum_arg<T: serde::de::DeserializeOwned>(
    v: &str,
    flag: &str,
    one_of: &str,
) -> Result<T, AnalysisError> {
    serde_json::from_value(serde_json::json!(v))
        .map_err(|_| AnalysisError::invalid(flag, format!("one of {one_of}")))
}
