//! GGUF (llama.cpp's model file): reading the header, metadata and tensors, dequantising
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 to float32, and mapping LLaMA tensors to the Hugging Face
//! names [`super::model::Llama`] uses (undoing llama.cpp's Q/K row permutation). A writer for
//! F32/F16/Q8_0 files exists for test fixtures.
//!
//! Layout (little-endian): magic `GGUF`, version (2 or 3), tensor count, metadata count,
//! metadata (key, type, value), tensor infos (name, dims with the fastest-varying first, type,
//! offset), then tensor data starting at the next multiple of `general.alignment` (32).

use super::model::LlamaConfig;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Unreadable file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a GGUF file or a corrupt one.
    #[error("not a valid GGUF file: {0}")]
    Format(String),
    /// A tensor type this reader does not dequantise.
    #[error("tensor `{name}` has ggml type {ty}, which is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1 are)")]
    Unsupported {
        /// Tensor.
        name: String,
        /// ggml type id.
        ty: u32,
    },
    /// Required metadata is missing.
    #[error("metadata `{0}` is missing")]
    Missing(String),
}

/// ggml type ids.
pub mod ty {
    /// float32.
    pub const F32: u32 = 0;
    /// float16.
    pub const F16: u32 = 1;
    /// 4-bit, one f16 scale per 32.
    pub const Q4_0: u32 = 2;
    /// 4-bit, f16 scale and minimum per 32.
    pub const Q4_1: u32 = 3;
    /// 8-bit, one f16 scale per 32.
    pub const Q8_0: u32 = 8;
    /// bfloat16.
    pub const BF16: u32 = 30;
}

/// One tensor's description.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions, fastest-varying first (ggml order).
    pub dims: Vec<u64>,
    /// ggml type.
    pub ty: u32,
    /// Offset within the data section.
    pub offset: u64,
}

/// A parsed GGUF file (the bytes are kept; tensors are dequantised on demand).
#[derive(Debug)]
pub struct Gguf {
    /// Metadata.
    pub metadata: HashMap<String, Value>,
    /// Tensor infos by name.
    pub tensors: HashMap<String, TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                GgufError::Format(format!("truncated at byte {} (needed {n} more)", self.pos))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| GgufError::Format("string is not UTF-8".into()))
    }
    fn value(&mut self, t: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match t {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => {
                Value::U64(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()) as u64)
            }
            3 => {
                Value::I64(i16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()) as i64)
            }
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let it = self.u32()?;
                let n = self.u64()?;
                if n > (self.b.len() - self.pos) as u64 {
                    return Err(GgufError::Format(format!(
                        "array of {n} items exceeds the file"
                    )));
                }
                (0..n)
                    .map(|_| self.value(it, depth + 1))
                    .collect::<Result<_, _>>()
                    .map(Value::Array)?
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(GgufError::Format(format!("unknown metadata type {other}"))),
        })
    }
}

fn f16(b: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// IEEE half to single precision.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision (round to nearest even; for the test writer).
pub fn f32_to_half(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let man = bits & 0x7f_ffff;
    if exp >= 0x1f {
        return sign | 0x7c00;
    }
    if exp <= 0 {
        return sign;
    }
    let half = (man >> 13) as u16;
    let rest = man & 0x1fff;
    let mut h = sign | ((exp as u16) << 10) | half;
    if rest > 0x1000 || (rest == 0x1000 && half & 1 == 1) {
        h += 1;
    }
    h
}

/// Dequantises `n` elements of type `ty` from `b`.
pub fn dequantize(ty: u32, b: &[u8], n: usize) -> Option<Vec<f32>> {
    let need = byte_len(ty, n)?;
    let b = b.get(..need)?;
    Some(match ty {
        ty::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ty::F16 => b.chunks_exact(2).map(f16).collect(),
        ty::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        ty::Q8_0 => b
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = f16(&blk[..2]);
                blk[2..].iter().map(move |&q| d * (q as i8) as f32)
            })
            .collect(),
        ty::Q4_0 | ty::Q4_1 => {
            let bs = if ty == ty::Q4_0 { 18 } else { 20 };
            let mut out = Vec::with_capacity(n);
            for blk in b.chunks_exact(bs) {
                let d = f16(&blk[..2]);
                let (m, qs, off) = if ty == ty::Q4_0 {
                    (0.0, &blk[2..], -8.0)
                } else {
                    (f16(&blk[2..4]), &blk[4..], 0.0)
                };
                let lo = qs.iter().map(|&q| d * ((q & 0xf) as f32 + off) + m);
                let hi = qs.iter().map(|&q| d * ((q >> 4) as f32 + off) + m);
                out.extend(lo.collect::<Vec<_>>());
                out.extend(hi.collect::<Vec<_>>());
            }
            out
        }
        _ => return None,
    })
}

