//! Adapters for a whole decoder: LSR-Adapt or LoRA updates on chosen linear modules of chosen
//! layers, kept in a PEFT-style directory (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! Tensor names follow PEFT: `base_model.model.model.layers.{l}.{self_attn|mlp}.{module}.` plus
//! `lora_A.weight` (r, d_in) / `lora_B.weight` (d_out, r) for LoRA, and `lsr_A1` (s, r1, a),
//! `lsr_A2` (s, r2, b), `lsr_B1` (s, c, r1), `lsr_B2` (s, d, r2) for LSR. The config records the
//! base model's name and dimensions; [`Adapter::check_fits`] refuses an adapter whose layers or
//! shapes do not match the model it is loaded onto.

use super::lsr::{Init, LoraAdapter, LsrAdapter, LsrShape, ShapeError};
use super::model::LlamaConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// An adaptable linear module of a LLaMA block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// Attention query.
    QProj,
    /// Attention key.
    KProj,
    /// Attention value.
    VProj,
    /// Attention output.
    OProj,
    /// MLP gate.
    GateProj,
    /// MLP up.
    UpProj,
    /// MLP down.
    DownProj,
}

impl Module {
    /// Every module, in block order.
    pub const ALL: [Module; 7] = [
        Module::QProj,
        Module::KProj,
        Module::VProj,
        Module::OProj,
        Module::GateProj,
        Module::UpProj,
        Module::DownProj,
    ];

    /// Hugging Face name (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Module::QProj => "q_proj",
            Module::KProj => "k_proj",
            Module::VProj => "v_proj",
            Module::OProj => "o_proj",
            Module::GateProj => "gate_proj",
            Module::UpProj => "up_proj",
            Module::DownProj => "down_proj",
        }
    }

    /// Accepts `q` or `q_proj` (and so on).
    pub fn parse(s: &str) -> Option<Module> {
        let s = s.trim();
        Module::ALL
            .into_iter()
            .find(|m| m.name() == s || m.name().trim_end_matches("_proj") == s)
    }

    /// `self_attn` or `mlp`.
    pub fn parent(self) -> &'static str {
        match self {
            Module::GateProj | Module::UpProj | Module::DownProj => "mlp",
            _ => "self_attn",
        }
    }

    /// Hugging Face weight name in layer `l`.
    pub fn weight_name(self, l: usize) -> String {
        format!("model.layers.{l}.{}.{}.weight", self.parent(), self.name())
    }

    /// (d_out, d_in) of this module for a model.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let kv = cfg.num_key_value_heads * cfg.head_dim();
        match self {
            Module::QProj | Module::OProj => (h, h),
            Module::KProj | Module::VProj => (kv, h),
            Module::GateProj | Module::UpProj => (i, h),
            Module::DownProj => (h, i),
        }
    }
}

/// One module's update.
#[derive(Debug)]
pub enum Update {
    /// LoRA factors.
    Lora(LoraAdapter),
    /// LSR-Adapt factors (matrix-free forward).
    Lsr(LsrAdapter),
}

impl Update {
    /// `scale * (x A^T) B^T`.
    pub fn delta(&self, x: &Tensor) -> Tensor {
        match self {
            Update::Lora(u) => u.delta(x),
            Update::Lsr(u) => u.delta(x),
        }
    }

    /// Trainable tensors.
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Update::Lora(u) => vec![&u.a, &u.b],
            Update::Lsr(u) => vec![&u.a1, &u.a2, &u.b1, &u.b2],
        }
    }

    /// Parameter count.
    pub fn parameters(&self) -> usize {
        self.tensors().iter().map(|t| t.numel()).sum()
    }

    /// The same update as plain LoRA factors with the scale folded in (LoRA's compute).
    pub fn expanded(&self) -> Update {
        match self {
            Update::Lora(u) => Update::Lora(LoraAdapter {
                a: u.a.detach().copy(),
                b: u.b.detach() * u.scale,
                scale: 1.0,
            }),
            Update::Lsr(u) => {
                let (a, b) = u.expand();
                Update::Lora(LoraAdapter {
                    a: a.detach(),
                    b: b.detach(),
                    scale: 1.0,
                })
            }
        }
    }

    /// `W + scale * B A`.
    pub fn merge_into(&self, w: &Tensor) -> Tensor {
        match self {
            Update::Lora(u) => w + u.b.matmul(&u.a) * u.scale,
            Update::Lsr(u) => u.merge_into(w),
        }
    }
}

/// Which kind of adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AdapterKind {
    /// LSR-Adapt.
    Lsr,
    /// LoRA.
    Lora,
}

