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
        self.forward_layers(tokens, cache, adapt, self.cfg.num_hidden_layers)
    }

    /// Hidden states (T, hidden) of one sequence after `layer` blocks (0: the token
    /// embeddings; the number of layers: the last block's output, before the final norm).
    pub fn hidden_states(&self, tokens: &[i64], layer: usize) -> Result<Tensor, ModelError> {
        if layer > self.cfg.num_hidden_layers || tokens.is_empty() {
            return Err(ModelError::Config(format!(
                "layer {layer} of {} (and at least one token)",
                self.cfg.num_hidden_layers
            )));
        }
        let t = Tensor::from_slice(tokens).view([1, -1]);
        let _g = tch::no_grad_guard();
        Ok(self
            .forward_layers(&t, &mut KvCache::default(), Adapt::None, layer)?
            .squeeze_dim(0))
    }

    /// Runs the first `layers` blocks; the output (batch, T, hidden).
    fn forward_layers(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        adapt: Adapt<'_>,
        layers: usize,
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
        for (l, slot) in cache.layers.iter_mut().enumerate().take(layers) {
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
mod tests;
