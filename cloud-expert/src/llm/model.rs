//! A LLaMA-family decoder in tch (issue 5, in progress): RMSNorm, rotary position embeddings
//! (the Hugging Face `rotate_half` layout), grouped-query attention, SwiGLU MLP, tied or separate
//! output embedding, and a KV cache for incremental decoding. Weights use the Hugging Face
//! parameter names, so a `model.safetensors` of a LLaMA checkpoint loads as is.
//!
//! Invariant: decoding with the cache (prefill, then one token at a time) gives the same logits
//! as one forward pass over the whole sequence (tested).

use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// The subset of a Hugging Face LLaMA `config.json` the decoder needs.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether the output projection is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest sequence the rotary tables cover.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Why a model could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A weight is missing.
    #[error("weight `{0}` is missing")]
    Missing(String),
    /// A weight has the wrong shape.
    #[error("weight `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        /// Name.
        name: String,
        /// Found.
        got: Vec<i64>,
        /// Expected.
        want: Vec<i64>,
    },
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// libtorch failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Keys and values seen so far, per layer: (batch, kv_heads, positions, head_dim).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> i64 {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.size()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder: weights by Hugging Face name, plus rotary tables.
#[derive(Debug)]
pub struct Llama {
    /// Configuration.
    pub cfg: LlamaConfig,
    /// Weights by name.
    weights: HashMap<String, Tensor>,
    /// (max_pos, head_dim) cosine table.
    cos: Tensor,
    /// (max_pos, head_dim) sine table.
    sin: Tensor,
}