/// Bytes taken by `n` elements of `ty` (quantised types need whole blocks of 32).
pub fn byte_len(ty: u32, n: usize) -> Option<usize> {
    match ty {
        ty::F32 => n.checked_mul(4),
        ty::F16 | ty::BF16 => n.checked_mul(2),
        ty::Q8_0 | ty::Q4_0 | ty::Q4_1 if n.is_multiple_of(32) => {
            let bs = match ty {
                ty::Q8_0 => 34,
                ty::Q4_0 => 18,
                _ => 20,
            };
            (n / 32).checked_mul(bs)
        }
        _ => None,
    }
}

impl Gguf {
    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> Result<Self, GgufError> {
        Self::parse(std::fs::read(path)?)
    }

    /// Parses GGUF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, GgufError> {
        let mut r = Reader { b: &data, pos: 0 };
        if r.take(4)? != b"GGUF" {
            return Err(GgufError::Format("bad magic".into()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Format(format!(
                "version {version} (2 and 3 are read)"
            )));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let k = r.string()?;
            let t = r.u32()?;
            metadata.insert(k, r.value(t, 0)?);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()?;
            if nd > 8 {
                return Err(GgufError::Format(format!(
                    "tensor `{name}` has {nd} dimensions"
                )));
            }
            let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let ty = r.u32()?;
            let offset = r.u64()?;
            tensors.insert(name, TensorInfo { dims, ty, offset });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        Ok(Self {
            metadata,
            tensors,
            data,
            data_start,
        })
    }

    /// A tensor dequantised to float32, in PyTorch order (dims reversed).
    pub fn tensor(&self, name: &str) -> Result<Tensor, GgufError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::Missing(format!("tensor {name}")))?;
        let n = info
            .dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d as usize));
        let n = n.ok_or_else(|| GgufError::Format(format!("tensor `{name}` is too large")))?;
        let start = self.data_start.checked_add(info.offset as usize);
        let bytes = start.and_then(|s| self.data.get(s..));
        let unsupported = || GgufError::Unsupported {
            name: name.into(),
            ty: info.ty,
        };
        byte_len(info.ty, n).ok_or_else(unsupported)?;
        let values = bytes
            .and_then(|b| dequantize(info.ty, b, n))
            .ok_or_else(|| {
                GgufError::Format(format!("tensor `{name}` extends past the end of the file"))
            })?;
        let shape: Vec<i64> = info.dims.iter().rev().map(|&d| d as i64).collect();
        Ok(Tensor::from_slice(&values).reshape(shape))
    }

    fn meta_u(&self, key: &str) -> Result<usize, GgufError> {
        self.metadata
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| GgufError::Missing(key.into()))
    }

    /// The LLaMA configuration from `llama.*` metadata.
    pub fn llama_config(&self) -> Result<LlamaConfig, GgufError> {
        let f = |k: &str, d: f64| self.metadata.get(k).and_then(Value::as_f64).unwrap_or(d);
        let vocab = match self
            .metadata
            .get("llama.vocab_size")
            .and_then(Value::as_u64)
        {
            Some(v) => v as usize,
            None => match self.metadata.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => self
                    .tensors
                    .get("token_embd.weight")
                    .map(|t| t.dims[1] as usize)
                    .ok_or_else(|| GgufError::Missing("llama.vocab_size".into()))?,
            },
        };
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: self.meta_u("llama.embedding_length")?,
            intermediate_size: self.meta_u("llama.feed_forward_length")?,
            num_hidden_layers: self.meta_u("llama.block_count")?,
            num_attention_heads: self.meta_u("llama.attention.head_count")?,
            num_key_value_heads: self
                .meta_u("llama.attention.head_count_kv")
                .or_else(|_| self.meta_u("llama.attention.head_count"))?,
            rms_norm_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: f("llama.rope.freq_base", 10_000.0),
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            max_position_embeddings: self.meta_u("llama.context_length").unwrap_or(2048),
        })
    }

    /// Every LLaMA weight under its Hugging Face name, float32.
    pub fn llama_weights(&self, cfg: &LlamaConfig) -> Result<HashMap<String, Tensor>, GgufError> {
        let mut out = HashMap::new();
        let hd = cfg.head_dim() as i64;
        for (hf, gg) in name_map(cfg.num_hidden_layers, cfg.tie_word_embeddings) {
            let mut t = self.tensor(&gg)?;
            if let Some(heads) = permuted_heads(&hf, cfg) {
                t = unpermute(&t, heads, hd);
            }
            out.insert(hf, t);
        }
        Ok(out)
    }
}

