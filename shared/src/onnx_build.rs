//! Writes ONNX models from Rust: a small graph builder over tract's ONNX protobuf types.
//!
//! The cloud exports the legacy demo model and every trained rejector through this module, so the
//! files the devices run are plain ONNX (opset [`OPSET`]) readable by any runtime. Each layer
//! helper adds standard operators only (Gemm, Conv, MaxPool, Relu, Softmax, ...).

use prost::Message;
use tract_onnx::pb;

/// ONNX operator set version of every exported model.
pub const OPSET: i64 = 13;
/// ONNX IR version written in exported files (IR 8 pairs with opset 13..17).
pub const IR_VERSION: i64 = 8;
/// Name of the symbolic batch dimension in exported inputs and outputs.
pub const BATCH_DIM: &str = "N";

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The symbolic batch dimension [`BATCH_DIM`].
    Batch,
    /// A fixed size.
    Fixed(usize),
}

/// Accumulates nodes and initializers; [`GraphBuilder::finish`] encodes the model.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    /// The graph being built.
    graph: pb::GraphProto,
    /// Counter that keeps generated value names unique.
    next_id: usize,
    /// `key = value` metadata written into the model.
    metadata: Vec<(String, String)>,
}

fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => Value::DimParam(BATCH_DIM.into()),
                Dim::Fixed(n) => Value::DimValue(*n as i64),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints_attr(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.to_string()
    }

    /// Declares `value` as a float32 graph output under the name `name`.
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        if value != name {
            self.graph.node.push(pb::NodeProto {
                op_type: "Identity".into(),
                input: vec![value.into()],
                output: vec![name.into()],
                name: format!("out_{name}"),
                ..Default::default()
            });
        }
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds a float32 constant (initializer) of the given shape.
    pub fn constant(&mut self, hint: &str, shape: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        let name = self.fresh(hint);
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Adds an int64 constant (initializer) of the given shape.
    pub fn constant_i64(&mut self, hint: &str, shape: &[usize], data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Adds one node and returns the name of its (single) output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.graph.node.push(pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{out}_node"),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// `(x - mean) * inv_std`, per feature (shapes broadcast against `x`).
    pub fn normalize(&mut self, x: &str, shape: &[usize], mean: &[f32], inv_std: &[f32]) -> String {
        let m = self.constant("mean", shape, mean);
        let s = self.constant("inv_std", shape, inv_std);
        let centred = self.node("Sub", &[x, &m], vec![]);
        self.node("Mul", &[&centred, &s], vec![])
    }

    /// Fully connected layer `x W^T + b` with `W` stored `[out, in]` row-major (PyTorch layout).
    pub fn linear(&mut self, x: &str, weight: &[f32], bias: &[f32], in_dim: usize) -> String {
        let out_dim = bias.len();
        let w = self.constant("weight", &[out_dim, in_dim], weight);
        let b = self.constant("bias", &[out_dim], bias);
        self.node("Gemm", &[x, &w, &b], vec![int_attr("transB", 1)])
    }

    /// 2-D convolution, weight `[out, in, k, k]`, stride 1, "same" zero padding for odd `k`.
    pub fn conv2d(
        &mut self,
        x: &str,
        weight: &[f32],
        bias: &[f32],
        in_ch: usize,
        k: usize,
    ) -> String {
        let out_ch = bias.len();
        let w = self.constant("conv_weight", &[out_ch, in_ch, k, k], weight);
        let b = self.constant("conv_bias", &[out_ch], bias);
        let p = (k / 2) as i64;
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints_attr("kernel_shape", &[k as i64, k as i64]),
                ints_attr("pads", &[p, p, p, p]),
                ints_attr("strides", &[1, 1]),
            ],
        )
    }

    /// 2x2 max pooling with stride 2 (floor mode, as PyTorch's default).
    pub fn max_pool2(&mut self, x: &str) -> String {
        self.node(
            "MaxPool",
            &[x],
            vec![
                ints_attr("kernel_shape", &[2, 2]),
                ints_attr("strides", &[2, 2]),
            ],
        )
    }

    /// Element-wise unary op such as `Relu`, `Sigmoid`, `Neg`.
    pub fn unary(&mut self, op: &str, x: &str) -> String {
        self.node(op, &[x], vec![])
    }

    /// Softmax over the class axis (1).
    pub fn softmax(&mut self, x: &str) -> String {
        self.node("Softmax", &[x], vec![int_attr("axis", 1)])
    }

    /// Flattens `[N, ...]` to `[N, d]`.
    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![int_attr("axis", 1)])
    }

    /// Concatenates along the feature axis (1).
    pub fn concat(&mut self, xs: &[&str]) -> String {
        self.node("Concat", xs, vec![int_attr("axis", 1)])
    }

    /// Column `j` of a `[N, k]` tensor, as `[N]`.
    pub fn column(&mut self, x: &str, j: i64) -> String {
        let idx = self.constant_i64("col", &[], &[j]);
        self.node("Gather", &[x, &idx], vec![int_attr("axis", 1)])
    }

    /// Index of the largest value along axis 1, kept as `[N, 1]` (int64).
    pub fn argmax_keep(&mut self, x: &str) -> String {
        self.node(
            "ArgMax",
            &[x],
            vec![int_attr("axis", 1), int_attr("keepdims", 1)],
        )
    }

    /// Largest value along axis 1, kept as `[N, 1]`.
    pub fn max_keep(&mut self, x: &str) -> String {
        self.node(
            "ReduceMax",
            &[x],
            vec![ints_attr("axes", &[1]), int_attr("keepdims", 1)],
        )
    }

    /// `out[n, 0] = x[n, idx[n, 0]]`.
    pub fn gather_cols(&mut self, x: &str, idx: &str) -> String {
        self.node("GatherElements", &[x, idx], vec![int_attr("axis", 1)])
    }

    /// `[N, 1]` to `[N]` (column 0).
    pub fn flatten_to_vector(&mut self, x: &str) -> String {
        self.column(x, 0)
    }

    /// Records a `key = value` metadata entry in the model file.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.into(), value.into()));
    }

    /// Encodes the model as ONNX protobuf bytes.
    pub fn finish(mut self, graph_name: &str) -> Vec<u8> {
        self.graph.name = graph_name.into();
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "offload-system".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| pb::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OnnxModel;
    use crate::legacy::{LegacyModel, OutputKind};

    /// A 3-feature, 2-class linear model with known weights.
    fn linear_model(batch: Dim) -> Vec<u8> {
        let mut g = GraphBuilder::new();
        let x = g.input("input", &[batch, Dim::Fixed(3)]);
        let n = g.normalize(&x, &[3], &[1.0, 0.0, 0.0], &[1.0, 2.0, 1.0]);
        let y = g.linear(&n, &[1.0, 0.0, 0.0, 0.0, 1.0, -1.0], &[0.5, 0.0], 3);
        g.output(&y, "logits", &[batch, Dim::Fixed(2)]);
        g.finish("t")
    }

    #[test]
    fn written_models_run_in_tract_with_batched_and_single_plans() {
        let m = OnnxModel::from_bytes("t", &linear_model(Dim::Batch)).unwrap();
        let x = [2.0, 1.0, 3.0, 0.0, 0.5, 0.0];
        let out = m.run(&[&x], 2).unwrap();
        // row 0: ((2-1)*1 + 0.5, 1*2 - 3) ; row 1: ((0-1) + 0.5, 0.5*2 - 0)
        assert_eq!(out[0].0, vec![2, 2]);
        assert_eq!(out[0].1, vec![1.5, -1.0, -0.5, 1.0]);
        let single = m.run(&[&x[..3]], 1).unwrap();
        assert_eq!(single[0].1, vec![1.5, -1.0]);
        // A file whose batch is pinned to 1 still evaluates many samples (one at a time).
        let pinned = OnnxModel::from_bytes("p", &linear_model(Dim::Fixed(1))).unwrap();
        assert_eq!(pinned.run(&[&x], 2).unwrap()[0].1, out[0].1);
        assert!(m
            .run(&[&x[..4]], 2)
            .unwrap_err()
            .to_string()
            .contains("needs 2 x [3]"));
    }

    #[test]
    fn legacy_wrapper_softmaxes_logits_and_rejects_non_classifiers() {
        let m = LegacyModel::from_bytes("t", &linear_model(Dim::Batch), OutputKind::Auto).unwrap();
        assert_eq!(m.num_classes(), 2);
        let p = m.predict_proba(&[2.0, 1.0, 3.0], 1).unwrap();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[0] > p[1]);
        let mut g = GraphBuilder::new();
        let x = g.input("input", &[Dim::Batch, Dim::Fixed(3)]);
        let s = g.unary("Sigmoid", &x);
        let c = g.column(&s, 0);
        g.output(&c, "score", &[Dim::Batch]);
        let err = LegacyModel::from_bytes("s", &g.finish("s"), OutputKind::Auto).unwrap_err();
        assert!(
            err.to_string().contains("not usable as a classifier"),
            "{err}"
        );
    }
}
