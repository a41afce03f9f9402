//! The networks the cloud trains (experts and rejectors): an MLP or a small CNN behind a fixed
//! input normalisation, built from an `nn::Path` so weight names are stable checkpoint keys, and
//! exportable layer by layer to ONNX.

use offload_shared::onnx_build::GraphBuilder;
use offload_shared::repository::{Arch, Normalization};
use tch::{nn, nn::Module, Tensor};

/// Everything needed to build a network.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// Layer structure.
    pub arch: Arch,
    /// Per-sample input shape ([d] or [c, h, w]).
    pub input_shape: Vec<usize>,
    /// Extra features concatenated after the feature extractor (the legacy model's
    /// probabilities for a rejector that reads them; 0 otherwise).
    pub extra_inputs: usize,
    /// Output width.
    pub out_dim: usize,
    /// Input normalisation (stored as non-trainable buffers).
    pub norm: Normalization,
}

/// A network. Input is always given flat `[N, d]`; a CNN reshapes it to `[N, c, h, w]`.
#[derive(Debug)]
pub struct Net {
    /// How it was built.
    spec: NetSpec,
    /// Per-feature mean buffer, `[d]`.
    mean: Tensor,
    /// Per-feature inverse standard deviation buffer, `[d]`.
    inv_std: Tensor,
    /// Conv blocks (CNN only).
    convs: Vec<nn::Conv2D>,
    /// Hidden fully connected layers.
    hidden: Vec<nn::Linear>,
    /// Output layer.
    head: nn::Linear,
}

/// Kernel size of every conv layer.
const KERNEL: usize = 3;

impl Net {
    /// Builds the layers under `path` (names: `norm_mean`, `conv{i}`, `fc{i}`, `head`).
    pub fn new(path: &nn::Path<'_>, spec: NetSpec) -> Result<Self, String> {
        let d: usize = spec.input_shape.iter().product();
        let inv: Vec<f32> = spec.norm.std.iter().map(|s| 1.0 / s).collect();
        let mean = path.var_copy("norm_mean", &Tensor::from_slice(&spec.norm.mean));
        let inv_std = path.var_copy("norm_inv_std", &Tensor::from_slice(&inv));
        let _ = (
            mean.set_requires_grad(false),
            inv_std.set_requires_grad(false),
        );
        let mut convs = Vec::new();
        let mut width = d;
        if let Arch::Cnn { channels, .. } = &spec.arch {
            let [c, h, w] = spec.input_shape[..] else {
                return Err(format!(
                    "a CNN needs image input [c, h, w], the data has samples of shape {:?}",
                    spec.input_shape
                ));
            };
            let (mut cin, mut hh, mut ww) = (c, h, w);
            for (i, &cout) in channels.iter().enumerate() {
                let cfg = nn::ConvConfig {
                    padding: (KERNEL / 2) as i64,
                    ..Default::default()
                };
                convs.push(nn::conv2d(
                    path / format!("conv{i}"),
                    cin as i64,
                    cout as i64,
                    KERNEL as i64,
                    cfg,
                ));
                cin = cout;
                hh /= 2;
                ww /= 2;
                if hh == 0 || ww == 0 {
                    return Err(format!("too many pooling blocks for a {h}x{w} input"));
                }
            }
            width = cin * hh * ww;
        }
        let hidden_sizes = match &spec.arch {
            Arch::Mlp { hidden } => hidden.clone(),
            Arch::Cnn { hidden, .. } => vec![*hidden],
        };
        let mut hidden = Vec::new();
        let mut fan_in = width + spec.extra_inputs;
        for (i, &h) in hidden_sizes.iter().enumerate() {
            hidden.push(nn::linear(
                path / format!("fc{i}"),
                fan_in as i64,
                h as i64,
                Default::default(),
            ));
            fan_in = h;
        }
        let head = nn::linear(
            path / "head",
            fan_in as i64,
            spec.out_dim as i64,
            Default::default(),
        );
        Ok(Self {
            spec,
            mean,
            inv_std,
            convs,
            hidden,
            head,
        })
    }

    /// The build spec.
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// Forward pass: `x` is `[N, d]` raw features, `extra` `[N, extra_inputs]` when used.
    pub fn forward(&self, x: &Tensor, extra: Option<&Tensor>) -> Tensor {
        let mut h = (x - &self.mean) * &self.inv_std;
        if !self.convs.is_empty() {
            let mut dims: Vec<i64> = vec![-1];
            dims.extend(self.spec.input_shape.iter().map(|&v| v as i64));
            h = h.view(dims.as_slice());
            for conv in &self.convs {
                h = conv.forward(&h).relu().max_pool2d_default(2);
            }
            h = h.flatten(1, -1);
        }
        if let Some(e) = extra {
            h = Tensor::cat(&[h, e.shallow_clone()], 1);
        }
        for fc in &self.hidden {
            h = fc.forward(&h).relu();
        }
        self.head.forward(&h)
    }

