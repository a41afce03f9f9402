//! A task's splits as tensors, with the legacy model's predictions computed by the device engine.

use offload_shared::dataset::{Dataset, Splits};
use offload_shared::legacy::{argmax, LegacyModel};
use tch::{Device, Kind, Tensor};

/// One split on the training device.
#[derive(Debug)]
pub struct SplitTensors {
    /// Raw features `[N, d]` (float).
    pub x: Tensor,
    /// Labels `[N]` (int64).
    pub y: Tensor,
    /// Legacy model probabilities `[N, K]`.
    pub m_probs: Tensor,
    /// 1.0 where the legacy model is wrong `[N]`.
    pub m_wrong: Tensor,
    /// Legacy predictions, host side.
    pub m_pred: Vec<u32>,
    /// Legacy max probability, host side.
    pub m_conf: Vec<f32>,
    /// Labels, host side.
    pub labels: Vec<u32>,
    /// Features, host side (for the ONNX rejector).
    pub features: Vec<f32>,
    /// Legacy probabilities, host side.
    pub m_probs_host: Vec<f32>,
}

impl SplitTensors {
    /// Runs the legacy model over the split and moves everything to `device`.
    pub fn new(
        data: &Dataset,
        legacy: &LegacyModel,
        device: Device,
    ) -> Result<Self, offload_shared::engine::EngineError> {
        let n = data.len();
        let k = legacy.num_classes();
        let probs = legacy.predict_proba(data.features(), n)?;
        let m_pred: Vec<u32> = probs.chunks(k).map(|r| argmax(r) as u32).collect();
        let m_conf: Vec<f32> = probs
            .chunks(k)
            .map(|r| r.iter().copied().fold(0.0, f32::max))
            .collect();
        let wrong: Vec<f32> = m_pred
            .iter()
            .zip(data.labels())
            .map(|(p, y)| (p != y) as u8 as f32)
            .collect();
        let d = data.feature_len() as i64;
        let labels_i64: Vec<i64> = data.labels().iter().map(|&l| l as i64).collect();
        Ok(Self {
            x: Tensor::from_slice(data.features())
                .view([n as i64, d])
                .to_device(device),
            y: Tensor::from_slice(&labels_i64).to_device(device),
            m_probs: Tensor::from_slice(&probs)
                .view([n as i64, k as i64])
                .to_device(device),
            m_wrong: Tensor::from_slice(&wrong).to_device(device),
            m_pred,
            m_conf,
            labels: data.labels().to_vec(),
            features: data.features().to_vec(),
            m_probs_host: probs,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Legacy error rate on this split.
    pub fn m_error_rate(&self) -> f64 {
        self.m_wrong.mean(Kind::Float).double_value(&[])
    }
}

/// The three splits as tensors.
#[derive(Debug)]
pub struct TaskTensors {
    /// Training split.
    pub train: SplitTensors,
    /// Validation split (early stopping, quantiles).
    pub val: SplitTensors,
    /// Test split (reports only).
    pub test: SplitTensors,
    /// Number of classes.
    pub num_classes: usize,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
}

impl TaskTensors {
    /// Builds all three splits.
    pub fn new(
        splits: &Splits,
        legacy: &LegacyModel,
        device: Device,
    ) -> Result<Self, offload_shared::engine::EngineError> {
        Ok(Self {
            train: SplitTensors::new(&splits.train, legacy, device)?,
            val: SplitTensors::new(&splits.val, legacy, device)?,
            test: SplitTensors::new(&splits.test, legacy, device)?,
            num_classes: splits.train.num_classes(),
            input_shape: splits.train.sample_shape().to_vec(),
        })
    }
}
