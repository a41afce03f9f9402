//! Weights packed in column panels and the register-blocked micro-kernel that multiplies them.
//!
//! Layout: `W` (n x k) is cut into panels of [`NR`] output rows; panel `p` stores, for every
//! input index `kk`, the [`NR`] values `W[p*NR + j][kk]` contiguously (rows past `n` are zero).
//! The micro-kernel keeps an (MR x NR) block of outputs in registers and, per `kk`, loads one
//! panel line and broadcasts one value of each of the MR input rows: MR * NR / 16 multiply-adds
//! per NR / 16 + MR loads, and no horizontal sums. A panel line is 192 bytes (three cache
//! lines) read once per row block, so the weights stream from memory once per call.
//!
//! Int8 panels hold `round(W / scale)` with one symmetric scale per output row; the kernel
//! widens them to float32 in registers and the scale is applied once per output.

/// Output rows per panel (three 512-bit registers of float32).
pub const NR: usize = 48;

/// A weight element the kernel can widen to float32.
pub trait Elem: Copy + Send + Sync {
    /// The value as float32.
    fn f(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}

impl Elem for i8 {
    #[inline(always)]
    fn f(self) -> f32 {
        self as f32
    }
}

/// The packed storage.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    F32(Vec<f32>),
    I8 { q: Vec<i8>, scales: Vec<f32> },
}

/// A weight matrix `W` (n x k) packed for `y = x W^T`.
#[derive(Debug, Clone)]
pub struct Packed {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) store: Store,
}

fn panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// `w` (n x k, row-major) rearranged into panels, each element mapped by `f`.
fn pack<T: Copy + Default>(w: &[f32], n: usize, k: usize, f: impl Fn(usize, f32) -> T) -> Vec<T> {
    let mut out = vec![T::default(); panels(n) * k * NR];
    for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        for j in 0..NR.min(n - p * NR) {
            let r = p * NR + j;
            for (kk, &v) in w[r * k..(r + 1) * k].iter().enumerate() {
                panel[kk * NR + j] = f(r, v);
            }
        }
    }
    out
}

impl Packed {
    /// Float32 panels of `w` (n x k, row-major). Panics if `w.len() != n * k`.
    pub fn f32(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "W is not n x k");
        Self {
            n,
            k,
            store: Store::F32(pack(w, n, k, |_, v| v)),
        }
    }

    /// Int8 panels of `w` (n x k, row-major) with one symmetric scale per output row:
    /// `W[r] ~ scale[r] * q[r]`, `|q| <= 127`. Panics if `w.len() != n * k`.
    pub fn int8(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "W is not n x k");
        let mut scales: Vec<f32> = (0..panels(n) * NR)
            .map(|r| {
                let row = if r < n {
                    &w[r * k..(r + 1) * k]
                } else {
                    &[][..]
                };
                row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) / 127.0
            })
            .collect();
        let q = pack(w, n, k, |r, v| {
            (v / scales[r]).round().clamp(-127.0, 127.0) as i8
        });
        scales[n..].fill(0.0);
        Self {
            n,
            k,
            store: Store::I8 { q, scales },
        }
    }

    /// Output rows.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes read per call (the panels and scales).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(w) => w.len() * 4,
            Store::I8 { q, scales } => q.len() + scales.len() * 4,
        }
    }

    /// The matrix back as float32 (n x k, row-major): the int8 values times their scales.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0f32; n * k];
        for r in 0..n {
            let (p, j) = (r / NR, r % NR);
            for kk in 0..k {
                let at = (p * k + kk) * NR + j;
                out[r * k + kk] = match &self.store {
                    Store::F32(w) => w[at],
                    Store::I8 { q, scales } => q[at] as f32 * scales[r],
                };
            }
        }
        out
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

/// One panel against `MR` rows of `x` (row stride `k`), columns `off..off + NS` of the panel:
/// adds nothing, overwrites `out` (MR rows of NR, the panel's part of each output row).
#[inline(always)]
fn micro<T: Elem, const FMA: bool, const MR: usize, const NS: usize>(
    panel: &[T],
    k: usize,
    x: &[f32],
    off: usize,
    out: &mut [f32],
) {
    let xr: [&[f32]; MR] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let mut acc = [[0f32; NS]; MR];
    for (kk, line) in panel.chunks_exact(NR).enumerate().take(k) {
        let w: &[T; NS] = line[off..off + NS].try_into().expect("NS values");
        for r in 0..MR {
            let xv = xr[r][kk];
            for l in 0..NS {
                acc[r][l] = madd::<FMA>(w[l].f(), xv, acc[r][l]);
            }
        }
    }
    for r in 0..MR {
        out[r * NR + off..r * NR + off + NS].copy_from_slice(&acc[r]);
    }
}

/// Panels `panels` (each k x NR) against all `b` rows of `x`, into `out` laid out
/// (panel, row, NR). `MR` rows at a time; sub-panels of `NS` columns.
#[inline(always)]
pub(crate) fn panels_generic<T: Elem, const FMA: bool, const MR: usize, const NS: usize>(
    panels: &[T],
    k: usize,
    x: &[f32],
    b: usize,
    out: &mut [f32],
) {
    for (panel, o) in panels
        .chunks_exact(k * NR)
        .zip(out.chunks_exact_mut(b * NR))
    {
        let mut i = 0;
        while i < b {
            let rows = (b - i).min(MR);
            let xs = &x[i * k..(i + rows) * k];
            let os = &mut o[i * NR..(i + rows) * NR];
            for off in (0..NR).step_by(NS) {
                tail::<T, FMA, NS>(rows, panel, k, xs, off, os);
            }
            i += rows;
        }
    }
}

/// The micro-kernel for a block of `rows` (1..=8) rows: a const instantiation per count.
#[inline(always)]
fn tail<T: Elem, const FMA: bool, const NS: usize>(
    rows: usize,
    panel: &[T],
    k: usize,
    x: &[f32],
    off: usize,
    out: &mut [f32],
) {
    match rows {
        8 => micro::<T, FMA, 8, NS>(panel, k, x, off, out),
        7 => micro::<T, FMA, 7, NS>(panel, k, x, off, out),
        6 => micro::<T, FMA, 6, NS>(panel, k, x, off, out),
        5 => micro::<T, FMA, 5, NS>(panel, k, x, off, out),
        4 => micro::<T, FMA, 4, NS>(panel, k, x, off, out),
        3 => micro::<T, FMA, 3, NS>(panel, k, x, off, out),
        2 => micro::<T, FMA, 2, NS>(panel, k, x, off, out),
        _ => micro::<T, FMA, 1, NS>(panel, k, x, off, out),
    }
}