    /// Whether the network is a plain MLP: no conv blocks and no extra inputs.
    pub fn is_mlp(&self) -> bool {
        self.convs.is_empty() && self.spec.extra_inputs == 0
    }

    /// For an MLP (see [`Net::is_mlp`]): the input of every linear layer (the
    /// normalised features, then each hidden activation; detached) and its output before the
    /// activation (still in the autograd graph), in order, ending with the head. The gradient of
    /// a sum of outputs w.r.t. layer `l`'s weight is then `delta_l^T a_l` per sample, which is
    /// what makes per-sample gradient kernels factor. `None` for a CNN (shared conv weights do
    /// not factor this way).
    pub fn linear_trace(&self, x: &Tensor) -> Option<(Vec<Tensor>, Vec<Tensor>)> {
        if !self.is_mlp() {
            return None;
        }
        let mut h = (x - &self.mean) * &self.inv_std;
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        for fc in self.hidden.iter().chain(std::iter::once(&self.head)) {
            inputs.push(h.detach());
            let z = fc.forward(&h);
            h = z.relu();
            outputs.push(z);
        }
        Some((inputs, outputs))
    }

    /// Appends this network to an ONNX graph: `input` holds raw features with the data's sample
    /// shape, `extra` the optional extra features. Returns the name of the head's output.
    pub fn export(
        &self,
        g: &mut GraphBuilder,
        input: &str,
        extra: Option<&str>,
    ) -> Result<String, tch::TchError> {
        let shape = &self.spec.input_shape;
        let mean = to_vec(&self.mean)?;
        let inv = to_vec(&self.inv_std)?;
        let mut h = if self.convs.is_empty() {
            let flat = if shape.len() > 1 {
                g.flatten(input)
            } else {
                input.to_string()
            };
            g.normalize(&flat, &[mean.len()], &mean, &inv)
        } else {
            let mut h = g.normalize(input, shape, &mean, &inv);
            let mut cin = shape[0];
            for conv in &self.convs {
                let w = to_vec(&conv.ws)?;
                let b = conv
                    .bs
                    .as_ref()
                    .map(to_vec)
                    .transpose()?
                    .unwrap_or_default();
                h = g.conv2d(&h, &w, &b, cin, KERNEL);
                h = g.unary("Relu", &h);
                h = g.max_pool2(&h);
                cin = b.len();
            }
            g.flatten(&h)
        };
        if let Some(e) = extra {
            h = g.concat(&[&h, e]);
        }
        for fc in &self.hidden {
            h = export_linear(g, &h, fc)?;
            h = g.unary("Relu", &h);
        }
        export_linear(g, &h, &self.head)
    }
}

fn export_linear(g: &mut GraphBuilder, x: &str, l: &nn::Linear) -> Result<String, tch::TchError> {
    let w = to_vec(&l.ws)?;
    let b = l.bs.as_ref().map(to_vec).transpose()?.unwrap_or_default();
    let in_dim = l.ws.size()[1] as usize;
    Ok(g.linear(x, &w, &b, in_dim))
}

/// Class probabilities from a network's raw outputs `[N, K]`: the softmax of the logits, or, for
/// one binary score `s` (`single_score`), the pair `[1 - p, p]` with `p = sigmoid(2 s)`.
pub fn class_probs(raw: &Tensor, single_score: bool) -> Result<Tensor, tch::TchError> {
    if single_score {
        let p1 = (raw.f_squeeze_dim(1)? * 2.0).f_sigmoid()?;
        Tensor::f_stack(&[p1.ones_like() - &p1, p1], 1)
    } else {
        raw.f_softmax(-1, tch::Kind::Float)
    }
}

/// Copies a tensor's values out (row-major).
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    Vec::<f32>::try_from(&t.detach().to_device(tch::Device::Cpu).contiguous().view(-1))
}

/// Training-split statistics for [`Normalization`]; standard deviations are floored at a tenth of
/// their mean so near-constant features (e.g. border pixels) cannot explode at test time.
pub fn normalization_from(features: &[f32], d: usize) -> Normalization {
    let n = (features.len() / d).max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in features.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
    let std: Vec<f64> = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| (s / n - m * m).max(0.0).sqrt())
        .collect();
    let floor = (std.iter().sum::<f64>() / d as f64 * 0.1).max(1e-6);
    Normalization {
        mean: mean.iter().map(|&m| m as f32).collect(),
        std: std.iter().map(|&s| s.max(floor) as f32).collect(),
    }
}
