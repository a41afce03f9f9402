//! The serving forward pass on the host, for models whose weights are all packed for the
//! `offload-kernels` kernel (float32 and int8 serving).
//!
//! A decoding step is some 1,800 small libtorch ops (norms, rotary embedding, attention,
//! residuals) around 121 matrix products; each op costs a few microseconds of dispatch, which
//! was 30-40 % of a step. Here activations stay in `Vec<f32>`, the matrix products go to the
//! kernel, and the rest are plain loops. The same function runs prompts and decoding steps: a
//! batch is any set of rows `(token, slot, position)`, so several new prompts prefill together
//! and their projections share one pass over the weights.
//!
//! Invariants: a slot's keys and values for positions `0..len` are in [`HostKv`]; a row at
//! position `p` first truncates its slot to `p` and appends its own key and value, so rows of
//! one slot must come in increasing, gap-free positions (checked before anything changes);
//! a row attends to positions `0..=p` of its slot. Adapters here are frozen: their host copies
//! are taken once (see [`Adapter::host_factors`]).

use super::adapter::{Adapter, HostLora, Module, Update};
use super::linear::{kernel_pool, Weight};
use super::model::{Llama, ModelError};
use tch::{Kind, Tensor};

/// Keys and values per (layer, slot), position-major (`len * kv_width` values each).
#[derive(Debug, Default)]
pub struct HostKv {
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
}

impl HostKv {
    /// An empty cache for `layers` layers and `slots` slots.
    pub fn new(layers: usize, slots: usize) -> Self {
        let empty = || vec![vec![Vec::new(); slots]; layers];
        Self {
            k: empty(),
            v: empty(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .flatten()
            .map(|s| s.capacity() * 4)
            .sum()
    }

    fn slots(&self) -> usize {
        self.k.first().map_or(0, Vec::len)
    }
}

/// Rows of one prompt from which attention goes to libtorch (its batched matmul beats the
/// per-row loops once a prompt has this many rows).
const LONG_SEGMENT: usize = 64;

/// Norm weights and rotary tables as host vectors (built beside the kernel weights).
#[derive(Debug)]
pub struct HostTables {
    pub(super) attn_norm: Vec<Vec<f32>>,
    pub(super) mlp_norm: Vec<Vec<f32>>,
    pub(super) final_norm: Vec<f32>,
    /// (max_pos, head_dim).
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
}

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).contiguous().flatten(0, -1))
        .unwrap_or_else(|e| panic!("tensor to host: {e}"))
}

impl HostTables {
    /// Copies of the norms and rotary tables.
    pub fn new(
        attn: &[&Tensor],
        mlp: &[&Tensor],
        fin: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Self {
        Self {
            attn_norm: attn.iter().map(|t| host(t)).collect(),
            mlp_norm: mlp.iter().map(|t| host(t)).collect(),
            final_norm: host(fin),
            cos: host(cos),
            sin: host(sin),
        }
    }
}

/// A batch of rows: row `i` is `tokens[i]` at position `pos[i]` of slot `slots[i]`; `groups`
/// lists the rows each adapter applies to (other rows use the base model).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// Token ids.
    pub tokens: &'a [i64],
    /// KV slots.
    pub slots: &'a [usize],
    /// Positions.
    pub pos: &'a [usize],
    /// (adapter, its rows).
    pub groups: &'a [(&'a Adapter, Vec<usize>)],
}

/// `x W^T` through the kernel; an error if `w` is not packed.
fn packed(w: &Weight, x: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
    w.host(x, rows)
        .ok_or_else(|| ModelError::Config("weight is not packed for the kernel".into()))
}

/// Dot product with 16 independent partial sums (vectorised by LLVM).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm of every `w.len()`-wide row of `x`.
fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0f32; x.len()];
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = dot(r, r) / d as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        for ((o, v), w) in o.iter_mut().zip(r).zip(w) {
            *o = v * inv * w;
        }
    }
    out
}

/// Rotary embedding (halves layout) of every `cos.len()`-wide head in `x`.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len() / 2;
    for head in x.chunks_exact_mut(cos.len()) {
        for j in 0..half {
            let (a, b) = (head[j], head[j + half]);
            head[j] = a * cos[j] - b * sin[j];
            head[j + half] = b * cos[j + half] + a * sin[j + half];
        }
    }
}

impl Llama {
    /// Whether [`Llama::forward_host`] applies (every weight is packed for the kernel).
    pub fn host_ready(&self) -> bool {
        self.host.is_some()
    }

    /// A host cache sized for this model.
    pub fn host_kv(&self, slots: usize) -> HostKv {
        HostKv::new(self.cfg.num_hidden_layers, slots)
    }

