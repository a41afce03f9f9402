//! The protocol boundary: converts `offload.v1` tensors to and from domain values, validating
//! everything a client could get wrong. Errors name the field and the reason; the servers map
//! them to INVALID_ARGUMENT.

use offload_proto::v1 as pb;

/// A request tensor that cannot be used. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("field `{0}` is required")]
    Missing(&'static str),
    /// The dtype is unspecified or unknown.
    #[error("field `input.dtype`: unsupported data type {0} (use FLOAT32, FLOAT64 or UINT8)")]
    Dtype(i32),
    /// The shape does not fit the model.
    #[error("field `input.shape`: {0}")]
    Shape(String),
    /// `raw` does not hold exactly shape x element-size bytes.
    #[error("field `input.raw`: {got} bytes, but shape {shape:?} of {dtype} needs {expected}")]
    ByteLength {
        /// Declared shape.
        shape: Vec<i64>,
        /// Declared dtype name.
        dtype: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("field `input.raw`: element {0} is not finite (NaN or Inf)")]
    NonFinite(usize),
}

/// A validated input batch: `rows` samples of the model's feature count, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct InputBatch {
    /// Number of samples (the leading dimension).
    pub rows: usize,
    /// `rows * feature_len` values.
    pub values: Vec<f32>,
}

/// Decodes and validates an input tensor for a model taking `feature_len` values per sample
/// (any shape `[rows, ...]` whose trailing dimensions multiply to `feature_len` is accepted), with
/// at most `max_rows` rows.
pub fn decode_input(
    t: Option<&pb::Tensor>,
    feature_len: usize,
    max_rows: usize,
) -> Result<InputBatch, WireError> {
    let t = t.ok_or(WireError::Missing("input"))?;
    let (size, name) = match pb::DataType::try_from(t.dtype) {
        Ok(pb::DataType::Float32) => (4, "FLOAT32"),
        Ok(pb::DataType::Float64) => (8, "FLOAT64"),
        Ok(pb::DataType::Uint8) => (1, "UINT8"),
        _ => return Err(WireError::Dtype(t.dtype)),
    };
    if t.shape.is_empty() {
        return Err(WireError::Shape(
            "empty shape; expected [batch, features...]".into(),
        ));
    }
    if let Some(d) = t.shape.iter().find(|&&d| d <= 0) {
        return Err(WireError::Shape(format!(
            "dimension {d} in {:?} is not positive",
            t.shape
        )));
    }
    let rows = t.shape[0] as usize;
    let per_row: u128 = t.shape[1..].iter().map(|&d| d as u128).product();
    if per_row != feature_len as u128 {
        return Err(WireError::Shape(format!(
            "{:?} has {per_row} values per sample; the model takes {feature_len}",
            t.shape
        )));
    }
    if rows > max_rows {
        return Err(WireError::Shape(format!(
            "{rows} rows exceed the limit of {max_rows} per request"
        )));
    }
    let expected = rows * feature_len * size;
    if t.raw.len() != expected {
        return Err(WireError::ByteLength {
            shape: t.shape.clone(),
            dtype: name,
            expected,
            got: t.raw.len(),
        });
    }
    let values: Vec<f32> = match size {
        4 => t
            .raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        8 => t
            .raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        _ => t.raw.iter().map(|&b| b as f32).collect(),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(WireError::NonFinite(i));
    }
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
        assert_eq!(decode_input(None, 2, 8), Err(WireError::Missing("input")));
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
        assert_eq!(decode_input(Some(&nan), 2, 8), Err(WireError::NonFinite(1)));
        let big = encode_f32(&[0.0; 4], &[2, 2]);
        assert!(decode_input(Some(&big), 2, 1)
            .unwrap_err()
            .to_string()
            .contains("exceed"));
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
