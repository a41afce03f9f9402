//! The protocol boundary: converts `offload.v1` and Open Inference Protocol v2 tensors to and from
//! domain values, validating everything a client could get wrong. Errors name the field and the
//! reason; the servers map them to INVALID_ARGUMENT (gRPC) or 400 (HTTP).

use offload_proto::v1 as pb;

/// A request tensor that cannot be used. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("field `{0}` is required")]
    Missing(String),
    /// The dtype is unspecified or unknown.
    #[error("field `{field}`: unsupported data type {got} (use {supported})")]
    Dtype {
        /// Offending field.
        field: String,
        /// What the client sent.
        got: String,
        /// What is accepted.
        supported: &'static str,
    },
    /// The shape does not fit the model.
    #[error("field `{field}`: {reason}")]
    Shape {
        /// Offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// More rows than the configured per-request limit (a limit, not a malformed request).
    #[error("field `{field}`: {rows} rows exceed the limit of {max} per request")]
    TooManyRows {
        /// Offending field.
        field: String,
        /// Rows sent.
        rows: usize,
        /// The limit.
        max: usize,
    },
    /// The contents do not hold exactly shape x element-size bytes (or elements).
    #[error("field `{field}`: {got} {unit}, but shape {shape:?} of {dtype} needs {expected}")]
    ByteLength {
        /// Offending field.
        field: String,
        /// Declared shape.
        shape: Vec<i64>,
        /// Declared dtype name.
        dtype: &'static str,
        /// Bytes (or elements) needed.
        expected: usize,
        /// Bytes (or elements) given.
        got: usize,
        /// "bytes" or "elements".
        unit: &'static str,
    },
    /// A value is NaN or infinite.
    #[error("field `{field}`: element {index} is not finite (NaN or Inf)")]
    NonFinite {
        /// Offending field.
        field: String,
        /// Flat index of the first bad element.
        index: usize,
    },
}

/// Element types accepted for model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary64.
    F64,
    /// Unsigned bytes.
    U8,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::U8 => 1,
        }
    }

    /// The Open Inference Protocol name.
    pub fn oip_name(self) -> &'static str {
        match self {
            ElemType::F32 => "FP32",
            ElemType::F64 => "FP64",
            ElemType::U8 => "UINT8",
            ElemType::I32 => "INT32",
            ElemType::I64 => "INT64",
        }
    }

    /// Parses an Open Inference Protocol datatype name.
    pub fn from_oip(name: &str, field: &str) -> Result<Self, WireError> {
        Ok(match name {
            "FP32" => ElemType::F32,
            "FP64" => ElemType::F64,
            "UINT8" => ElemType::U8,
            "INT32" => ElemType::I32,
            "INT64" => ElemType::I64,
            _ => {
                return Err(WireError::Dtype {
                    field: field.into(),
                    got: format!("`{name}`"),
                    supported: OIP_SUPPORTED,
                })
            }
        })
    }
}

/// Datatypes the v2 endpoints accept for inputs.
pub const OIP_SUPPORTED: &str = "FP32, FP64, UINT8, INT32 or INT64";

/// A validated input batch: `rows` samples of the model's feature count, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct InputBatch {
    /// Number of samples (the leading dimension).
    pub rows: usize,
    /// `rows * feature_len` values.
    pub values: Vec<f32>,
}

/// Checks a shape `[rows, ...]` against the model's per-sample `feature_len` and the row limit;
/// returns the row count.
pub fn check_shape(
    shape: &[i64],
    feature_len: usize,
    max_rows: usize,
    field: &str,
) -> Result<usize, WireError> {
    let bad = |reason: String| WireError::Shape {
        field: field.into(),
        reason,
    };
    if shape.is_empty() {
        return Err(bad("empty shape; expected [batch, features...]".into()));
    }
    if let Some(d) = shape.iter().find(|&&d| d <= 0) {
        return Err(bad(format!("dimension {d} in {shape:?} is not positive")));
    }
    let rows = shape[0] as usize;
    let per_row = shape[1..]
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
    if per_row != Some(feature_len as u128) {
        let per_row = per_row.map_or("too many".to_string(), |p| p.to_string());
        // (`too many values per sample` when the product overflows.)
        return Err(bad(format!(
            "{shape:?} has {per_row} values per sample; the model takes {feature_len}"
        )));
    }
    if rows > max_rows {
        return Err(WireError::TooManyRows {
            field: field.into(),
            rows,
            max: max_rows,
        });
    }
    Ok(rows)
}

