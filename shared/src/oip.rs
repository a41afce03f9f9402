//! Open Inference Protocol v2 at the boundary: decodes v2 requests (gRPC messages and REST JSON,
//! including Triton's binary tensor extension) into validated domain batches, and builds v2
//! responses from expert outputs. Pure functions, so they are property-tested and fuzzed without
//! a server.
//!
//! Every expert has one input and two outputs:
//! - `input`: FP32 (or FP64, UINT8, INT32, INT64), shape `[-1, ...input_shape]`;
//! - `probabilities`: FP32 `[-1, num_classes]`; `label`: INT64 `[-1]` (argmax).

use crate::wire::{check_finite, check_shape, decode_raw, ElemType, InputBatch, WireError};
use offload_proto::inference as pb;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Name of every expert's input tensor.
pub const INPUT: &str = "input";
/// Output holding class probabilities.
pub const PROBS: &str = "probabilities";
/// Output holding argmax labels.
pub const LABEL: &str = "label";

/// One computed answer, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// Rows in the batch.
    pub rows: usize,
    /// Classes per row.
    pub num_classes: usize,
    /// `rows * num_classes` probabilities.
    pub probs: Vec<f32>,
}

impl Outputs {
    fn labels(&self) -> Vec<i64> {
        self.probs
            .chunks(self.num_classes.max(1))
            .map(|r| crate::legacy::argmax(r) as i64)
            .collect()
    }
}

/// Which outputs a request wants, in order; all by default.
fn select_outputs<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<&'static str>, WireError> {
    let mut out = Vec::new();
    for (i, n) in names.enumerate() {
        match n {
            PROBS => out.push(PROBS),
            LABEL => out.push(LABEL),
            other => {
                return Err(WireError::Shape {
                    field: format!("outputs[{i}].name"),
                    reason: format!("unknown output `{other}` (use `{PROBS}` or `{LABEL}`)"),
                })
            }
        }
    }
    if out.is_empty() {
        out = vec![PROBS, LABEL];
    }
    Ok(out)
}

/// What both encodings of an input tensor carry in their header.
trait InputHeader {
    fn name(&self) -> &str;
    fn datatype(&self) -> &str;
    fn shape(&self) -> &[i64];
}

impl InputHeader for pb::model_infer_request::InferInputTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn datatype(&self) -> &str {
        &self.datatype
    }
    fn shape(&self) -> &[i64] {
        &self.shape
    }
}

impl InputHeader for RestTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn datatype(&self) -> &str {
        &self.datatype
    }
    fn shape(&self) -> &[i64] {
        &self.shape
    }
}

/// Validates the request's single input tensor header: exactly one input named [`INPUT`], a
/// supported datatype, a shape fitting the model. Returns the tensor, its element type and rows.
fn single_input<T: InputHeader>(
    inputs: &[T],
    feature_len: usize,
    max_rows: usize,
) -> Result<(&T, ElemType, usize), WireError> {
    let t = match inputs {
        [t] => t,
        _ => {
            return Err(WireError::Shape {
                field: "inputs".into(),
                reason: format!(
                    "{} input tensors; the model takes exactly one, `{INPUT}`",
                    inputs.len()
                ),
            })
        }
    };
    if t.name() != INPUT {
        return Err(WireError::Shape {
            field: "inputs[0].name".into(),
            reason: format!(
                "unknown input `{}`; the model's input is `{INPUT}`",
                t.name()
            ),
        });
    }
    let dtype = ElemType::from_oip(t.datatype(), "inputs[0].datatype")?;
    let rows = check_shape(t.shape(), feature_len, max_rows, "inputs[0].shape")?;
    Ok((t, dtype, rows))
}

/// Decodes a gRPC `ModelInferRequest`'s input for a model taking `feature_len` values per row.
pub fn grpc_input(
    req: &pb::ModelInferRequest,
    feature_len: usize,
    max_rows: usize,
) -> Result<InputBatch, WireError> {
    let (t, dtype, rows) = single_input(&req.inputs, feature_len, max_rows)?;
    let count = rows * feature_len;
    if let Some(raw) = req.raw_input_contents.first() {
        if req.raw_input_contents.len() != 1 {
            return Err(WireError::Shape {
                field: "raw_input_contents".into(),
                reason: format!("{} entries for 1 input", req.raw_input_contents.len()),
            });
        }
        let values = decode_raw(dtype, &t.shape, raw, count, "raw_input_contents[0]")?;
        return Ok(InputBatch { rows, values });
    }
    let c = t
        .contents
        .as_ref()
        .ok_or_else(|| WireError::Missing("raw_input_contents or inputs[0].contents".into()))?;
    let values: Vec<f32> = match dtype {
        ElemType::F32 => c.fp32_contents.clone(),
        ElemType::F64 => c.fp64_contents.iter().map(|&v| v as f32).collect(),
        ElemType::I32 => c.int_contents.iter().map(|&v| v as f32).collect(),
        ElemType::I64 => c.int64_contents.iter().map(|&v| v as f32).collect(),
        ElemType::U8 => c.uint_contents.iter().map(|&v| v as f32).collect(),
    };
    check_count(&t.shape, dtype, values.len(), count, "inputs[0].contents")?;
    check_finite(&values, "inputs[0].contents")?;
    Ok(InputBatch { rows, values })
}

