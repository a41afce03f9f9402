//! A LLaMA-family decoder in tch (issue 5, in progress): RMSNorm, rotary position embeddings
//! (the Hugging Face `rotate_half` layout), grouped-query attention, SwiGLU MLP, tied or separate
//! output embedding, and a KV cache for incremental decoding. Weights use the Hugging Face
//! parameter names, so a `model.safetensors` of a LLaMA checkpoint loads as is.
//!
//! Two ways to run it:
//! - [`Llama::forward`]: a (batch, T) block of tokens with a [`KvCache`], one adapter (or none)
//!   for every row: training, evaluation and the reference path.
//! - [`Llama::prefill`] / [`Llama::decode`]: the serving path over a [`SlotKv`], where each
//!   running sequence owns a slot, sequences sit at different positions, and every row may carry
//!   a different adapter ([`Adapt::Rows`]); base weights are read once per step for all rows.
//!
//! Invariants: decoding with the cache (prefill, then one token at a time) gives the same logits
//! as one forward pass over the whole sequence, and a row's logits in a mixed-adapter decode step
//! equal that sequence decoded alone with its adapter (both tested).

use super::adapter::{Adapter, Module};
use super::host::HostTables;
pub use super::kv::SlotKv;
use super::linear::{Fused, Precision, Weight};
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

/// Which adapter applies to which rows of a forward pass.
#[derive(Debug, Clone, Copy)]
pub enum Adapt<'a> {
    /// The base model.
    None,
    /// One adapter for every row.
    All(&'a Adapter),
    /// Per-adapter groups of row indices (into the flattened rows); other rows get the base.
    Rows(&'a [(&'a Adapter, Tensor)]),
}

/// One decoder block's weights.
#[derive(Debug)]
pub(super) struct Block {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    /// Indexed by `Module as usize`.
    pub(super) proj: Vec<Weight>,
    /// q, k, v stacked for the kernel (float32 and int8 serving).
    pub(super) qkv: Option<Fused>,
    /// gate, up stacked for the kernel (float32 and int8 serving).
    pub(super) gate_up: Option<Fused>,
}

/// The decoder: weights by Hugging Face name, the per-block view used for compute, and rotary
/// tables.
#[derive(Debug)]
pub struct Llama {
    /// Configuration.
    pub cfg: LlamaConfig,
    /// Weights by name (float32; the source of truth).
    weights: HashMap<String, Tensor>,
    pub(super) blocks: Vec<Block>,
    pub(super) embed: Tensor,
    pub(super) head: Weight,
    /// Host copies of norms and rotary tables when every weight is packed (see `host.rs`).
    pub(super) host: Option<HostTables>,
    final_norm: Tensor,
    precision: Precision,
    /// (max_pos, head_dim) cosine table.
    cos: Tensor,
    /// (max_pos, head_dim) sine table.
    sin: Tensor,
}