/// Decodes little-endian row-major `raw` bytes of `dtype` into f32 values, checking the length
/// against `count` elements and rejecting NaN/Inf.
pub fn decode_raw(
    dtype: ElemType,
    shape: &[i64],
    raw: &[u8],
    count: usize,
    field: &str,
) -> Result<Vec<f32>, WireError> {
    let expected = count * dtype.size();
    if raw.len() != expected {
        return Err(WireError::ByteLength {
            field: field.into(),
            shape: shape.to_vec(),
            dtype: dtype.oip_name(),
            expected,
            got: raw.len(),
            unit: "bytes",
        });
    }
    let values: Vec<f32> = match dtype {
        ElemType::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        ElemType::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        ElemType::I32 => raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        ElemType::I64 => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        ElemType::U8 => raw.iter().map(|&b| b as f32).collect(),
    };
    check_finite(&values, field)?;
    Ok(values)
}

/// Rejects NaN and infinities, naming the first offending element.
pub fn check_finite(values: &[f32], field: &str) -> Result<(), WireError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(WireError::NonFinite {
            field: field.into(),
            index,
        }),
        None => Ok(()),
    }
}

/// Decodes and validates an `offload.v1` input tensor for a model taking `feature_len` values per
/// sample (any shape `[rows, ...]` whose trailing dimensions multiply to `feature_len` is
/// accepted), with at most `max_rows` rows.
pub fn decode_input(
    t: Option<&pb::Tensor>,
    feature_len: usize,
    max_rows: usize,
) -> Result<InputBatch, WireError> {
    let t = t.ok_or_else(|| WireError::Missing("input".into()))?;
    let dtype = match pb::DataType::try_from(t.dtype) {
        Ok(pb::DataType::Float32) => ElemType::F32,
        Ok(pb::DataType::Float64) => ElemType::F64,
        Ok(pb::DataType::Uint8) => ElemType::U8,
        _ => {
            return Err(WireError::Dtype {
                field: "input.dtype".into(),
                got: t.dtype.to_string(),
                supported: "FLOAT32, FLOAT64 or UINT8",
            })
        }
    };
    let rows = check_shape(&t.shape, feature_len, max_rows, "input.shape")?;
    let values = decode_raw(dtype, &t.shape, &t.raw, rows * feature_len, "input.raw")?;
    Ok(InputBatch { rows, values })
}

/// Encodes f32 values as a FLOAT32 tensor of the given shape.
pub fn encode_f32(values: &[f32], shape: &[usize]) -> pb::Tensor {
    pb::Tensor {
        dtype: pb::DataType::Float32 as i32,
        shape: shape.iter().map(|&d| d as i64).collect(),
        raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_tensors_decode_in_any_matching_layout() {
        let t = encode_f32(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
        let b = decode_input(Some(&t), 4, 8).unwrap();
        assert_eq!((b.rows, b.values), (1, vec![1.0, 2.0, 3.0, 4.0]));
        let u8t = pb::Tensor {
            dtype: pb::DataType::Uint8 as i32,
            shape: vec![2, 2],
            raw: vec![1, 2, 3, 4],
        };
        assert_eq!(
            decode_input(Some(&u8t), 2, 8).unwrap().values,
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn each_client_mistake_names_its_field() {
        let good = encode_f32(&[1.0, 2.0], &[1, 2]);
        assert_eq!(
            decode_input(None, 2, 8),
            Err(WireError::Missing("input".into()))
        );
        let mut t = good.clone();
        t.dtype = 0;
        assert!(decode_input(Some(&t), 2, 8)
            .unwrap_err()
            .to_string()
            .contains("input.dtype"));
        assert!(decode_input(Some(&good), 3, 8)
            .unwrap_err()
            .to_string()
            .contains("input.shape"));
        let mut t = good.clone();
        t.raw.pop();
        assert!(decode_input(Some(&t), 2, 8)
            .unwrap_err()
            .to_string()
            .contains("7 bytes"));
        let nan = encode_f32(&[1.0, f32::NAN], &[1, 2]);
        assert_eq!(
            decode_input(Some(&nan), 2, 8),
            Err(WireError::NonFinite {
                field: "input.raw".into(),
                index: 1
            })
        );
        let big = encode_f32(&[0.0; 4], &[2, 2]);
        assert!(decode_input(Some(&big), 2, 1)
            .unwrap_err()
            .to_string()
            .contains("exceed"));
        let huge = pb::Tensor {
            dtype: 1,
            shape: vec![1, 64, (1 << 61) - (1 << 31) + 1, (1 << 61) + (1 << 31) + 1],
            raw: vec![],
        };
        assert!(decode_input(Some(&huge), 64, 8)
            .unwrap_err()
            .to_string()
            .contains("too many values"));
        let neg = pb::Tensor {
            dtype: 1,
            shape: vec![-1, 2],
            raw: vec![],
        };
        assert!(decode_input(Some(&neg), 2, 8)
            .unwrap_err()
            .to_string()
            .contains("not positive"));
    }
}