fn check_count(
    shape: &[i64],
    dtype: ElemType,
    got: usize,
    expected: usize,
    field: &str,
) -> Result<(), WireError> {
    if got != expected {
        return Err(WireError::ByteLength {
            field: field.into(),
            shape: shape.to_vec(),
            dtype: dtype.oip_name(),
            expected,
            got,
            unit: "elements",
        });
    }
    Ok(())
}

/// Builds the gRPC response; outputs travel in `raw_output_contents` (what tritonclient reads).
pub fn grpc_response(
    req: &pb::ModelInferRequest,
    model: &str,
    version: &str,
    out: &Outputs,
) -> Result<pb::ModelInferResponse, WireError> {
    let wanted = select_outputs(req.outputs.iter().map(|o| o.name.as_str()))?;
    let mut resp = pb::ModelInferResponse {
        model_name: model.into(),
        model_version: version.into(),
        id: req.id.clone(),
        ..Default::default()
    };
    for name in wanted {
        let (datatype, shape, raw) = encode_output(name, out);
        resp.outputs
            .push(pb::model_infer_response::InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                ..Default::default()
            });
        resp.raw_output_contents.push(raw);
    }
    Ok(resp)
}

fn encode_output(name: &str, out: &Outputs) -> (&'static str, Vec<i64>, Vec<u8>) {
    if name == LABEL {
        let raw = out.labels().iter().flat_map(|v| v.to_le_bytes()).collect();
        ("INT64", vec![out.rows as i64], raw)
    } else {
        let raw = out.probs.iter().flat_map(|v| v.to_le_bytes()).collect();
        ("FP32", vec![out.rows as i64, out.num_classes as i64], raw)
    }
}

/// A REST inference request (the JSON part, when the binary extension is used).
#[derive(Debug, Clone, Deserialize)]
pub struct RestRequest {
    /// Echoed request id.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (`binary_data_output`).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<RestTensor>,
    /// Requested outputs.
    #[serde(default)]
    pub outputs: Option<Vec<RestOutput>>,
}

/// A REST input tensor.
#[derive(Debug, Clone, Deserialize)]
pub struct RestTensor {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Datatype.
    pub datatype: String,
    /// Values as (possibly nested) JSON arrays, flattened while parsing; absent when sent as
    /// binary.
    #[serde(default)]
    pub data: Option<FlatData>,
    /// Parameters (`binary_data_size`).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// A requested REST output.
#[derive(Debug, Clone, Deserialize)]
pub struct RestOutput {
    /// Output name.
    pub name: String,
    /// Parameters (`binary_data`).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// Splits a REST body into its JSON header and binary tail (Triton's binary extension: the
/// header length comes from `Inference-Header-Content-Length`).
pub fn split_body(body: &[u8], header_len: Option<usize>) -> Result<(&[u8], &[u8]), WireError> {
    match header_len {
        None => Ok((body, &[])),
        Some(n) if n <= body.len() => Ok(body.split_at(n)),
        Some(n) => Err(WireError::Shape {
            field: "Inference-Header-Content-Length".into(),
            reason: format!("{n} exceeds the body length {}", body.len()),
        }),
    }
}

/// Decodes a REST request's input from its JSON `data` or its binary tail.
pub fn rest_input(
    req: &RestRequest,
    tail: &[u8],
    feature_len: usize,
    max_rows: usize,
) -> Result<InputBatch, WireError> {
    let (t, dtype, rows) = single_input(&req.inputs, feature_len, max_rows)?;
    let count = rows * feature_len;
    let binary = t
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| {
            v.as_u64().ok_or_else(|| WireError::Shape {
                field: "inputs[0].parameters.binary_data_size".into(),
                reason: format!("{v} is not a non-negative integer"),
            })
        })
        .transpose()?;
    if let Some(size) = binary {
        if size as usize != tail.len() {
            return Err(WireError::ByteLength {
                field: "inputs[0].parameters.binary_data_size".into(),
                shape: t.shape.clone(),
                dtype: dtype.oip_name(),
                expected: size as usize,
                got: tail.len(),
                unit: "bytes of binary data after the JSON header",
            });
        }
        let values = decode_raw(dtype, &t.shape, tail, count, "binary input data")?;
        return Ok(InputBatch { rows, values });
    }
    let data = t
        .data
        .as_ref()
        .ok_or_else(|| WireError::Missing("inputs[0].data".into()))?;
    check_count(&t.shape, dtype, data.0.len(), count, "inputs[0].data")?;
    check_finite(&data.0, "inputs[0].data")?;
    Ok(InputBatch {
        rows,
        values: data.0.clone(),
    })
}

/// The numbers of a REST tensor's `data`, flattened row-major while the JSON is parsed: no
/// JSON tree is built, so a body costs about as much memory as its values. Anything but
/// numbers in (nested, at most 32 deep) arrays is a parse error.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlatData(pub Vec<f32>);

/// Deepest nesting accepted in `data`.
const MAX_DEPTH: usize = 32;

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten {
            out: &mut out,
            depth: 0,
        })?;
        Ok(FlatData(out))
    }
}

