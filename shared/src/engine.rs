//! The pure-Rust ONNX engine (tract) that runs the legacy model `m` and the rejector `r`.
//!
//! The same code runs on the device and in the cloud's training pipeline, so training sees exactly
//! the predictions the device will make. Each model gets two execution plans: one with the batch
//! fixed at 1 (the device's per-input path, fully specialised) and, when the file's batch
//! dimension is not pinned to 1, one with a symbolic batch for bulk evaluation.

use prost::Message;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Why a model could not be loaded or run. Messages name the model and the problem.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model tract can load.
    #[error("{model} is not a loadable ONNX model: {reason}")]
    Invalid {
        /// The model's name or path.
        model: String,
        /// Parser or optimiser message.
        reason: String,
    },
    /// The model loads but does not have the interface the system needs.
    #[error("{model} is not usable as {role}: {reason}")]
    Interface {
        /// The model's name or path.
        model: String,
        /// `a classifier`, `a rejector`, ...
        role: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// Input data does not fit the model.
    #[error("{model}: {reason}")]
    Shape {
        /// The model's name or path.
        model: String,
        /// Expected versus given.
        reason: String,
    },
    /// The runtime failed while computing.
    #[error("{model}: inference failed: {reason}")]
    Run {
        /// The model's name or path.
        model: String,
        /// Runtime message.
        reason: String,
    },
}

/// Hex sha256 of some bytes (model files are identified by it across cloud and devices).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

type Plan = Arc<TypedRunnableModel>;

/// One loaded ONNX model with float32 inputs and outputs.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// Name used in error messages (usually the path).
    name: String,
    /// sha256 of the file bytes.
    sha256: String,
    /// Names of the graph inputs (initializers excluded), in order.
    input_names: Vec<String>,
    /// Per-sample shape of each input (the batch dimension removed).
    input_shapes: Vec<Vec<usize>>,
    /// Names of the graph outputs, in order.
    output_names: Vec<String>,
    /// Plan specialised for a batch of one.
    single: Plan,
    /// Plan with a symbolic batch; `None` when the file pins the batch to 1.
    batched: Option<Plan>,
}

/// Output of a model run: one `(shape, values)` per graph output.
pub type Outputs = Vec<(Vec<usize>, Vec<f32>)>;

