//! `cloud-expert train`: joint training of expert and rejector for a fixed legacy model, over a
//! grid of cost pairs, writing the deployed pair as a new model-repository version.

pub mod fit;
pub mod pair;
pub mod tensors;

use crate::config::{DataArgs, TrainArgs};
use crate::error::{io_err, CloudError};
use crate::report::Report;
use fit::{fit, FitSettings};
use offload_shared::dataset::{DataSource, DatasetSpec, SplitSpec, Task};
use offload_shared::eval::{compare_methods, CostReport, Predictions};
use offload_shared::legacy::{LegacyModel, OutputKind};
use offload_shared::onnx_build::OPSET;
use offload_shared::rejector::{trained_threshold, Costs, RejectorModel};
use offload_shared::repository::{
    files, quantiles, write_json, Arch, ExpertMeta, RejectorMeta, Repository,
};
use pair::{Mode, PairModels, PairSpec};
use std::path::PathBuf;
use tensors::{SplitTensors, TaskTensors};

/// Parses the data flags into a dataset spec.
pub fn dataset_spec(a: &DataArgs) -> Result<DatasetSpec, CloudError> {
    Ok(DatasetSpec {
        source: DataSource::parse(&a.data, a.label_column.clone())?,
        task: Task::parse(&a.task)?,
        split: SplitSpec {
            seed: a.split_seed,
            val_fraction: a.val_fraction,
            test_fraction: a.test_fraction,
        },
    })
}

/// Parses `c1,ce;c1,ce;...`.
pub fn parse_grid(s: &str) -> Result<Vec<Costs>, CloudError> {
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p
                .split_once(',')
                .ok_or_else(|| CloudError::Config(format!("cost pair `{p}`: expected c1,ce")))?;
            let num = |v: &str| {
                v.trim()
                    .parse::<f32>()
                    .map_err(|e| CloudError::Config(format!("cost pair `{p}`: {e}")))
            };
            Costs::new(num(a)?, num(b)?).map_err(CloudError::Config)
        })
        .collect()
}

/// The result of a training run.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The version directory written.
    pub dir: PathBuf,
    /// Its report.
    pub report: Report,
}

/// Decision scores of an ONNX rejector (the device engine) on a split.
pub fn onnx_scores(
    rej: &RejectorModel,
    split: &SplitTensors,
    c1: f32,
) -> Result<Vec<f32>, CloudError> {
    Ok(rej.decision_scores(&split.features, &split.m_probs_host, split.len(), c1)?)
}

/// Test-split predictions of a pair.
pub fn predictions(split: &SplitTensors, e_pred: Vec<u32>) -> Predictions {
    Predictions {
        labels: split.labels.clone(),
        m_pred: split.m_pred.clone(),
        m_conf: split.m_conf.clone(),
        e_pred,
    }
}

