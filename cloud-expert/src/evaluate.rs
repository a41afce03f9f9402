//! `cloud-expert eval` and `cloud-expert check-export`: re-score a stored pair with the device
//! engine, and prove the exported rejector equals the trained one.

use crate::config::{CheckExportArgs, EvalArgs};
use crate::error::{io_err, CloudError};
use crate::report::Report;
use crate::train::tensors::SplitTensors;
use crate::train::{onnx_scores, parse_grid, predictions};
use offload_shared::dataset::npy;
use offload_shared::eval::compare_methods;
use offload_shared::rejector::{trained_threshold, RejectorKind};

/// Scores the stored pair on its test split under each cost pair of the grid. A score rejector's
/// rule is fixed by training (threshold 0.5); a plug-in rejector re-decides with each c_e.
pub fn run_eval(a: &EvalArgs) -> Result<Report, CloudError> {
    let stored = crate::stored::load(&a.repo, &a.model, a.version.as_deref())?;
    let splits = stored.expert_meta.dataset.load_splits()?;
    let test = SplitTensors::new(&splits.test, &stored.legacy, tch::Device::Cpu)?;
    let meta = &stored.rejector_meta;
    let mut report = Report {
        model: a.model.clone(),
        version: meta.version.clone(),
        task: format!("{:?}", stored.expert_meta.dataset.task),
        mode: format!("{:?}", stored.models.mode),
        deployed_costs: meta.costs.key(),
        rejector_uses_legacy_probs: meta.uses_legacy_probs,
        n_test: test.len(),
        ..Default::default()
    };
    let e_pred = stored.models.expert_predictions(&test.x);
    if let Some(path) = &a.predictions_out {
        write_predictions(path, &stored, &test, &e_pred)?;
    }
    for costs in parse_grid(&a.grid)? {
        let threshold = match meta.kind {
            RejectorKind::Score => meta.threshold,
            RejectorKind::PlugIn => trained_threshold(meta.kind, costs),
        };
        let scores = onnx_scores(&stored.rejector, &test, costs.c1)?;
        let cmp = compare_methods(
            &predictions(&test, e_pred.clone()),
            &scores,
            threshold,
            costs,
        );
        report.insert(&costs.key(), cmp);
    }
    Ok(report)
}

/// Per-input answers of the deployed rule, as the live system must reproduce them.
fn write_predictions(
    path: &std::path::Path,
    stored: &crate::stored::StoredPair,
    test: &SplitTensors,
    e_pred: &[u32],
) -> Result<(), CloudError> {
    use std::io::Write;
    let meta = &stored.rejector_meta;
    let scores = onnx_scores(&stored.rejector, test, meta.costs.c1)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io_err(path))?);
    for (i, &score) in scores.iter().enumerate() {
        let offload = score > meta.threshold;
        let label = if offload { e_pred[i] } else { test.m_pred[i] };
        let line = serde_json::json!({"id": i, "offload": offload, "label": label, "score": score, "true_label": test.labels[i]});
        writeln!(f, "{line}").map_err(io_err(path))?;
    }
    f.flush().map_err(io_err(path))
}

/// Compares tch and ONNX rejector outputs on the test split; optionally writes reference arrays.
/// Returns the largest absolute difference.
pub fn run_check(a: &CheckExportArgs) -> Result<f32, CloudError> {
    let stored = crate::stored::load(&a.repo, &a.model, a.version.as_deref())?;
    let splits = stored.expert_meta.dataset.load_splits()?;
    let test = SplitTensors::new(&splits.test, &stored.legacy, tch::Device::Cpu)?;
    let n = test.len();
    let onnx = stored
        .rejector
        .outputs(&test.features, &test.m_probs_host, n)?;
    let tch_out = crate::nets::to_vec(&tch::no_grad(|| {
        stored.models.rejector_outputs(&test.x, &test.m_probs)
    }))?;
    if onnx.len() != tch_out.len() {
        return Err(CloudError::ExportMismatch(format!(
            "{} ONNX values vs {} tch values",
            onnx.len(),
            tch_out.len()
        )));
    }
    let diff = onnx
        .iter()
        .zip(&tch_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        let mut shape = vec![n];
        shape.extend_from_slice(stored.rejector.input_shape());
        let write = |name: &str, shape: &[usize], vals: &[f32]| -> Result<(), CloudError> {
            let p = out.join(name);
            let mut f = std::fs::File::create(&p).map_err(io_err(&p))?;
            let v: Vec<f64> = vals.iter().map(|&x| x as f64).collect();
            npy::write(&mut f, shape, &v, npy::NpyDtype::F32).map_err(io_err(&p))
        };
        write("input.npy", &shape, &test.features)?;
        let k = stored.legacy.num_classes();
        write("legacy_probs.npy", &[n, k], &test.m_probs_host)?;
        let width = tch_out.len() / n.max(1);
        let oshape = if width == 1 { vec![n] } else { vec![n, width] };
        write("tch_outputs.npy", &oshape, &tch_out)?;
        std::fs::write(
            out.join("uses_legacy_probs"),
            stored.rejector.uses_legacy_probs().to_string(),
        )
        .map_err(io_err(out))?;
        std::fs::copy(stored.dir.join("rejector.onnx"), out.join("rejector.onnx"))
            .map_err(io_err(out))?;
    }
    if diff > a.tolerance {
        return Err(CloudError::ExportMismatch(format!(
            "max |tch - ONNX| = {diff:e} exceeds {:e}",
            a.tolerance
        )));
    }
    Ok(diff)
}
