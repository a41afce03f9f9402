//! An expert and its rejector as one unit: how their outputs are read, and the rejector's export
//! to the device's ONNX contract (`offload_shared::rejector`).

use crate::nets::{Net, NetSpec};
use offload_shared::onnx_build::{Dim, GraphBuilder};
use offload_shared::rejector::RejectorKind;
use offload_shared::repository::{Arch, Normalization};
use tch::{nn, Device, Kind, Tensor};

/// Which L2H formulation trains the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Binary tasks: the convex surrogate `L_S` with real-valued r and e (spec §4a).
    BinarySurrogate,
    /// Multi-class stage-switching: CE for e, the Bayes-consistent weighted CE for a 2-logit r.
    StageSwitching,
    /// Plug-in rejector: two heads estimating P(m wrong) and P(e wrong) (spec §5).
    PlugIn,
}

/// The two networks and how to read them.
#[derive(Debug)]
pub struct PairModels {
    /// Expert weights.
    pub expert_vs: nn::VarStore,
    /// Expert network.
    pub expert: Net,
    /// Rejector weights.
    pub rejector_vs: nn::VarStore,
    /// Rejector network.
    pub rejector: Net,
    /// The formulation.
    pub mode: Mode,
    /// The expert outputs one real score (binary tasks) rather than K logits.
    pub single_score: bool,
    /// The rejector reads the legacy model's probabilities too.
    pub uses_legacy_probs: bool,
    /// Binary surrogate only: squash r and e through `2 sigmoid - 1` (the authors' option).
    pub squash: bool,
    /// Agreement head (see [`PairSpec::agreement`]): maps (p_r(m(x) | x), max m prob) to the
    /// rejector's outputs; `None` for a plain rejector.
    pub agree: Option<nn::Linear>,
    /// Number of classes K (width of the legacy probabilities).
    pub num_classes: usize,
}

/// What [`PairModels::build`] needs.
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// Formulation.
    pub mode: Mode,
    /// Expert layers.
    pub expert_arch: Arch,
    /// Rejector layers.
    pub rejector_arch: Arch,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
    /// Give the rejector the legacy probabilities.
    pub uses_legacy_probs: bool,
    /// Squash option of the binary surrogate.
    pub squash: bool,
    /// Input normalisation (training statistics).
    pub norm: Normalization,
    /// Agreement rejector: the network predicts the class posterior p_r(y | x) (trained with an
    /// auxiliary cross-entropy) and a tiny head turns the probability it gives to the legacy
    /// model's predicted class, plus m's confidence, into the rejector outputs. Needs the
    /// legacy probabilities as input. `1 - p_r(m(x) | x)` estimates P(m wrong | x) directly,
    /// which is the quantity in the Bayes rule.
    pub agreement: bool,
}

impl PairModels {
    /// Creates freshly initialised networks (seed tch before calling for reproducibility).
    pub fn build(spec: &PairSpec, device: Device) -> Result<Self, String> {
        let binary = spec.num_classes == 2;
        if spec.mode == Mode::BinarySurrogate && !binary {
            return Err(format!(
                "the binary surrogate needs a two-class task; this task has {} classes (use stage-switching)",
                spec.num_classes
            ));
        }
        let single_score = binary && spec.mode != Mode::StageSwitching;
        let expert_vs = nn::VarStore::new(device);
        let expert = Net::new(
            &expert_vs.root(),
            NetSpec {
                arch: spec.expert_arch.clone(),
                input_shape: spec.input_shape.clone(),
                extra_inputs: 0,
                out_dim: if single_score { 1 } else { spec.num_classes },
                norm: spec.norm.clone(),
            },
        )?;
        if spec.agreement && !spec.uses_legacy_probs {
            return Err("the agreement rejector needs the legacy probabilities as input".into());
        }
        let out_dim = if spec.mode == Mode::BinarySurrogate {
            1
        } else {
            2
        };
        let rejector_vs = nn::VarStore::new(device);
        let rejector = Net::new(
            &rejector_vs.root(),
            NetSpec {
                arch: spec.rejector_arch.clone(),
                input_shape: spec.input_shape.clone(),
                extra_inputs: if spec.uses_legacy_probs && !spec.agreement {
                    spec.num_classes
                } else {
                    0
                },
                out_dim: if spec.agreement {
                    spec.num_classes
                } else {
                    out_dim
                },
                norm: spec.norm.clone(),
            },
        )?;
        let agree = spec.agreement.then(|| {
            nn::linear(
                rejector_vs.root() / "agree",
                2,
                out_dim as i64,
                Default::default(),
            )
        });
        Ok(Self {
            expert_vs,
            expert,
            rejector_vs,
            rejector,
            mode: spec.mode,
            single_score,
            uses_legacy_probs: spec.uses_legacy_probs,
            squash: spec.squash,
            agree,
            num_classes: spec.num_classes,
        })
    }

    /// The device-side kind of this rejector.
    pub fn kind(&self) -> RejectorKind {
        match self.mode {
            Mode::PlugIn => RejectorKind::PlugIn,
            _ => RejectorKind::Score,
        }
    }