/// Every weight name and shape a config implies.
pub fn weight_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<i64>)> {
    let (h, v) = (cfg.hidden_size as i64, cfg.vocab_size as i64);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for m in Module::ALL {
            let (o, i) = m.dims(cfg);
            out.push((m.weight_name(l), vec![o as i64, i as i64]));
        }
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
        let w = |n: &str| checked[n].shallow_clone();
        let head_name = if cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let mut m = Self {
            cos: emb.cos(),
            sin: emb.sin(),
            blocks: Vec::new(),
            embed: w("model.embed_tokens.weight"),
            head: Weight::F32(w(head_name)),
            final_norm: w("model.norm.weight"),
            precision: Precision::F32,
            host: None,
            cfg,
            weights: checked,
        };
        m.build_blocks(Precision::F32, false);
        Ok(m)
    }

    /// Rebuilds the compute weights in `precision` for serving (the float32 originals are kept;
    /// float32 also gets the multi-threaded decoding kernel's copy of every matrix).
    pub fn set_precision(&mut self, precision: Precision) {
        self.build_blocks(precision, true);
    }

    fn build_blocks(&mut self, precision: Precision, serving: bool) {
        let _g = tch::no_grad_guard();
        let make = |w: &Tensor| {
            if serving {
                Weight::new_serving(w, precision)
            } else {
                Weight::new(w, precision)
            }
        };
        let w = |n: &str| &self.weights[n];
        // Kernel serving (float32, int8): q/k/v and gate/up go to the kernel stacked (one
        // dispatch each), so their separate weights stay plain float32 libtorch tensors (shared
        // storage; training and the fallback).
        let fuse = serving && precision != Precision::Bf16;
        self.blocks = (0..self.cfg.num_hidden_layers)
            .map(|l| {
                let stack = |ms: &[Module]| {
                    let ws: Vec<&Tensor> = ms.iter().map(|m| w(&m.weight_name(l))).collect();
                    if fuse {
                        Fused::new(&ws, precision)
                    } else {
                        None
                    }
                };
                let qkv = stack(&[Module::QProj, Module::KProj, Module::VProj]);
                let gate_up = stack(&[Module::GateProj, Module::UpProj]);
                let fused = |m: &Module| match m {
                    Module::QProj | Module::KProj | Module::VProj => qkv.is_some(),
                    Module::GateProj | Module::UpProj => gate_up.is_some(),
                    _ => false,
                };
                Block {
                    attn_norm: w(&format!("model.layers.{l}.input_layernorm.weight"))
                        .shallow_clone(),
                    mlp_norm: w(&format!("model.layers.{l}.post_attention_layernorm.weight"))
                        .shallow_clone(),
                    proj: Module::ALL
                        .iter()
                        .map(|m| {
                            if fused(m) {
                                Weight::F32(w(&m.weight_name(l)).shallow_clone())
                            } else {
                                make(w(&m.weight_name(l)))
                            }
                        })
                        .collect(),
                    qkv,
                    gate_up,
                }
            })
            .collect();
        let head_name = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        self.head = make(w(head_name));
        self.precision = precision;
        let packed = |w: &Weight| matches!(w, Weight::Kernel { .. });
        let all_packed = packed(&self.head)
            && self.blocks.iter().all(|b| {
                b.qkv.is_some()
                    && b.gate_up.is_some()
                    && packed(&b.proj[Module::OProj as usize])
                    && packed(&b.proj[Module::DownProj as usize])
            });
        self.host = all_packed.then(|| {
            let attn: Vec<&Tensor> = self.blocks.iter().map(|b| &b.attn_norm).collect();
            let mlp: Vec<&Tensor> = self.blocks.iter().map(|b| &b.mlp_norm).collect();
            HostTables::new(&attn, &mlp, &self.final_norm, &self.cos, &self.sin)
        });
    }

    /// The compute precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of weights read per decoding step (the memory-bandwidth floor's numerator).
    pub fn bytes_per_step(&self) -> usize {
        let norms = (2 * self.blocks.len() + 1) * self.cfg.hidden_size * 4;
        self.blocks
            .iter()
            .map(|b| {
                let stacked = |f: &Option<Fused>, ms: &[Module]| match f {
                    Some(f) => f.bytes(),
                    None => ms.iter().map(|&m| b.proj[m as usize].bytes()).sum(),
                };
                stacked(&b.qkv, &[Module::QProj, Module::KProj, Module::VProj])
                    + stacked(&b.gate_up, &[Module::GateProj, Module::UpProj])
                    + b.proj[Module::OProj as usize].bytes()
                    + b.proj[Module::DownProj as usize].bytes()
            })
            .sum::<usize>()
            + self.head.bytes()
            + norms
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

    /// A copy of this model with `adapter` merged into its weights (single-adapter serving).
    pub fn merged(&self, adapter: &Adapter) -> Result<Self, ModelError> {
        let _g = tch::no_grad_guard();
        let mut w: HashMap<String, Tensor> = self
            .weights
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        for (&(l, m), u) in &adapter.updates {
            let name = m.weight_name(l);
            let merged = u.merge_into(&w[&name]);
            w.insert(name, merged);
        }
        let mut out = Self::from_weights(self.cfg.clone(), w, self.embed.device())?;
        out.set_precision(self.precision);
        Ok(out)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (var + self.cfg.rms_norm_eps).rsqrt() * w
    }

    /// A block's module applied to `x` (..., d_in), plus the adapters' updates.
    fn linear(&self, l: usize, m: Module, x: &Tensor, adapt: Adapt<'_>) -> Tensor {
        let y = self.blocks[l].proj[m as usize].apply(x);
        self.adapted(l, m, x, y, adapt)
    }

    /// Several modules on the same input: stacked through the kernel when it applies.
    fn linears<const N: usize>(
        &self,
        l: usize,
        ms: [Module; N],
        fused: Option<&Fused>,
        x: &Tensor,
        adapt: Adapt<'_>,
    ) -> [Tensor; N] {
        if let Some(mut ys) = fused.and_then(|f| f.try_apply(x)) {
            if ys.len() == N {
                let mut ys = ys.drain(..);
                return ms.map(|m| {
                    let y = ys
                        .next()
                        .unwrap_or_else(|| self.blocks[l].proj[m as usize].apply(x));
                    self.adapted(l, m, x, y, adapt)
                });
            }
        }
        ms.map(|m| self.linear(l, m, x, adapt))
    }

    /// `y` (the base output of module `m` for `x`) plus the adapters' updates.
    fn adapted(&self, l: usize, m: Module, x: &Tensor, y: Tensor, adapt: Adapt<'_>) -> Tensor {
        match adapt {
            Adapt::None => y,
            Adapt::All(a) => match a.update(l, m) {
                Some(u) => y + u.delta(x),
                None => y,
            },
            Adapt::Rows(groups) => {
                let mut y = y;
                for (a, idx) in groups {
                    if let Some(u) = a.update(l, m) {
                        let d = u.delta(&x.index_select(0, idx));
                        y = y.index_add(0, idx, &d);
                    }
                }
                y
            }
        }
    }

    fn qkv(&self, l: usize, n: &Tensor, adapt: Adapt<'_>) -> [Tensor; 3] {
        self.linears(
            l,
            [Module::QProj, Module::KProj, Module::VProj],
            self.blocks[l].qkv.as_ref(),
            n,
            adapt,
        )
    }

    /// Rotary embedding of `x` (B, heads, T, hd) at positions `start..start+T`.
    fn rope(&self, x: &Tensor, start: i64) -> Tensor {
        let t = x.size()[2];
        rotate(
            x,
            &self.cos.narrow(0, start, t),
            &self.sin.narrow(0, start, t),
        )
    }

    fn mlp(&self, l: usize, x: &Tensor, adapt: Adapt<'_>) -> Tensor {
        let n = self.rms_norm(x, &self.blocks[l].mlp_norm);
        let [gate, up] = self.linears(
            l,
            [Module::GateProj, Module::UpProj],
            self.blocks[l].gate_up.as_ref(),
            &n,
            adapt,
        );
        let gate = gate.silu();
        x + self.linear(l, Module::DownProj, &(gate * up), adapt)
    }

    fn logits(&self, x: &Tensor) -> Tensor {
        self.head.apply(&self.rms_norm(x, &self.final_norm))
    }

    pub(super) fn check_positions(&self, end: i64) -> Result<(), ModelError> {
        if end > self.cfg.max_position_embeddings as i64 {
            return Err(ModelError::Config(format!(
                "{end} positions exceed max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Logits (batch, T, vocab) for `tokens` (batch, T) at positions `cache.len()..`, appending
    /// their keys and values to `cache`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        adapt: Adapt<'_>,
    ) -> Result<Tensor, ModelError> {
        Ok(self.head(&self.forward_hidden(tokens, cache, adapt)?))
    }

    /// Logits for hidden states from [`Llama::forward_hidden`] (any leading shape): training
    /// computes them only at the positions that carry a loss.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        self.logits(hidden)
    }

    /// The last block's output (batch, T, hidden), before the final norm and the output head.
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        adapt: Adapt<'_>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = tokens.size2()?;
        let start = cache.len();
        self.check_positions(start + t)?;
        let (h, kvh, hd) = self.heads();
        cache
            .layers
            .resize_with(self.cfg.num_hidden_layers, || None);
        let mut x = self
            .embed
            .index_select(0, &tokens.flatten(0, 1))
            .view([b, t, -1]);
        // Causal mask over (T, start + T): query i sees keys j <= start + i.
        let total = start + t;
        let q_pos = Tensor::arange_start(start, total, (Kind::Int64, x.device())).unsqueeze(1);
        let k_pos = Tensor::arange(total, (Kind::Int64, x.device())).unsqueeze(0);
        let mask = k_pos.gt_tensor(&q_pos);
        for (l, slot) in cache.layers.iter_mut().enumerate() {
            let n = self.rms_norm(&x, &self.blocks[l].attn_norm);
            let [q, k, v] = self.qkv(l, &n, adapt);
            let q = self.rope(&q.view([b, t, h, hd]).transpose(1, 2), start);
            let k = self.rope(&k.view([b, t, kvh, hd]).transpose(1, 2), start);
            let v = v.view([b, t, kvh, hd]).transpose(1, 2);
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2)),
                None => (k, v),
            };
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
            let attn = grouped_attention(&q, &k, &v, &mask, hd).reshape([b, t, h * hd]);
            x = &x + self.linear(l, Module::OProj, &attn, adapt);
            x = self.mlp(l, &x, adapt);
        }
        Ok(x)
    }

    fn heads(&self) -> (i64, i64, i64) {
        (
            self.cfg.num_attention_heads as i64,
            self.cfg.num_key_value_heads as i64,
            self.cfg.head_dim() as i64,
        )
    }

    /// Runs a new sequence's prompt into `slot` of `kv` (positions 0..T) and returns the logits
    /// (vocab) of its last position.
    pub fn prefill(
        &self,
        tokens: &[i64],
        slot: i64,
        kv: &mut SlotKv,
        adapter: Option<&Adapter>,
    ) -> Result<Tensor, ModelError> {
        let t = tokens.len() as i64;
        if t == 0 {
            return Err(ModelError::Config("empty prompt".into()));
        }
        self.check_positions(t)?;
        kv.ensure(t);
        let adapt = adapter.map_or(Adapt::None, Adapt::All);
        let (h, kvh, hd) = self.heads();
        let dev = self.embed.device();
        let ids = Tensor::from_slice(tokens).to_device(dev);
        let mut x = self.embed.index_select(0, &ids).unsqueeze(0);
        let pos = Tensor::arange(t, (Kind::Int64, dev));
        let mask = pos.unsqueeze(0).gt_tensor(&pos.unsqueeze(1));
        for l in 0..self.blocks.len() {
            let n = self.rms_norm(&x, &self.blocks[l].attn_norm);
            let [q, k, v] = self.qkv(l, &n, adapt);
            let q = self.rope(&q.view([1, t, h, hd]).transpose(1, 2), 0);
            let k = self.rope(&k.view([1, t, kvh, hd]).transpose(1, 2), 0);
            let v = v.view([1, t, kvh, hd]).transpose(1, 2);
            kv.write_prefix(l, slot, &k, &v);
            let attn = grouped_attention(&q, &k, &v, &mask, hd).reshape([1, t, h * hd]);
            x = &x + self.linear(l, Module::OProj, &attn, adapt);
            x = self.mlp(l, &x, adapt);
        }
        Ok(self.logits(&x.select(1, t - 1)).squeeze_dim(0))
    }

    /// One decoding step for S running sequences: `tokens[i]` at position `pos[i]` of slot
    /// `slots[i]`; returns logits (S, vocab). Rows in `adapt`'s groups get their adapter.
    pub fn decode(
        &self,
        tokens: &[i64],
        slots: &[i64],
        pos: &[i64],
        kv: &mut SlotKv,
        adapt: Adapt<'_>,
    ) -> Result<Tensor, ModelError> {
        let s = tokens.len() as i64;
        let longest = pos.iter().copied().max().unwrap_or(0) + 1;
        self.check_positions(longest)?;
        kv.ensure(longest);
        let (h, kvh, hd) = self.heads();
        let rep = h / kvh;
        let dev = self.embed.device();
        let ids = Tensor::from_slice(tokens).to_device(dev);
        let pos_t = Tensor::from_slice(pos).to_device(dev);
        let slots_t = Tensor::from_slice(slots).to_device(dev);
        let consecutive = slots.windows(2).all(|w| w[1] == w[0] + 1);
        let mut x = self.embed.index_select(0, &ids);
        let cos = self.cos.index_select(0, &pos_t).unsqueeze(1);
        let sin = self.sin.index_select(0, &pos_t).unsqueeze(1);
        // Key j is visible to row i when j <= pos[i]: (S, 1, 1, L).
        let mask = Tensor::arange(longest, (Kind::Int64, dev))
            .unsqueeze(0)
            .gt_tensor(&pos_t.unsqueeze(1))
            .view([s, 1, 1, longest]);
        for l in 0..self.blocks.len() {
            let n = self.rms_norm(&x, &self.blocks[l].attn_norm);
            let [q, k, v] = self.qkv(l, &n, adapt);
            let (q, k, v) = (
                q.view([s, h, hd]),
                k.view([s, kvh, hd]),
                v.view([s, kvh, hd]),
            );
            let q = rotate(&q, &cos, &sin);
            let k = rotate(&k, &cos, &sin);
            kv.write_rows(l, &slots_t, &pos_t, &k, &v);
            let (kk, vv) = kv.read(l, slots, &slots_t, consecutive, longest);
            // (S, kvh, rep, hd) x (S, kvh, hd, L) -> (S, kvh, rep, L)
            let scores =
                q.view([s, kvh, rep, hd]).matmul(&kk.transpose(-2, -1)) / (hd as f64).sqrt();
            let p = scores
                .masked_fill(&mask, f64::NEG_INFINITY)
                .softmax(-1, Kind::Float);
            let attn = p.matmul(&vv).reshape([s, h * hd]);
            x = &x + self.linear(l, Module::OProj, &attn, adapt);
            x = self.mlp(l, &x, adapt);
        }
        Ok(self.logits(&x))
    }
}