    /// Runs `rows` (appending their keys and values to `kv`) and returns the logits of the rows
    /// listed in `want`, (want.len() x vocab) row-major.
    pub fn forward_host(
        &self,
        rows: &Rows<'_>,
        kv: &mut HostKv,
        want: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let t = self
            .host
            .as_ref()
            .ok_or_else(|| ModelError::Config("model has no host weights".into()))?;
        let s = rows.tokens.len();
        self.check_rows(rows, kv, want)?;
        let c = &self.cfg;
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (qw, kvw) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let inter = c.intermediate_size;
        let ids = Tensor::from_slice(rows.tokens).to_device(self.embed.device());
        let mut x = host(&self.embed.index_select(0, &ids));
        for (l, b) in self.blocks.iter().enumerate() {
            let n = rms_norm(&x, &t.attn_norm[l], c.rms_norm_eps);
            let (qkv_w, gate_up_w) = match (&b.qkv, &b.gate_up) {
                (Some(a), Some(g)) => (a, g),
                _ => return Err(ModelError::Config("block is not packed".into())),
            };
            let width = qw + 2 * kvw;
            let mut qkv = qkv_w.host(&n, s);
            for (m, off) in [
                (Module::QProj, 0),
                (Module::KProj, qw),
                (Module::VProj, qw + kvw),
            ] {
                self.host_adapt(l, m, rows, &n, d, &mut qkv, width, off);
            }
            for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
                let p = rows.pos[i];
                let (cos, sin) = (&t.cos[p * hd..(p + 1) * hd], &t.sin[p * hd..(p + 1) * hd]);
                rope(&mut row[..qw + kvw], cos, sin);
                let slot = rows.slots[i];
                for (cache, part) in [
                    (&mut kv.k, &row[qw..qw + kvw]),
                    (&mut kv.v, &row[qw + kvw..]),
                ] {
                    let c = &mut cache[l][slot];
                    c.truncate(p * kvw);
                    c.extend_from_slice(part);
                }
            }
            let attn = self.host_attention(l, rows, &qkv, kv);
            let mut o = packed(&self.blocks[l].proj[Module::OProj as usize], &attn, s)?;
            self.host_adapt(l, Module::OProj, rows, &attn, qw, &mut o, d, 0);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let n = rms_norm(&x, &t.mlp_norm[l], c.rms_norm_eps);
            let mut gu = gate_up_w.host(&n, s);
            self.host_adapt(l, Module::GateProj, rows, &n, d, &mut gu, 2 * inter, 0);
            self.host_adapt(l, Module::UpProj, rows, &n, d, &mut gu, 2 * inter, inter);
            let mut act = vec![0f32; s * inter];
            for (a, r) in act.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
                let (g, u) = r.split_at(inter);
                for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            let mut down = packed(&self.blocks[l].proj[Module::DownProj as usize], &act, s)?;
            self.host_adapt(l, Module::DownProj, rows, &act, inter, &mut down, d, 0);
            x.iter_mut().zip(&down).for_each(|(x, o)| *x += o);
        }
        let last: Vec<f32> = want
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
            .collect();
        let n = rms_norm(&last, &t.final_norm, c.rms_norm_eps);
        packed(&self.head, &n, want.len())
    }

    /// Refuses a batch that would leave a gap in a slot or run past the context.
    fn check_rows(&self, rows: &Rows<'_>, kv: &HostKv, want: &[usize]) -> Result<(), ModelError> {
        let s = rows.tokens.len();
        if rows.slots.len() != s || rows.pos.len() != s || want.iter().any(|&i| i >= s) {
            return Err(ModelError::Config(
                "rows, slots and positions differ in length".into(),
            ));
        }
        let kvw = self.cfg.num_key_value_heads * self.cfg.head_dim();
        let mut len: Vec<usize> =
            kv.k.first()
                .map_or(Vec::new(), |l| l.iter().map(|c| c.len() / kvw).collect());
        for i in 0..s {
            let (slot, p) = (rows.slots[i], rows.pos[i]);
            self.check_positions(p as i64 + 1)?;
            if slot >= kv.slots() {
                return Err(ModelError::Config(format!("slot {slot} out of range")));
            }
            if p > len[slot] {
                return Err(ModelError::Config(format!(
                    "slot {slot}: position {p} after only {} cached",
                    len[slot]
                )));
            }
            len[slot] = p + 1;
        }
        Ok(())
    }

    /// Attention of every row over its slot's positions `0..=p` (rows x heads*hd).
    fn host_attention(&self, l: usize, rows: &Rows<'_>, qkv: &[f32], kv: &HostKv) -> Vec<f32> {
        let c = &self.cfg;
        let hd = c.head_dim();
        let (h, kvh) = (c.num_attention_heads, c.num_key_value_heads);
        let (qw, kvw, rep) = (h * hd, kvh * hd, h / kvh);
        let width = qw + 2 * kvw;
        let scale = 1.0 / (hd as f32).sqrt();
        let s = rows.tokens.len();
        // Runs of rows of one slot (a prompt): long ones go to libtorch's batched matmuls.
        let mut long = vec![false; s];
        let mut segments = Vec::new();
        let mut i = 0;
        while i < s {
            let mut j = i + 1;
            while j < s && rows.slots[j] == rows.slots[i] {
                j += 1;
            }
            if j - i >= LONG_SEGMENT {
                long[i..j].fill(true);
                segments.push((i, j));
            }
            i = j;
        }
        let mut out = vec![0f32; s * qw];
        kernel_pool().rows(&mut out, qw, |i, o| {
            if long[i] {
                return;
            }
            let p = rows.pos[i];
            let (keys, vals) = (&kv.k[l][rows.slots[i]], &kv.v[l][rows.slots[i]]);
            let q = &qkv[i * width..i * width + qw];
            let mut w = vec![0f32; p + 1];
            for head in 0..h {
                let g = head / rep;
                let qh = &q[head * hd..(head + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for (j, wj) in w.iter_mut().enumerate() {
                    *wj = dot(qh, &keys[j * kvw + g * hd..j * kvw + (g + 1) * hd]) * scale;
                    max = max.max(*wj);
                }
                let mut sum = 0.0;
                for wj in w.iter_mut() {
                    *wj = (*wj - max).exp();
                    sum += *wj;
                }
                let oh = &mut o[head * hd..(head + 1) * hd];
                for (j, wj) in w.iter().enumerate() {
                    let v = &vals[j * kvw + g * hd..j * kvw + (g + 1) * hd];
                    let a = wj / sum;
                    oh.iter_mut().zip(v).for_each(|(o, v)| *o += a * v);
                }
            }
        });
        for (i, j) in segments {
            let (t, p0) = ((j - i) as i64, rows.pos[i] as i64);
            let len = p0 + t;
            let slot = rows.slots[i];
            let q: Vec<f32> = (i..j)
                .flat_map(|r| qkv[r * width..r * width + qw].iter().copied())
                .collect();
            let q = Tensor::from_slice(&q)
                .view([1, t, h as i64, hd as i64])
                .transpose(1, 2);
            let cache = |c: &Vec<f32>| {
                Tensor::from_slice(&c[..len as usize * kvw])
                    .view([1, len, kvh as i64, hd as i64])
                    .transpose(1, 2)
            };
            let (k, v) = (cache(&kv.k[l][slot]), cache(&kv.v[l][slot]));
            let q_pos = Tensor::arange_start(p0, len, (Kind::Int64, tch::Device::Cpu)).unsqueeze(1);
            let mask = Tensor::arange(len, (Kind::Int64, tch::Device::Cpu))
                .unsqueeze(0)
                .gt_tensor(&q_pos);
            let a = super::model::grouped_attention(&q, &k, &v, &mask, hd as i64);
            out[i * qw..j * qw].copy_from_slice(&host(&a));
        }
        out
    }

    /// Adds each adapter's update of module `m` (input `x`, rows of `d_in`) to its rows of `y`
    /// (rows of `width`, the module's outputs starting at column `off`).
    #[allow(clippy::too_many_arguments)]
    fn host_adapt(
        &self,
        l: usize,
        m: Module,
        rows: &Rows<'_>,
        x: &[f32],
        d_in: usize,
        y: &mut [f32],
        width: usize,
        off: usize,
    ) {
        for (a, idx) in rows.groups {
            let Some(u) = a.update(l, m) else { continue };
            match (u, a.host_factors().get(&(l, m))) {
                (Update::Lora(_), Some(f)) => lora_rows(f, idx, x, d_in, y, width, off),
                _ => {
                    // Matrix-free LSR (and anything else): its own libtorch forward.
                    let xs: Vec<f32> = idx
                        .iter()
                        .flat_map(|&i| x[i * d_in..(i + 1) * d_in].iter().copied())
                        .collect();
                    let xt = Tensor::from_slice(&xs).view([idx.len() as i64, d_in as i64]);
                    let delta = host(&u.delta(&xt));
                    let d_out = delta.len() / idx.len().max(1);
                    for (r, &i) in idx.iter().enumerate() {
                        let dst = &mut y[i * width + off..i * width + off + d_out];
                        dst.iter_mut()
                            .zip(&delta[r * d_out..(r + 1) * d_out])
                            .for_each(|(y, d)| *y += d);
                    }
                }
            }
        }
    }
}

/// `y[i, off..] += scale * (x_i A^T) B^T` for the rows `idx` (B^T's rows as axpys).
fn lora_rows(
    f: &HostLora,
    idx: &[usize],
    x: &[f32],
    d_in: usize,
    y: &mut [f32],
    width: usize,
    off: usize,
) {
    for &i in idx {
        let xi = &x[i * d_in..(i + 1) * d_in];
        let dst = &mut y[i * width + off..i * width + off + f.d_out];
        for rr in 0..f.r {
            let c = dot(xi, &f.a[rr * d_in..(rr + 1) * d_in]) * f.scale;
            let bt = &f.bt[rr * f.d_out..(rr + 1) * f.d_out];
            dst.iter_mut().zip(bt).for_each(|(y, b)| *y += c * b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_match_their_definitions() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
        let n = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((n[0] - 3.0 / r).abs() < 1e-6 && (n[1] - 8.0 / r).abs() < 1e-6);
        let mut x = [1.0, 2.0];
        rope(&mut x, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, [-2.0, 1.0]);
    }
}