    /// Raw expert output: `[N]` score (single-score) or `[N, K]` logits.
    pub fn expert_raw(&self, x: &Tensor) -> Tensor {
        let out = self.expert.forward(x, None);
        if self.single_score {
            out.squeeze_dim(1)
        } else {
            out
        }
    }

    /// Expert class probabilities `[N, K]`. A single score `e` means P(y = 1) = sigmoid(2e), the
    /// minimiser of the exponential loss.
    pub fn expert_probs(&self, x: &Tensor) -> Tensor {
        let raw = self.expert_raw(x);
        if self.single_score {
            let p1 = (raw * 2.0).sigmoid();
            Tensor::stack(&[p1.ones_like() - &p1, p1], 1)
        } else {
            raw.softmax(-1, Kind::Float)
        }
    }

    /// Raw rejector head `[N, out]`.
    pub fn rejector_raw(&self, x: &Tensor, m_probs: &Tensor) -> Tensor {
        match &self.agree {
            None => {
                let extra = self.uses_legacy_probs.then_some(m_probs);
                self.rejector.forward(x, extra)
            }
            Some(head) => {
                let p = self.rejector.forward(x, None).softmax(-1, Kind::Float);
                let agree = p.gather(1, &m_probs.argmax(1, true), false);
                let conf = m_probs.amax(1, true);
                nn::Module::forward(head, &Tensor::cat(&[agree, conf], 1))
            }
        }
    }

    /// Class logits of an agreement rejector (for its auxiliary loss).
    pub fn rejector_class_logits(&self, x: &Tensor) -> Option<Tensor> {
        self.agree.as_ref().map(|_| self.rejector.forward(x, None))
    }

    /// What the exported ONNX outputs: `score [N]` or `q [N, 2]`.
    pub fn rejector_outputs(&self, x: &Tensor, m_probs: &Tensor) -> Tensor {
        let raw = self.rejector_raw(x, m_probs);
        match self.mode {
            // local iff r > 0, so the offload score is sigmoid(-r) (squashing keeps the sign).
            Mode::BinarySurrogate => raw.squeeze_dim(1).neg().sigmoid(),
            Mode::StageSwitching => raw.softmax(-1, Kind::Float).select(1, 1),
            Mode::PlugIn => raw.sigmoid(),
        }
    }

    /// Decision scores `[N]` (offload iff > threshold), host side.
    pub fn decision_scores(&self, x: &Tensor, m_probs: &Tensor, c1: f32) -> Vec<f32> {
        let out = tch::no_grad(|| self.rejector_outputs(x, m_probs));
        let v = crate::nets::to_vec(&out).unwrap_or_default();
        let width = if self.mode == Mode::PlugIn { 2 } else { 1 };
        v.chunks(width)
            .map(|r| offload_shared::rejector::decision_score(self.kind(), r, c1))
            .collect()
    }

    /// Expert predictions, host side.
    pub fn expert_predictions(&self, x: &Tensor) -> Vec<u32> {
        let p = tch::no_grad(|| self.expert_probs(x).argmax(-1, false));
        Vec::<i64>::try_from(&p.to_device(Device::Cpu))
            .unwrap_or_default()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    /// Exports the rejector as ONNX bytes following the device contract.
    pub fn export_rejector(&self, name: &str) -> Result<Vec<u8>, tch::TchError> {
        let spec = self.rejector.spec();
        let mut g = GraphBuilder::new();
        let mut dims = vec![Dim::Batch];
        dims.extend(spec.input_shape.iter().map(|&d| Dim::Fixed(d)));
        let input = g.input("input", &dims);
        let extra = self
            .uses_legacy_probs
            .then(|| g.input("legacy_probs", &[Dim::Batch, Dim::Fixed(self.num_classes)]));
        let head = match (&self.agree, extra.as_deref()) {
            (Some(lin), Some(mp)) => {
                let logits = self.rejector.export(&mut g, &input, None)?;
                let p = g.softmax(&logits);
                let idx = g.argmax_keep(mp);
                let agree = g.gather_cols(&p, &idx);
                let conf = g.max_keep(mp);
                let feats = g.concat(&[&agree, &conf]);
                let w = crate::nets::to_vec(&lin.ws)?;
                let b = lin
                    .bs
                    .as_ref()
                    .map(crate::nets::to_vec)
                    .transpose()?
                    .unwrap_or_default();
                g.linear(&feats, &w, &b, 2)
            }
            _ => self.rejector.export(&mut g, &input, extra.as_deref())?,
        };
        match self.mode {
            Mode::BinarySurrogate => {
                let r = g.flatten_to_vector(&head);
                let neg = g.unary("Neg", &r);
                let s = g.unary("Sigmoid", &neg);
                g.output(&s, "score", &[Dim::Batch]);
            }
            Mode::StageSwitching => {
                let sm = g.softmax(&head);
                let s = g.column(&sm, 1);
                g.output(&s, "score", &[Dim::Batch]);
            }
            Mode::PlugIn => {
                let q = g.unary("Sigmoid", &head);
                g.output(&q, "q", &[Dim::Batch, Dim::Fixed(2)]);
            }
        }
        g.metadata("rejector_kind", &format!("{:?}", self.kind()));
        g.metadata("l2h_mode", &format!("{:?}", self.mode));
        Ok(g.finish(name))
    }
}