/// Every weight name and shape a config implies.
pub fn weight_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<i64>)> {
    let (h, i, v) = (
        cfg.hidden_size as i64,
        cfg.intermediate_size as i64,
        cfg.vocab_size as i64,
    );
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as i64;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

impl Llama {
    /// Builds the model from named weights, checking every name and shape.
    pub fn from_weights(
        cfg: LlamaConfig,
        mut weights: HashMap<String, Tensor>,
        device: Device,
    ) -> Result<Self, ModelError> {
        if cfg.num_attention_heads == 0
            || cfg.num_key_value_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
            || !cfg
                .num_attention_heads
                .is_multiple_of(cfg.num_key_value_heads)
            || !cfg.head_dim().is_multiple_of(2)
        {
            return Err(ModelError::Config(format!(
                "hidden {} / heads {} / kv heads {} do not give an even head width shared by whole groups",
                cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
            )));
        }
        let mut checked = HashMap::new();
        for (name, want) in weight_shapes(&cfg) {
            let t = weights
                .remove(&name)
                .ok_or_else(|| ModelError::Missing(name.clone()))?;
            if t.size() != want {
                return Err(ModelError::Shape {
                    name,
                    got: t.size(),
                    want,
                });
            }
            checked.insert(name, t.to_kind(Kind::Float).to_device(device));
        }
        let hd = cfg.head_dim() as i64;
        let inv = Tensor::arange_start_step(0, hd, 2, (Kind::Float, device))
            .divide_scalar(hd as f64)
            .multiply_scalar(-(cfg.rope_theta.ln()))
            .exp();
        let pos = Tensor::arange(cfg.max_position_embeddings as i64, (Kind::Float, device));
        let freqs = pos.outer(&inv);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Ok(Self {
            cos: emb.cos(),
            sin: emb.sin(),
            cfg,
            weights: checked,
        })
    }

    /// A randomly initialised model (tests and fixtures).
    pub fn random(cfg: LlamaConfig, seed: i64, device: Device) -> Result<Self, ModelError> {
        tch::manual_seed(seed);
        let weights = weight_shapes(&cfg)
            .into_iter()
            .map(|(name, shape)| {
                let t = if shape.len() == 1 {
                    Tensor::ones(shape.as_slice(), (Kind::Float, device))
                } else {
                    Tensor::randn(shape.as_slice(), (Kind::Float, device)) * 0.05
                };
                (name, t)
            })
            .collect();
        Self::from_weights(cfg, weights, device)
    }

    /// Named weights (e.g. to save as safetensors).
    pub fn weights(&self) -> &HashMap<String, Tensor> {
        &self.weights
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.weights[name]
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Tensor {
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (var + self.cfg.rms_norm_eps).rsqrt() * self.w(name)
    }

    fn rope(&self, x: &Tensor, start: i64) -> Tensor {
        // x: (B, heads, T, hd)
        let t = x.size()[2];
        let cos = self.cos.narrow(0, start, t);
        let sin = self.sin.narrow(0, start, t);
        let half = x.size()[3] / 2;
        let x1 = x.narrow(-1, 0, half);
        let x2 = x.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x * cos + rotated * sin
    }

    /// Logits (batch, T, vocab) for `tokens` (batch, T) at positions `cache.len()..`, appending
    /// their keys and values to `cache`.
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let (b, t) = tokens.size2()?;
        let start = cache.len();
        if start + t > self.cfg.max_position_embeddings as i64 {
            return Err(ModelError::Config(format!(
                "{} positions exceed max_position_embeddings {}",
                start + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (h, kvh, hd) = (
            self.cfg.num_attention_heads as i64,
            self.cfg.num_key_value_heads as i64,
            self.cfg.head_dim() as i64,
        );
        cache
            .layers
            .resize_with(self.cfg.num_hidden_layers, || None);
        let mut x = self
            .w("model.embed_tokens.weight")
            .index_select(0, &tokens.flatten(0, 1))
            .view([b, t, -1]);
        // Causal mask over (T, start + T): query i sees keys j <= start + i.
        let total = start + t;
        let q_pos = Tensor::arange_start(start, total, (Kind::Int64, x.device())).unsqueeze(1);
        let k_pos = Tensor::arange(total, (Kind::Int64, x.device())).unsqueeze(0);
        let mask = k_pos.gt_tensor(&q_pos);
        for (l, slot) in cache.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            let n = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"));
            let proj = |name: &str| n.matmul(&self.w(&format!("{p}.self_attn.{name}.weight")).tr());
            let q = proj("q_proj").view([b, t, h, hd]).transpose(1, 2);
            let k = proj("k_proj").view([b, t, kvh, hd]).transpose(1, 2);
            let v = proj("v_proj").view([b, t, kvh, hd]).transpose(1, 2);
            let q = self.rope(&q, start);
            let k = self.rope(&k, start);
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2)),
                None => (k, v),
            };
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
            let rep = h / kvh;
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None),
                    v.repeat_interleave_self_int(rep, 1, None),
                )
            } else {
                (k, v)
            };
            let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt();
            let scores = scores.masked_fill(&mask, f64::NEG_INFINITY);
            let attn = scores.softmax(-1, Kind::Float).matmul(&v);
            let attn = attn.transpose(1, 2).contiguous().view([b, t, h * hd]);
            x = &x + attn.matmul(&self.w(&format!("{p}.self_attn.o_proj.weight")).tr());
            let n = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"));
            let gate = n
                .matmul(&self.w(&format!("{p}.mlp.gate_proj.weight")).tr())
                .silu();
            let up = n.matmul(&self.w(&format!("{p}.mlp.up_proj.weight")).tr());
            x = &x + (gate * up).matmul(&self.w(&format!("{p}.mlp.down_proj.weight")).tr());
        }
        let x = self.rms_norm(&x, "model.norm.weight");
        let head = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        Ok(x.matmul(&self.w(head).tr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(tied: bool, kv_heads: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: kv_heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: tied,
            max_position_embeddings: 64,
        }
    }

    #[test]
    fn cached_decoding_equals_the_full_forward_pass() {
        let _g = tch::no_grad_guard();
        for (tied, kv) in [(true, 2), (false, 4), (true, 1)] {
            let m = Llama::random(tiny(tied, kv), 3, Device::Cpu).unwrap();
            let tokens = Tensor::from_slice(&[1i64, 7, 3, 9, 4, 22, 5, 8, 11, 2]).view([2, 5]);
            let full = m.forward(&tokens, &mut KvCache::default()).unwrap();
            let mut cache = KvCache::default();
            let mut steps = vec![m.forward(&tokens.narrow(1, 0, 2), &mut cache).unwrap()];
            for i in 2..5 {
                steps.push(m.forward(&tokens.narrow(1, i, 1), &mut cache).unwrap());
            }
            assert_eq!(cache.len(), 5);
            let inc = Tensor::cat(&steps, 1);
            let d = (&full - &inc).abs().max().double_value(&[]);
            assert!(d < 1e-5, "tied={tied} kv={kv}: {d}");
        }
    }

    #[test]
    fn future_tokens_do_not_change_past_logits_and_bad_weights_are_named() {
        let _g = tch::no_grad_guard();
        let m = Llama::random(tiny(true, 2), 5, Device::Cpu).unwrap();
        let a = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
        let b = Tensor::from_slice(&[1i64, 2, 3, 40]).view([1, 4]);
        let la = m.forward(&a, &mut KvCache::default()).unwrap();
        let lb = m.forward(&b, &mut KvCache::default()).unwrap();
        let past = (la.narrow(1, 0, 3) - lb.narrow(1, 0, 3))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(past, 0.0);
        let last = (la.narrow(1, 3, 1) - lb.narrow(1, 3, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(last > 0.0);
        let mut w: HashMap<String, Tensor> = m
            .weights()
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        w.remove("model.layers.1.mlp.up_proj.weight");
        let err = Llama::from_weights(tiny(true, 2), w, Device::Cpu).unwrap_err();
        assert!(
            err.to_string()
                .contains("model.layers.1.mlp.up_proj.weight"),
            "{err}"
        );
        let bad = LlamaConfig {
            num_key_value_heads: 3,
            ..tiny(true, 2)
        };
        assert!(Llama::random(bad, 0, Device::Cpu).is_err());
    }
}