impl OnnxModel {
    /// Reads and prepares a model file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&path.display().to_string(), &bytes)
    }

    /// Prepares a model from its bytes; `name` is used in messages.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self, EngineError> {
        let invalid = |reason: String| EngineError::Invalid {
            model: name.to_string(),
            reason,
        };
        let proto = pb::ModelProto::decode(bytes).map_err(|e| invalid(format!("protobuf: {e}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid("no graph".into()))?;
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut input_names = Vec::new();
        let mut input_shapes = Vec::new();
        let mut batch_pinned = false;
        for vi in graph
            .input
            .iter()
            .filter(|vi| !init.contains(vi.name.as_str()))
        {
            let (dims, elem) = declared_shape(vi).ok_or_else(|| EngineError::Interface {
                model: name.into(),
                role: "a model",
                reason: format!("input `{}` has no tensor type", vi.name),
            })?;
            if elem != pb::tensor_proto::DataType::Float as i32 {
                return Err(EngineError::Interface {
                    model: name.into(),
                    role: "a model",
                    reason: format!("input `{}` must be float32 (element type {elem})", vi.name),
                });
            }
            let mut fixed = Vec::new();
            for (k, d) in dims.iter().enumerate().skip(1) {
                match d {
                    Some(v) if *v > 0 => fixed.push(*v as usize),
                    _ => {
                        return Err(EngineError::Interface {
                            model: name.into(),
                            role: "a model",
                            reason: format!(
                                "input `{}` dimension {k} is not a fixed size",
                                vi.name
                            ),
                        })
                    }
                }
            }
            if dims.is_empty() {
                return Err(EngineError::Interface {
                    model: name.into(),
                    role: "a model",
                    reason: format!("input `{}` is a scalar; need [batch, ...]", vi.name),
                });
            }
            batch_pinned |= dims[0] == Some(1);
            input_names.push(vi.name.clone());
            input_shapes.push(fixed);
        }
        if input_names.is_empty() {
            return Err(invalid("the graph has no inputs".into()));
        }
        let output_names = graph.output.iter().map(|o| o.name.clone()).collect();
        let onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
        let model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let build = |batch: TDim| -> Result<Plan, EngineError> {
            let mut m = model.clone();
            for (i, shape) in input_shapes.iter().enumerate() {
                let mut dims = vec![batch.clone()];
                dims.extend(shape.iter().map(|&d| d.to_dim()));
                m = m
                    .with_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), dims))
                    .map_err(|e| invalid(format!("{e:#}")))?;
            }
            m.into_optimized()
                .and_then(|m| m.into_runnable())
                .map_err(|e| invalid(format!("{e:#}")))
        };
        let single = build(1.to_dim())?;
        let batched = if batch_pinned {
            None
        } else {
            let n = model.symbols.sym(crate::onnx_build::BATCH_DIM);
            build(n.to_dim()).ok()
        };
        Ok(Self {
            name: name.to_string(),
            sha256: sha256_hex(bytes),
            input_names,
            input_shapes,
            output_names,
            single,
            batched,
        })
    }

    /// sha256 (hex) of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Graph input names.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Per-sample shape of each input.
    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    /// Graph output names.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs `n` samples. `inputs[i]` holds `n * prod(input_shapes[i])` values, row-major.
    /// Uses the batched plan when there is one and `n > 1`, otherwise loops sample by sample.
    pub fn run(&self, inputs: &[&[f32]], n: usize) -> Result<Outputs, EngineError> {
        if inputs.len() != self.input_shapes.len() {
            return Err(self.shape_err(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                self.input_shapes.len()
            )));
        }
        for (i, (data, shape)) in inputs.iter().zip(&self.input_shapes).enumerate() {
            let d: usize = shape.iter().product();
            if data.len() != n * d {
                return Err(self.shape_err(format!(
                    "input `{}` needs {n} x {shape:?} = {} values, got {}",
                    self.input_names[i],
                    n * d,
                    data.len()
                )));
            }
        }
        match (&self.batched, n) {
            (_, 0) => Ok(Vec::new()),
            (Some(plan), n) if n > 1 => self.run_plan(plan, inputs, n),
            _ => {
                let mut merged: Outputs = Vec::new();
                for s in 0..n {
                    let rows: Vec<&[f32]> = inputs
                        .iter()
                        .zip(&self.input_shapes)
                        .map(|(data, shape)| {
                            let d: usize = shape.iter().product();
                            &data[s * d..(s + 1) * d]
                        })
                        .collect();
                    let out = self.run_plan(&self.single, &rows, 1)?;
                    if merged.is_empty() {
                        merged = out;
                    } else {
                        for (m, o) in merged.iter_mut().zip(out) {
                            m.0[0] += 1;
                            m.1.extend(o.1);
                        }
                    }
                }
                Ok(merged)
            }
        }
    }

    fn run_plan(&self, plan: &Plan, inputs: &[&[f32]], n: usize) -> Result<Outputs, EngineError> {
        let mut tensors = TVec::new();
        for (data, shape) in inputs.iter().zip(&self.input_shapes) {
            let mut full = vec![n];
            full.extend_from_slice(shape);
            let t = Tensor::from_shape(&full, data).map_err(|e| self.run_err(e))?;
            tensors.push(t.into());
        }
        let outs = plan.run(tensors).map_err(|e| self.run_err(e))?;
        outs.into_iter()
            .map(|o| {
                let t = o.cast_to::<f32>().map_err(|e| self.run_err(e))?;
                let view = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| self.run_err(e))?;
                let mut shape = view.shape().to_vec();
                if shape.is_empty() {
                    shape.push(1);
                }
                Ok((shape, view.iter().copied().collect()))
            })
            .collect()
    }

    fn shape_err(&self, reason: String) -> EngineError {
        EngineError::Shape {
            model: self.name.clone(),
            reason,
        }
    }

    fn run_err(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::Run {
            model: self.name.clone(),
            reason: e.to_string(),
        }
    }
}

/// Declared dims (`None` for symbolic or unknown) and element type of a value.
fn declared_shape(vi: &pb::ValueInfoProto) -> Option<(Vec<Option<i64>>, i32)> {
    use pb::tensor_shape_proto::dimension::Value;
    let pb::type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((dims, t.elem_type))
}
