//! Loading a trained pair back from a repository version (for `eval`, `check-export` and,
//! later, serving).

use crate::error::CloudError;
use crate::train::pair::{Mode, PairModels, PairSpec};
use offload_shared::legacy::LegacyModel;
use offload_shared::rejector::{RejectorKind, RejectorModel};
use offload_shared::repository::{files, read_json, ExpertMeta, RejectorMeta, Repository};
use std::path::{Path, PathBuf};

/// A repository version loaded in memory.
#[derive(Debug)]
pub struct StoredPair {
    /// Version directory.
    pub dir: PathBuf,
    /// `expert.json`.
    pub expert_meta: ExpertMeta,
    /// `rejector.json`.
    pub rejector_meta: RejectorMeta,
    /// Both networks in tch.
    pub models: PairModels,
    /// The ONNX rejector as the device runs it.
    pub rejector: RejectorModel,
    /// The legacy model.
    pub legacy: LegacyModel,
}

/// Loads `REPO/<model>/<version>` (latest when `version` is `None`).
pub fn load(repo: &Path, model: &str, version: Option<&str>) -> Result<StoredPair, CloudError> {
    let dir = Repository::new(repo).version_dir(model, version)?;
    let expert_meta: ExpertMeta = read_json(&dir.join(files::EXPERT_META))?;
    let rejector_meta: RejectorMeta = read_json(&dir.join(files::REJECTOR_META))?;
    let rej_weights = dir.join("rejector.safetensors");
    let named = tch::Tensor::read_safetensors(&rej_weights)?;
    let size0 = |name: &str| {
        named
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t.size()[0])
    };
    let agreement = size0("agree.weight").is_some();
    let head_out = size0("agree.weight")
        .or_else(|| size0("head.weight"))
        .ok_or_else(|| CloudError::Config(format!("{}: no head.weight", rej_weights.display())))?;
    let mode = match (rejector_meta.kind, head_out) {
        (RejectorKind::PlugIn, _) => Mode::PlugIn,
        (RejectorKind::Score, 1) => Mode::BinarySurrogate,
        (RejectorKind::Score, _) => Mode::StageSwitching,
    };
    let spec = PairSpec {
        mode,
        expert_arch: expert_meta.arch.clone(),
        rejector_arch: rejector_meta.arch.clone(),
        input_shape: expert_meta.input_shape.clone(),
        num_classes: expert_meta.num_classes,
        uses_legacy_probs: rejector_meta.uses_legacy_probs,
        squash: false,
        agreement,
        norm: expert_meta.normalization.clone(),
    };
    let mut models = PairModels::build(&spec, tch::Device::Cpu).map_err(CloudError::Config)?;
    models.expert_vs.load(dir.join(files::EXPERT_WEIGHTS))?;
    models.rejector_vs.load(&rej_weights)?;
    let onnx_path = dir.join(files::REJECTOR);
    let bytes = std::fs::read(&onnx_path).map_err(crate::error::io_err(&onnx_path))?;
    let rejector =
        RejectorModel::from_bytes(&onnx_path.display().to_string(), &bytes, rejector_meta.kind)?;
    let legacy = LegacyModel::load(&dir.join(files::LEGACY), rejector_meta.legacy_output)?;
    Ok(StoredPair {
        dir,
        expert_meta,
        rejector_meta,
        models,
        rejector,
        legacy,
    })
}

/// An expert loaded for serving: the network, its metadata, and the version it belongs to.
#[derive(Debug)]
pub struct LoadedExpert {
    /// `expert.json`.
    pub meta: ExpertMeta,
    /// Keeps the weights alive.
    vs: tch::nn::VarStore,
    /// The network.
    net: crate::nets::Net,
}

impl LoadedExpert {
    /// Loads `expert.safetensors` + `expert.json` from a version directory (CPU).
    pub fn load(dir: &Path) -> Result<Self, CloudError> {
        let meta: ExpertMeta = read_json(&dir.join(files::EXPERT_META))?;
        let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = crate::nets::Net::new(
            &vs.root(),
            crate::nets::NetSpec {
                arch: meta.arch.clone(),
                input_shape: meta.input_shape.clone(),
                extra_inputs: 0,
                out_dim: if meta.single_score {
                    1
                } else {
                    meta.num_classes
                },
                norm: meta.normalization.clone(),
            },
        )
        .map_err(CloudError::Config)?;
        vs.load(dir.join(files::EXPERT_WEIGHTS))?;
        Ok(Self { meta, vs, net })
    }

    /// Values per sample.
    pub fn feature_len(&self) -> usize {
        self.meta.input_shape.iter().product()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.meta.num_classes
    }

    /// The network.
    pub fn net(&self) -> &crate::nets::Net {
        &self.net
    }

    /// The trainable parameters, in the store's (name) order.
    pub fn parameters(&self) -> Vec<tch::Tensor> {
        let mut named: Vec<(String, tch::Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
    }

    /// Class probabilities for `n` samples (`n * K`, row-major). Shapes are the caller's
    /// responsibility (validated at the protocol boundary); tch errors come back as text.
    pub fn probs(&self, x: &[f32], n: usize) -> Result<Vec<f32>, String> {
        let d = self.feature_len() as i64;
        let out = tch::no_grad(|| -> Result<tch::Tensor, tch::TchError> {
            let t = tch::Tensor::f_from_slice(x)?.f_view([n as i64, d])?;
            crate::nets::class_probs(&self.net.forward(&t, None), self.meta.single_score)
        })
        .map_err(|e| e.to_string())?;
        crate::nets::to_vec(&out).map_err(|e| e.to_string())
    }
}