/// `x * cos + rotate_half(x) * sin` (the Hugging Face layout: halves, not interleaved pairs).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x * cos + rotated * sin
}

/// Attention of q (B, H, T, hd) over k, v (B, KVH, L, hd) with query groups sharing a KV head;
/// `mask` (T, L) is true where a key is hidden. Returns (B, T, H, hd).
pub(super) fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    hd: i64,
) -> Tensor {
    let (b, h, t, _) = q.size4().unwrap_or((1, 1, 1, 1));
    let kvh = k.size()[1];
    let rep = h / kvh;
    // (B, KVH, rep*T, hd): the group's queries stacked along time.
    let qg = q.reshape([b, kvh, rep * t, hd]);
    let scores = qg.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt();
    let l = k.size()[2];
    let scores = scores
        .view([b, kvh, rep, t, l])
        .masked_fill(mask, f64::NEG_INFINITY);
    let p = scores.softmax(-1, Kind::Float).view([b, kvh, rep * t, l]);
    p.matmul(v).view([b, h, t, hd]).transpose(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::lsr::Init;

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
            let full = m
                .forward(&tokens, &mut KvCache::default(), Adapt::None)
                .unwrap();
            let mut cache = KvCache::default();
            let mut steps = vec![m
                .forward(&tokens.narrow(1, 0, 2), &mut cache, Adapt::None)
                .unwrap()];
            for i in 2..5 {
                steps.push(
                    m.forward(&tokens.narrow(1, i, 1), &mut cache, Adapt::None)
                        .unwrap(),
                );
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
        let la = m.forward(&a, &mut KvCache::default(), Adapt::None).unwrap();
        let lb = m.forward(&b, &mut KvCache::default(), Adapt::None).unwrap();
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn mixed_adapter_decode_steps_equal_each_sequence_decoded_alone() {
        let _g = tch::no_grad_guard();
        let cfg = LlamaConfig {
            hidden_size: 36,
            num_attention_heads: 6,
            num_key_value_heads: 2,
            ..tiny(true, 2)
        };
        let mut m = Llama::random(cfg.clone(), 11, Device::Cpu).unwrap();
        // The serving layout: float32 kernel weights with q/k/v and gate/up stacked.
        m.set_precision(Precision::F32);
        let lsr = Adapter::new_lsr(
            "t",
            &cfg,
            &Module::ALL,
            2,
            2,
            2,
            8.0,
            Init::SmallRandom,
            Device::Cpu,
        )
        .unwrap()
        .detached();
        let lora = Adapter::new_lora(
            "t",
            &cfg,
            &[Module::QProj, Module::VProj],
            4,
            8.0,
            Device::Cpu,
        )
        .unwrap();
        // LoRA starts at B = 0; give it a visible update.
        let lora = {
            let d = lora.detached();
            for u in d.updates.values() {
                if let crate::llm::adapter::Update::Lora(x) = u {
                    let _ = x.b.shallow_clone().normal_(0.0, 0.05);
                }
            }
            d
        };
        let prompts: [&[i64]; 3] = [&[1, 2, 3, 4, 5], &[7, 8], &[9, 10, 11]];
        let adapters = [Some(&lsr), None, Some(&lora)];
        // Reference: each sequence alone through `forward` with its adapter.
        let steps = 4;
        let mut want = Vec::new();
        for (p, a) in prompts.iter().zip(adapters) {
            let adapt = a.map_or(Adapt::None, Adapt::All);
            let mut cache = KvCache::default();
            let mut toks = p.to_vec();
            let mut rows = Vec::new();
            let mut last = m
                .forward(&Tensor::from_slice(&toks).view([1, -1]), &mut cache, adapt)
                .unwrap()
                .select(1, toks.len() as i64 - 1);
            for _ in 0..steps {
                rows.push(last.shallow_clone());
                let next = last.argmax(-1, false).int64_value(&[0]);
                toks.push(next);
                last = m
                    .forward(&Tensor::from_slice(&[next]).view([1, 1]), &mut cache, adapt)
                    .unwrap()
                    .select(1, 0);
            }
            want.push(rows);
        }
        // Serving path: slots 2, 0, 1 (not consecutive), prefill then mixed decode steps.
        let slots = [2i64, 0, 1];
        let mut kv = SlotKv::new(cfg.num_hidden_layers, 3, 2, cfg.head_dim(), 64, Device::Cpu);
        let mut last: Vec<Tensor> = prompts
            .iter()
            .zip(adapters)
            .zip(slots)
            .map(|((p, a), s)| m.prefill(p, s, &mut kv, a).unwrap())
            .collect();
        let mut pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        let groups = [
            (&lsr, Tensor::from_slice(&[0i64])),
            (&lora, Tensor::from_slice(&[2i64])),
        ];
        for step in 0..steps {
            for i in 0..3 {
                let d = max_diff(&last[i], &want[i][step].squeeze());
                assert!(d < 1e-4, "sequence {i} step {step}: {d}");
            }
            let toks: Vec<i64> = last
                .iter()
                .map(|l| l.argmax(-1, false).int64_value(&[]))
                .collect();
            let out = m
                .decode(&toks, &slots, &pos, &mut kv, Adapt::Rows(&groups))
                .unwrap();
            last = (0..3).map(|i| out.get(i)).collect();
            pos.iter_mut().for_each(|p| *p += 1);
        }
        assert!(kv.capacity() >= 9);
        // Host path: the three prompts prefilled in one batch, then mixed decode steps.
        assert!(m.host_ready());
        let hslots = [2usize, 0, 1];
        let mut hkv = m.host_kv(3);
        let (mut toks, mut hs, mut hp, mut ends) = (vec![], vec![], vec![], vec![]);
        let (mut lsr_rows, mut lora_rows) = (vec![], vec![]);
        for (i, p) in prompts.iter().enumerate() {
            for (j, &t) in p.iter().enumerate() {
                [&mut lsr_rows, &mut vec![], &mut lora_rows][i].push(toks.len());
                toks.push(t);
                hs.push(hslots[i]);
                hp.push(j);
            }
            ends.push(toks.len() - 1);
        }
        let g0 = [(&lsr, lsr_rows), (&lora, lora_rows)];
        fn batch<'a>(
            tokens: &'a [i64],
            slots: &'a [usize],
            pos: &'a [usize],
            groups: &'a [(&'a Adapter, Vec<usize>)],
        ) -> crate::llm::host::Rows<'a> {
            crate::llm::host::Rows {
                tokens,
                slots,
                pos,
                groups,
            }
        }
        let v = cfg.vocab_size;
        let mut out = m
            .forward_host(&batch(&toks, &hs, &hp, &g0), &mut hkv, &ends)
            .unwrap();
        let mut hpos: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let g1 = [(&lsr, vec![0usize]), (&lora, vec![2usize])];
        for step in 0..steps {
            let mut next = vec![];
            for i in 0..3 {
                let got = Tensor::from_slice(&out[i * v..(i + 1) * v]);
                let d = max_diff(&got, &want[i][step].squeeze());
                assert!(d < 1e-4, "host: sequence {i} step {step}: {d}");
                next.push(got.argmax(-1, false).int64_value(&[]));
            }
            out = m
                .forward_host(&batch(&next, &hslots, &hpos, &g1), &mut hkv, &[0, 1, 2])
                .unwrap();
            hpos.iter_mut().for_each(|p| *p += 1);
        }
        // A position past the cached ones is refused before anything changes.
        let gap = m.forward_host(&batch(&[1], &[0], &[hpos[1] + 1], &[]), &mut hkv, &[0]);
        assert!(matches!(gap, Err(ModelError::Config(e)) if e.contains("position")));
        // Merging the adapter into the weights gives the adapter's logits.
        let merged = m.merged(&lsr).unwrap();
        let t = Tensor::from_slice(prompts[0]).view([1, -1]);
        let a = merged
            .forward(&t, &mut KvCache::default(), Adapt::None)
            .unwrap();
        let b = m
            .forward(&t, &mut KvCache::default(), Adapt::All(&lsr))
            .unwrap();
        assert!(max_diff(&a, &b) < 1e-4);
        let e = m
            .forward(&t, &mut KvCache::default(), Adapt::All(&lsr.expanded()))
            .unwrap();
        assert!(max_diff(&e, &b) < 1e-4);
    }

    #[test]
    fn low_precision_weights_keep_the_greedy_tokens_close() {
        let _g = tch::no_grad_guard();
        let mut m = Llama::random(tiny(true, 2), 4, Device::Cpu).unwrap();
        let t = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, -1]);
        let want = m.forward(&t, &mut KvCache::default(), Adapt::None).unwrap();
        let f32_bytes = m.bytes_per_step();
        for p in [Precision::Bf16, Precision::Int8] {
            m.set_precision(p);
            let got = m.forward(&t, &mut KvCache::default(), Adapt::None).unwrap();
            let rel = max_diff(&got, &want) / want.abs().max().double_value(&[]);
            assert!(rel < 0.05, "{p:?}: {rel}");
            assert!(m.bytes_per_step() < f32_bytes / 2 + 4096, "{p:?}");
        }
    }
}