/// The base model an adapter was trained for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseDims {
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Vocabulary.
    pub vocab_size: usize,
}

impl From<&LlamaConfig> for BaseDims {
    fn from(c: &LlamaConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_key_value_heads: c.num_key_value_heads,
            vocab_size: c.vocab_size,
        }
    }
}

/// `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    /// `LSR` or `LORA`.
    pub peft_type: AdapterKind,
    /// Name or path of the base model.
    pub base_model_name_or_path: String,
    /// Its dimensions (checked on load).
    pub base_model_dims: BaseDims,
    /// Bottleneck (LoRA rank; `r1 * r2` for LSR).
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Adapted modules.
    pub target_modules: Vec<Module>,
    /// LSR separation rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separation_rank: Option<usize>,
    /// LSR rank factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r1: Option<usize>,
    /// See `r1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<usize>,
    /// `zero` (LoRA-style, default) or `small_random` (the LSR authors').
    #[serde(default = "zero")]
    pub init: String,
    /// Always `CAUSAL_LM`.
    #[serde(default = "causal")]
    pub task_type: String,
}

fn zero() -> String {
    "zero".into()
}
fn causal() -> String {
    "CAUSAL_LM".into()
}

/// Why an adapter could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file problem.
    #[error("{path}: {msg}")]
    File {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        msg: String,
    },
    /// The adapter does not match the base model.
    #[error("adapter does not fit the base model: {0}")]
    Mismatch(String),
    /// A shape cannot be factorised.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// Invalid settings.
    #[error("{0}")]
    Invalid(String),
}

/// An adapter for a whole model.
#[derive(Debug)]
pub struct Adapter {
    /// Configuration.
    pub config: AdapterConfig,
    /// Updates by (layer, module).
    pub updates: HashMap<(usize, Module), Update>,
    /// Host copies of the LoRA factors, taken on first use by the host forward pass (serving
    /// adapters are frozen; a training loop never calls it).
    host: std::sync::OnceLock<HashMap<(usize, Module), HostLora>>,
}

/// One LoRA update as host vectors: `delta = ((x A^T) * scale) B^T`.
#[derive(Debug)]
pub struct HostLora {
    /// (r, d_in), row-major.
    pub a: Vec<f32>,
    /// B^T: (r, d_out), row-major.
    pub bt: Vec<f32>,
    /// Rank.
    pub r: usize,
    /// Output width.
    pub d_out: usize,
    /// Scale.
    pub scale: f32,
}

impl Adapter {
    /// An adapter from its configuration and updates.
    pub fn from_parts(config: AdapterConfig, updates: HashMap<(usize, Module), Update>) -> Self {
        Self {
            config,
            updates,
            host: std::sync::OnceLock::new(),
        }
    }