/// Runs the whole training command.
pub fn run(a: &TrainArgs) -> Result<TrainOutcome, CloudError> {
    let spec = dataset_spec(&a.data)?;
    let deployed = Costs::new(a.c1, a.ce).map_err(CloudError::Config)?;
    let mut grid = parse_grid(&a.grid)?;
    if !grid.contains(&deployed) {
        grid.push(deployed);
    }
    let legacy_output: OutputKind = a.legacy_output.parse().map_err(CloudError::Config)?;
    let expert_arch = Arch::parse(&a.expert_arch).map_err(CloudError::Config)?;
    let rejector_arch = Arch::parse(&a.rejector_arch).map_err(CloudError::Config)?;
    if a.batch_size == 0 || a.epochs == 0 {
        return Err(CloudError::Config(
            "--batch-size and --epochs must be positive".into(),
        ));
    }
    let splits = spec.load_splits()?;
    let legacy = LegacyModel::load(&a.legacy, legacy_output)?;
    legacy.check_compatible(splits.train.sample_shape(), splits.train.num_classes())?;
    let device = if a.cuda {
        tch::Device::cuda_if_available()
    } else {
        tch::Device::Cpu
    };
    let data = TaskTensors::new(&splits, &legacy, device)?;
    let binary = data.num_classes == 2;
    let mode = a.mode.unwrap_or(if binary {
        Mode::BinarySurrogate
    } else {
        Mode::StageSwitching
    });
    let pair_spec = PairSpec {
        mode,
        expert_arch: expert_arch.clone(),
        rejector_arch: rejector_arch.clone(),
        input_shape: data.input_shape.clone(),
        num_classes: data.num_classes,
        uses_legacy_probs: a.rejector_legacy_probs || a.rejector_agreement,
        squash: a.squash,
        agreement: a.rejector_agreement,
        norm: crate::nets::normalization_from(splits.train.features(), splits.train.feature_len()),
    };
    let settings = FitSettings {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr_expert: a.lr_expert,
        lr_rejector: a.lr_rejector,
        optimizer: a.optimizer,
        weight_decay: a.weight_decay,
        sync_period: a.sync_period,
        weight_expert_by_offload: a.weight_expert_by_offload,
        alpha: a.alpha,
        rejector_loss: a.rejector_loss,
        patience: a.patience,
        aux_weight: a.aux_weight,
        seed: a.seed,
        progress: !a.no_progress,
    };
    tracing::info!(
        n_train = data.train.len(),
        n_val = data.val.len(),
        n_test = data.test.len(),
        legacy_train_error = data.train.m_error_rate(),
        ?mode,
        "training"
    );
    let repo = Repository::new(&a.repo);
    let version = repo.next_version(&a.model)?.to_string();
    let mut report = Report {
        model: a.model.clone(),
        version: version.clone(),
        task: a.data.task.clone(),
        mode: format!("{mode:?}"),
        deployed_costs: deployed.key(),
        rejector_uses_legacy_probs: a.rejector_legacy_probs || a.rejector_agreement,
        n_test: data.test.len(),
        ..Default::default()
    };
    let mut deployed_pair = None;
    for costs in &grid {
        tch::manual_seed(a.seed as i64);
        let mut models = PairModels::build(&pair_spec, device).map_err(CloudError::Config)?;
        let summary = fit(
            &mut models,
            &data,
            *costs,
            &settings,
            &format!("({})", costs.key()),
        )?;
        let onnx = models.export_rejector(&a.model)?;
        let rej = RejectorModel::from_bytes("exported rejector", &onnx, models.kind())?;
        let scores = onnx_scores(&rej, &data.test, costs.c1)?;
        let tch_scores = models.decision_scores(&data.test.x, &data.test.m_probs, costs.c1);
        let diff = scores
            .iter()
            .zip(&tch_scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let preds = predictions(&data.test, models.expert_predictions(&data.test.x));
        let cmp: CostReport = compare_methods(
            &preds,
            &scores,
            trained_threshold(models.kind(), *costs),
            *costs,
        );
        report.insert(&costs.key(), cmp);
        report.training.insert(
            costs.key(),
            serde_json::to_value(&summary).unwrap_or_default(),
        );
        if *costs == deployed {
            report.export_max_abs_diff = Some(diff);
            deployed_pair = Some((models, onnx));
        }
    }
    let (models, onnx) =
        deployed_pair.ok_or_else(|| CloudError::Config("deployed pair missing".into()))?;
    let dir = write_version(
        &repo,
        a,
        &spec,
        &version,
        &models,
        &onnx,
        &legacy,
        &data,
        deployed,
        &report,
        expert_arch,
        rejector_arch,
        legacy_output,
    )?;
    Ok(TrainOutcome { dir, report })
}

/// Writes `REPO/<model>/<version>/` atomically (a temporary directory renamed at the end).
#[allow(clippy::too_many_arguments)]
fn write_version(
    repo: &Repository,
    a: &TrainArgs,
    spec: &DatasetSpec,
    version: &str,
    models: &PairModels,
    onnx: &[u8],
    legacy: &LegacyModel,
    data: &TaskTensors,
    deployed: Costs,
    report: &Report,
    expert_arch: Arch,
    rejector_arch: Arch,
    legacy_output: OutputKind,
) -> Result<PathBuf, CloudError> {
    let model_dir = repo.root().join(&a.model);
    let tmp = model_dir.join(format!(".tmp-{version}"));
    let dir = model_dir.join(version);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    models.expert_vs.save(tmp.join(files::EXPERT_WEIGHTS))?;
    models.rejector_vs.save(tmp.join("rejector.safetensors"))?;
    write_json(
        &tmp.join(files::EXPERT_META),
        &ExpertMeta {
            version: version.into(),
            arch: expert_arch,
            input_shape: data.input_shape.clone(),
            num_classes: data.num_classes,
            single_score: models.single_score,
            normalization: models.expert.spec().norm.clone(),
            dataset: spec.clone(),
        },
    )?;
    let rp = tmp.join(files::REJECTOR);
    std::fs::write(&rp, onnx).map_err(io_err(&rp))?;
    let rej = RejectorModel::from_bytes("exported rejector", onnx, models.kind())?;
    let val_scores = onnx_scores(&rej, &data.val, deployed.c1)?;
    write_json(
        &tmp.join(files::REJECTOR_META),
        &RejectorMeta {
            version: version.into(),
            kind: models.kind(),
            opset: OPSET,
            arch: rejector_arch,
            uses_legacy_probs: models.uses_legacy_probs,
            threshold: trained_threshold(models.kind(), deployed),
            costs: deployed,
            score_quantiles: quantiles(&val_scores),
            expert_version: version.into(),
            legacy_sha256: legacy.sha256().into(),
            rejector_sha256: rej.sha256().into(),
            legacy_output,
        },
    )?;
    let lp = tmp.join(files::LEGACY);
    std::fs::copy(&a.legacy, &lp).map_err(io_err(&lp))?;
    write_json(&tmp.join(files::REPORT), report)?;
    let svg = tmp.join(files::CURVES);
    std::fs::write(&svg, crate::plot::curves_svg(report)).map_err(io_err(&svg))?;
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    Ok(dir)
}