/// Visitor (and seed, for nested arrays) appending numbers to `out`.
struct Flatten<'a> {
    out: &'a mut Vec<f32>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers in (nested) arrays")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("`data` arrays are nested too deeply"));
        }
        let Flatten { out, depth } = self;
        while seq
            .next_element_seed(Flatten {
                out: &mut *out,
                depth: depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// A REST response: the JSON document and, with the binary extension, the bytes that follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct RestResponse {
    /// JSON part.
    pub json: Value,
    /// Binary tail (empty when every output is in JSON).
    pub binary: Vec<u8>,
}

/// Builds a REST response: outputs as JSON `data`, or as binary where requested.
pub fn rest_response(
    req: &RestRequest,
    model: &str,
    version: &str,
    out: &Outputs,
) -> Result<RestResponse, WireError> {
    let flag = |p: &Option<Map<String, Value>>, key: &str| {
        p.as_ref()
            .and_then(|m| m.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let all_binary = flag(&req.parameters, "binary_data_output");
    let requested: Vec<(&str, bool)> = match &req.outputs {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|o| {
                (
                    o.name.as_str(),
                    flag(&o.parameters, "binary_data") || all_binary,
                )
            })
            .collect(),
        _ => vec![(PROBS, all_binary), (LABEL, all_binary)],
    };
    let names = select_outputs(requested.iter().map(|(n, _)| *n))?;
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (name, (_, as_binary)) in names.iter().zip(&requested) {
        let (datatype, shape, raw) = encode_output(name, out);
        let mut o = serde_json::json!({ "name": name, "datatype": datatype, "shape": shape });
        if *as_binary {
            o["parameters"] = serde_json::json!({ "binary_data_size": raw.len() });
            binary.extend_from_slice(&raw);
        } else if *name == LABEL {
            o["data"] = serde_json::json!(out.labels());
        } else {
            o["data"] = serde_json::json!(out.probs);
        }
        outputs.push(o);
    }
    let mut json = serde_json::json!({
        "model_name": model, "model_version": version, "outputs": outputs,
    });
    if let Some(id) = &req.id {
        json["id"] = Value::String(id.clone());
    }
    Ok(RestResponse { json, binary })
}

#[cfg(test)]
mod tests {
    //! Property tests of the decoding boundary: valid tensors round-trip exactly in every
    //! encoding, and arbitrary bytes, shapes, datatypes and JSON never panic and never yield a
    //! batch that breaks the invariants (length = rows x features, all finite, rows <= limit).
    use super::*;
    use offload_proto::v1 as opb;
    use proptest::prelude::*;

    fn f32_raw(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn grpc_req(datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: INPUT.into(),
                datatype: datatype.into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: vec![raw],
            ..Default::default()
        }
    }

    fn invariants(b: &InputBatch, d: usize, max_rows: usize) {
        assert_eq!(b.values.len(), b.rows * d);
        assert!(b.rows >= 1 && b.rows <= max_rows);
        assert!(b.values.iter().all(|v| v.is_finite()));
    }

    proptest! {
        #[test]
        fn valid_tensors_round_trip_in_every_encoding(
            rows in 1usize..6, d in 1usize..24,
            seed in proptest::collection::vec(-1e6f32..1e6, 1..144),
        ) {
            let values: Vec<f32> = (0..rows * d).map(|i| seed[i % seed.len()]).collect();
            let shape = vec![rows as i64, d as i64];
            let g = grpc_input(&grpc_req("FP32", shape.clone(), f32_raw(&values)), d, 8).unwrap();
            prop_assert_eq!(&g.values, &values);
            let json = serde_json::json!({"inputs": [{"name": INPUT, "shape": shape, "datatype": "FP32", "data": values}]});
            let req: RestRequest = serde_json::from_value(json).unwrap();
            let r = rest_input(&req, &[], d, 8).unwrap();
            prop_assert_eq!(&r.values, &values);
            let bin = serde_json::json!({"inputs": [{"name": INPUT, "shape": shape, "datatype": "FP32",
                "parameters": {"binary_data_size": rows * d * 4}}]});
            let req: RestRequest = serde_json::from_value(bin).unwrap();
            let b = rest_input(&req, &f32_raw(&values), d, 8).unwrap();
            prop_assert_eq!(&b.values, &values);
            let o = opb::Tensor { dtype: opb::DataType::Float32 as i32, shape, raw: f32_raw(&values) };
            prop_assert_eq!(crate::wire::decode_input(Some(&o), d, 8).unwrap().values, values);
        }

        #[test]
        fn arbitrary_grpc_tensors_never_panic(
            dtype in prop_oneof![
                proptest::sample::select(vec!["FP32", "FP64", "UINT8", "INT32", "INT64", "BYTES", "FP16"])
                    .prop_map(str::to_string),
                ".{0,6}",
            ],
            shape in proptest::collection::vec(-2i64..40, 0..5),
            raw in proptest::collection::vec(any::<u8>(), 0..400),
            d in 1usize..40,
        ) {
            if let Ok(b) = grpc_input(&grpc_req(&dtype, shape.clone(), raw.clone()), d, 8) {
                invariants(&b, d, 8);
            }
            let o = opb::Tensor { dtype: (raw.len() % 6) as i32, shape, raw };
            if let Ok(b) = crate::wire::decode_input(Some(&o), d, 8) {
                invariants(&b, d, 8);
            }
        }

        #[test]
        fn arbitrary_rest_bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            header_len in proptest::option::of(0usize..400),
            d in 1usize..16,
        ) {
            if let Ok((json, tail)) = split_body(&body, header_len) {
                if let Ok(req) = serde_json::from_slice::<RestRequest>(json) {
                    if let Ok(b) = rest_input(&req, tail, d, 8) {
                        invariants(&b, d, 8);
                    }
                }
            }
        }

        #[test]
        fn structured_rest_requests_never_panic(
            data in proptest::collection::vec(prop_oneof![
                any::<f64>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
                ".{0,3}".prop_map(serde_json::Value::from),
                proptest::collection::vec(any::<i32>(), 0..4).prop_map(serde_json::Value::from),
            ], 0..40),
            shape in proptest::collection::vec(-1i64..10, 0..4),
            size in proptest::option::of(0u64..64),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            d in 1usize..8,
        ) {
            let mut t = serde_json::json!({"name": INPUT, "shape": shape, "datatype": "FP32", "data": data});
            if let Some(s) = size {
                t["parameters"] = serde_json::json!({"binary_data_size": s});
            }
            if let Ok(req) = serde_json::from_value::<RestRequest>(serde_json::json!({"inputs": [t]})) {
                if let Ok(b) = rest_input(&req, &tail, d, 8) {
                    invariants(&b, d, 8);
                }
            }
        }
    }

    #[test]
    fn responses_carry_requested_outputs_in_order() {
        let out = Outputs {
            rows: 2,
            num_classes: 3,
            probs: vec![0.1, 0.7, 0.2, 0.5, 0.3, 0.2],
        };
        let mut req = grpc_req("FP32", vec![2, 3], vec![]);
        req.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
            name: LABEL.into(),
            ..Default::default()
        }];
        let r = grpc_response(&req, "m", "4", &out).unwrap();
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(
            r.raw_output_contents[0],
            [1i64, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        );
        let rest: RestRequest = serde_json::from_value(serde_json::json!({
            "id": "x", "inputs": [], "parameters": {"binary_data_output": true}}))
        .unwrap();
        let r = rest_response(&rest, "m", "4", &out).unwrap();
        assert_eq!(r.binary.len(), 6 * 4 + 2 * 8);
        assert_eq!(r.json["outputs"][0]["parameters"]["binary_data_size"], 24);
        assert_eq!(r.json["id"], "x");
    }
}