    /// Host copies of the LoRA updates (built once; LSR updates are not in it).
    pub fn host_factors(&self) -> &HashMap<(usize, Module), HostLora> {
        self.host.get_or_init(|| {
            let vec = |t: &Tensor| {
                Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).contiguous().flatten(0, -1))
                    .unwrap_or_default()
            };
            self.updates
                .iter()
                .filter_map(|(k, u)| match u {
                    Update::Lora(x) => Some((
                        *k,
                        HostLora {
                            a: vec(&x.a),
                            bt: vec(&x.b.tr()),
                            r: x.a.size()[0] as usize,
                            d_out: x.b.size()[0] as usize,
                            scale: x.scale as f32,
                        },
                    )),
                    Update::Lsr(_) => None,
                })
                .collect()
        })
    }

    /// A fresh LSR adapter (trainable factors) for every target module of every layer.
    #[allow(clippy::too_many_arguments)]
    pub fn new_lsr(
        base: &str,
        cfg: &LlamaConfig,
        targets: &[Module],
        s: usize,
        r1: usize,
        r2: usize,
        alpha: f64,
        init: Init,
        device: Device,
    ) -> Result<Self, AdapterError> {
        let mut updates = HashMap::new();
        for l in 0..cfg.num_hidden_layers {
            for &m in targets {
                let (o, i) = m.dims(cfg);
                let shape = LsrShape::for_layer(o, i, s, r1, r2)?;
                let u = LsrAdapter::new(shape, alpha, init, device);
                updates.insert((l, m), Update::Lsr(u));
            }
        }
        let config = AdapterConfig {
            peft_type: AdapterKind::Lsr,
            base_model_name_or_path: base.into(),
            base_model_dims: cfg.into(),
            r: r1 * r2,
            lora_alpha: alpha,
            target_modules: targets.to_vec(),
            separation_rank: Some(s),
            r1: Some(r1),
            r2: Some(r2),
            init: match init {
                Init::Zero => "zero",
                Init::SmallRandom => "small_random",
            }
            .into(),
            task_type: causal(),
        };
        Ok(Self::from_parts(config, updates).requiring_grad())
    }

    /// A fresh LoRA adapter of rank `r`.
    pub fn new_lora(
        base: &str,
        cfg: &LlamaConfig,
        targets: &[Module],
        r: usize,
        alpha: f64,
        device: Device,
    ) -> Result<Self, AdapterError> {
        if r == 0 {
            return Err(AdapterError::Invalid("LoRA rank must be positive".into()));
        }
        let mut updates = HashMap::new();
        for l in 0..cfg.num_hidden_layers {
            for &m in targets {
                let (o, i) = m.dims(cfg);
                updates.insert(
                    (l, m),
                    Update::Lora(LoraAdapter::new(o, i, r, alpha, device)),
                );
            }
        }
        let config = AdapterConfig {
            peft_type: AdapterKind::Lora,
            base_model_name_or_path: base.into(),
            base_model_dims: cfg.into(),
            r,
            lora_alpha: alpha,
            target_modules: targets.to_vec(),
            separation_rank: None,
            r1: None,
            r2: None,
            init: zero(),
            task_type: causal(),
        };
        Ok(Self::from_parts(config, updates).requiring_grad())
    }

    fn requiring_grad(self) -> Self {
        for u in self.updates.values() {
            for t in u.tensors() {
                let _ = t.shallow_clone().set_requires_grad(true);
            }
        }
        self
    }

    /// The update for a layer's module, if adapted.
    pub fn update(&self, layer: usize, module: Module) -> Option<&Update> {
        self.updates.get(&(layer, module))
    }

    /// Every trainable tensor.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut keys: Vec<_> = self.updates.keys().copied().collect();
        keys.sort();
        keys.iter()
            .flat_map(|k| self.updates[k].tensors())
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// Trainable parameter count.
    pub fn parameters(&self) -> usize {
        self.updates.values().map(Update::parameters).sum()
    }

    /// A copy with every update expanded to plain LoRA factors (serving).
    pub fn expanded(&self) -> Adapter {
        let _g = tch::no_grad_guard();
        Adapter::from_parts(
            self.config.clone(),
            self.updates
                .iter()
                .map(|(k, u)| (*k, u.expanded()))
                .collect(),
        )
    }

    /// A detached copy (e.g. the no-grad serving copy of a trained adapter).
    pub fn detached(&self) -> Adapter {
        let updates = self
            .updates
            .iter()
            .map(|(k, u)| {
                let u = match u {
                    Update::Lora(x) => Update::Lora(LoraAdapter {
                        a: x.a.detach().copy(),
                        b: x.b.detach().copy(),
                        scale: x.scale,
                    }),
                    Update::Lsr(x) => Update::Lsr(LsrAdapter {
                        shape: x.shape,
                        a1: x.a1.detach().copy(),
                        a2: x.a2.detach().copy(),
                        b1: x.b1.detach().copy(),
                        b2: x.b2.detach().copy(),
                        scale: x.scale,
                    }),
                };
                (*k, u)
            })
            .collect();
        Adapter::from_parts(self.config.clone(), updates)
    }

    /// Refuses an adapter whose layers or shapes do not match `cfg`, naming the first mismatch.
    pub fn check_fits(&self, cfg: &LlamaConfig) -> Result<(), AdapterError> {
        let want = BaseDims::from(cfg);
        if self.config.base_model_dims != want {
            return Err(AdapterError::Mismatch(format!(
                "made for {:?} (`{}`), the served model is {:?}",
                self.config.base_model_dims, self.config.base_model_name_or_path, want
            )));
        }
        for (&(l, m), u) in &self.updates {
            if l >= cfg.num_hidden_layers {
                return Err(AdapterError::Mismatch(format!(
                    "layer {l} does not exist (the model has {})",
                    cfg.num_hidden_layers
                )));
            }
            let (o, i) = m.dims(cfg);
            let (go, gi) = match u {
                Update::Lora(x) => (x.b.size()[0] as usize, x.a.size()[1] as usize),
                Update::Lsr(x) => (x.shape.c * x.shape.d, x.shape.a * x.shape.b),
            };
            if (go, gi) != (o, i) {
                return Err(AdapterError::Mismatch(format!(
                    "layer {l} {}: the adapter maps {gi} -> {go}, the model's layer {i} -> {o}",
                    m.name()
                )));
            }
        }
        Ok(())
    }

    fn prefix(l: usize, m: Module) -> String {
        format!(
            "base_model.model.model.layers.{l}.{}.{}",
            m.parent(),
            m.name()
        )
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn save(&self, dir: &Path) -> Result<(), AdapterError> {
        let ferr = |p: &Path, e: &dyn std::fmt::Display| AdapterError::File {
            path: p.into(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| ferr(dir, &e))?;
        let cfg = dir.join("adapter_config.json");
        let json = serde_json::to_string_pretty(&self.config).map_err(|e| ferr(&cfg, &e))?;
        std::fs::write(&cfg, json).map_err(|e| ferr(&cfg, &e))?;
        let mut named: BTreeMap<String, Tensor> = BTreeMap::new();
        for (&(l, m), u) in &self.updates {
            let p = Self::prefix(l, m);
            match u {
                Update::Lora(x) => {
                    named.insert(format!("{p}.lora_A.weight"), x.a.detach());
                    named.insert(format!("{p}.lora_B.weight"), x.b.detach());
                }
                Update::Lsr(x) => {
                    for (n, t) in [("A1", &x.a1), ("A2", &x.a2), ("B1", &x.b1), ("B2", &x.b2)] {
                        named.insert(format!("{p}.lsr_{n}"), t.detach());
                    }
                }
            }
        }
        let list: Vec<(&String, &Tensor)> = named.iter().collect();
        let st = dir.join("adapter_model.safetensors");
        Tensor::write_safetensors(&list, &st).map_err(|e| ferr(&st, &e))
    }

    /// Reads a PEFT-style adapter directory (on `device`, without gradients).
    pub fn load(dir: &Path, device: Device) -> Result<Self, AdapterError> {
        let ferr = |p: &Path, e: &dyn std::fmt::Display| AdapterError::File {
            path: p.into(),
            msg: e.to_string(),
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ferr(&cfg_path, &e))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| ferr(&cfg_path, &e))?;
        let st = dir.join("adapter_model.safetensors");
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&st)
            .map_err(|e| ferr(&st, &e))?
            .into_iter()
            .map(|(k, v)| (k, v.to_kind(Kind::Float).to_device(device)))
            .collect();
        let layers = config.base_model_dims.num_hidden_layers;
        let mut updates = HashMap::new();
        let take = |name: &str| {
            tensors
                .get(name)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| ferr(&st, &format!("tensor `{name}` is missing")))
        };
        for l in 0..layers {
            for &m in &config.target_modules {
                let p = Self::prefix(l, m);
                let u = match config.peft_type {
                    AdapterKind::Lora => Update::Lora(LoraAdapter {
                        a: take(&format!("{p}.lora_A.weight"))?,
                        b: take(&format!("{p}.lora_B.weight"))?,
                        scale: config.lora_alpha / config.r.max(1) as f64,
                    }),
                    AdapterKind::Lsr => {
                        let (a1, a2, b1, b2) = (
                            take(&format!("{p}.lsr_A1"))?,
                            take(&format!("{p}.lsr_A2"))?,
                            take(&format!("{p}.lsr_B1"))?,
                            take(&format!("{p}.lsr_B2"))?,
                        );
                        let (sa, sb, sc, sd) = (a1.size(), a2.size(), b1.size(), b2.size());
                        if [sa.len(), sb.len(), sc.len(), sd.len()] != [3; 4]
                            || sa[0] != sb[0]
                            || sa[0] != sc[0]
                            || sa[0] != sd[0]
                            || sc[2] != sa[1]
                            || sd[2] != sb[1]
                        {
                            return Err(ferr(
                                &st,
                                &format!("{p}: inconsistent LSR factor shapes {sa:?} {sb:?} {sc:?} {sd:?}"),
                            ));
                        }
                        let u = |v: i64| v as usize;
                        let shape = LsrShape {
                            s: u(sa[0]),
                            r1: u(sa[1]),
                            r2: u(sb[1]),
                            a: u(sa[2]),
                            b: u(sb[2]),
                            c: u(sc[1]),
                            d: u(sd[1]),
                        };
                        Update::Lsr(LsrAdapter {
                            scale: config.lora_alpha / shape.r1 as f64,
                            shape,
                            a1,
                            a2,
                            b1,
                            b2,
                        })
                    }
                };
                updates.insert((l, m), u);
            }
        }
        Ok(Self::from_parts(config, updates))
    }
}

#[cfg(test)]
mod tests;