/// For `q_proj` / `k_proj`, the head count llama.cpp permuted the rows with.
fn permuted_heads(hf: &str, cfg: &LlamaConfig) -> Option<i64> {
    if hf.ends_with("q_proj.weight") {
        Some(cfg.num_attention_heads as i64)
    } else if hf.ends_with("k_proj.weight") {
        Some(cfg.num_key_value_heads as i64)
    } else {
        None
    }
}

/// Undoes llama.cpp's `permute`: GGUF rows are (heads, hd/2, 2) interleaved, Hugging Face's are
/// (heads, 2, hd/2).
pub fn unpermute(w: &Tensor, heads: i64, hd: i64) -> Tensor {
    let cols = w.size()[1];
    w.reshape([heads, hd / 2, 2, cols])
        .transpose(1, 2)
        .reshape([heads * hd, cols])
}

/// The inverse of [`unpermute`] (what llama.cpp's converter does; for the test writer).
pub fn permute(w: &Tensor, heads: i64, hd: i64) -> Tensor {
    let cols = w.size()[1];
    w.reshape([heads, 2, hd / 2, cols])
        .transpose(1, 2)
        .reshape([heads * hd, cols])
}

/// (Hugging Face name, GGUF name) for every LLaMA weight.
pub fn name_map(layers: usize, tied: bool) -> Vec<(String, String)> {
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        "token_embd.weight".to_string(),
    )];
    for l in 0..layers {
        for (hf, gg) in [
            ("input_layernorm", "attn_norm"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ] {
            v.push((
                format!("model.layers.{l}.{hf}.weight"),
                format!("blk.{l}.{gg}.weight"),
            ));
        }
    }
    v.push(("model.norm.weight".into(), "output_norm.weight".into()));
    if !tied {
        v.push(("lm_head.weight".into(), "output.weight".into()));
    }
    v
}

/// Writes a GGUF v3 file (test fixtures): string and integer/float metadata, tensors stored as
/// F32, F16 or Q8_0 (Q8_0 needs rows that are multiples of 32).
pub fn write(
    path: &std::path::Path,
    metadata: &[(&str, Value)],
    tensors: &[(String, Tensor, u32)],
) -> std::io::Result<()> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    fn val(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(b) => out.push(*b as u8),
            Value::Str(x) => s(out, x),
            Value::Array(items) => {
                out.extend(type_of(items.first().unwrap_or(&Value::U64(0))).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| val(out, i));
            }
        }
    }
    fn type_of(v: &Value) -> u32 {
        match v {
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        s(&mut out, k);
        out.extend(type_of(v).to_le_bytes());
        val(&mut out, v);
    }
    let mut blobs = Vec::new();
    let mut offset = 0u64;
    for (name, t, ty) in tensors {
        let values: Vec<f32> =
            Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap_or_default();
        let blob: Vec<u8> = match *ty {
            ty::F16 => values
                .iter()
                .flat_map(|v| f32_to_half(*v).to_le_bytes())
                .collect(),
            ty::Q8_0 => values
                .chunks(32)
                .flat_map(|blk| {
                    let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let mut b = f32_to_half(d).to_le_bytes().to_vec();
                    b.extend(blk.iter().map(|v| (v * inv).round() as i8 as u8));
                    b
                })
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        s(&mut out, name);
        let dims: Vec<i64> = t.size().into_iter().rev().collect();
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter()
            .for_each(|d| out.extend((*d as u64).to_le_bytes()));
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        let padded = blob.len().div_ceil(32) * 32;
        offset += padded as u64;
        let mut blob = blob;
        blob.resize(padded, 0);
        blobs.push(blob);
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    blobs.iter().for_each(|b| out.extend(b));
    std::fs::write(path, out)
}
