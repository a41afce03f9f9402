//! CPU kernels: the matrix kernel below, plus the k-nearest-neighbour loops of [`distance`] and
//! [`select`].
//!
//! `y = x W^T` for a few rows of `x` (LLM decoding: 1 to 8 sequences; short prompts) against a
//! large weight `W` (n x k), the operation that bounds LLM decoding on CPUs. libtorch's float32
//! path runs it on one thread at about a third of the machine's memory bandwidth; here `W` is
//! packed once into column panels (see [`packed`]), the panels are split over a rayon pool, and
//! a register-blocked micro-kernel (8 rows x 48 outputs on AVX-512) meets every row of `x` while
//! a panel line is in registers, so `W` streams from memory once per call. Weights can be
//! float32 or int8 with per-row scales (a quarter of the bytes, widened in registers).
//!
//! The micro-kernel is plain Rust written so LLVM vectorises it (constant-size accumulator
//! arrays, fully unrolled); it is compiled three times, for AVX-512F, AVX2+FMA and the baseline,
//! and the best version the CPU supports is chosen at run time.
//!
//! Safety: the only `unsafe` is calling a `#[target_feature]` function, each time directly after
//! `is_x86_feature_detected!` confirmed every feature it enables, or one that needs only SSE (the
//! cache prefetch of [`distance`]), which every x86_64 CPU has.
//!
//! Invariant: results equal the naive sums up to float32 reassociation (tested against f64),
//! for int8 the naive sums over the dequantised weights.

pub mod distance;
pub mod packed;
pub mod select;

use packed::{panels_generic, Store};
pub use packed::{Elem, Packed, NR};
use rayon::prelude::*;

/// A thread pool for the kernels.
#[derive(Debug)]
pub struct Pool {
    pool: rayon::ThreadPool,
    threads: usize,
}

/// Which instruction set the kernels use on this CPU.
pub fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "baseline"
}

impl Pool {
    /// A pool of `threads` workers (at least 1).
    pub fn new(threads: usize) -> Result<Self, String> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gemv-{i}"))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { pool, threads })
    }

    /// Runs `f` on one of the pool's threads. A caller that alternates kernel calls with other
    /// work (an LLM engine between its libtorch ops) should run its whole loop this way: it then
    /// is one of the pool's workers, and no idle worker competes with it for a core.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// `out = x W^T` for `x` (b x k, row-major) against packed `W` (n x k): `out` is (b x n),
    /// row-major. Any `b` works; the kernel is built for decoding (1 to 8 rows, where it streams
    /// `W` once at memory speed) and short prompts (8-row blocks over each panel while it sits in
    /// L2). Panics if the slice lengths do not match the shapes.
    pub fn matmul(&self, w: &Packed, x: &[f32], b: usize, out: &mut [f32]) {
        let (n, k) = (w.n, w.k);
        assert_eq!(x.len(), b * k, "x is not b x k");
        assert_eq!(out.len(), b * n, "out is not b x n");
        if n == 0 || b == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        // Panels per task: about 64 KiB of weights, and several tasks per thread so a slow
        // thread does not hold up the call.
        let per = (16_384 / (k * NR).max(1))
            .max(1)
            .clamp(1, panels.div_ceil(2 * self.threads).max(1));
        let mut tmp = vec![0f32; panels * b * NR];
        let serial = self.threads == 1 || n * k * b.min(8) < 65_536;
        match &w.store {
            Store::F32(p) => self.each(serial, p, k, per, x, b, &mut tmp),
            Store::I8 { q, .. } => self.each(serial, q, k, per, x, b, &mut tmp),
        }
        let scales = match &w.store {
            Store::I8 { scales, .. } => Some(scales.as_slice()),
            Store::F32(_) => None,
        };
        for (p, block) in tmp.chunks_exact(b * NR).enumerate() {
            let cols = NR.min(n - p * NR);
            for (i, src) in block.chunks_exact(NR).enumerate() {
                let dst = &mut out[i * n + p * NR..i * n + p * NR + cols];
                match scales {
                    Some(s) => {
                        for ((d, v), sc) in dst.iter_mut().zip(src).zip(&s[p * NR..]) {
                            *d = v * sc;
                        }
                    }
                    None => dst.copy_from_slice(&src[..cols]),
                }
            }
        }
    }

    /// `f(i, row)` for every `row_len`-wide row `i` of `out`, spread over the pool (row-parallel
    /// work beside the matrix products, e.g. attention of each sequence and head).
    pub fn rows(
        &self,
        out: &mut [f32],
        row_len: usize,
        f: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) {
        if row_len == 0 {
            return;
        }
        if self.threads == 1 || out.len() / row_len < 2 {
            out.chunks_mut(row_len)
                .enumerate()
                .for_each(|(i, r)| f(i, r));
        } else {
            self.pool.install(|| {
                out.par_chunks_mut(row_len)
                    .enumerate()
                    .for_each(|(i, r)| f(i, r))
            });
        }
    }

    /// Every group of `per` panels as one task (on the pool unless `serial`).
    #[allow(clippy::too_many_arguments)]
    fn each<T: Elem>(
        &self,
        serial: bool,
        data: &[T],
        k: usize,
        per: usize,
        x: &[f32],
        b: usize,
        tmp: &mut [f32],
    ) {
        let run = |(o, p): (&mut [f32], &[T])| panels_dispatch(p, k, x, b, o);
        let outs = tmp.chunks_mut(per * b * NR);
        let ins = data.chunks(per * k * NR);
        if serial {
            outs.zip(ins).for_each(run);
        } else {
            self.pool.install(|| {
                tmp.par_chunks_mut(per * b * NR)
                    .zip(data.par_chunks(per * k * NR))
                    .for_each(run)
            });
        }
    }
}

fn panels_dispatch<T: Elem>(p: &[T], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return panels_avx512(p, k, x, b, out);
            }
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return panels_avx2(p, k, x, b, out);
            }
        }
    }
    panels_generic::<T, false, 4, 8>(p, k, x, b, out)
}

/// 8 rows x 48 columns: 24 of the 32 vector registers accumulate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn panels_avx512<T: Elem>(p: &[T], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    panels_generic::<T, true, 8, 48>(p, k, x, b, out)
}

/// 4 rows x 16 columns: 8 of the 16 vector registers accumulate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn panels_avx2<T: Elem>(p: &[T], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    panels_generic::<T, true, 4, 16>(p, k, x, b, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], n: usize, k: usize, x: &[f32], b: usize) -> Vec<f64> {
        let mut out = vec![0.0; b * n];
        for i in 0..b {
            for r in 0..n {
                out[i * n + r] = (0..k)
                    .map(|j| w[r * k + j] as f64 * x[i * k + j] as f64)
                    .sum();
            }
        }
        out
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_sums_for_odd_shapes_rows_and_thread_counts() {
        for (n, k, b) in [
            (1, 1, 1),
            (7, 33, 3),
            (300, 576, 1),
            (960, 576, 8),
            (65, 1537, 5),
            (97, 64, 19),
        ] {
            let w = random(n * k, 12345);
            let x = random(b * k, 777);
            let want = naive(&w, n, k, &x, b);
            let f = Packed::f32(&w, n, k);
            assert_eq!(f.unpack(), w, "packing is lossless");
            let q = Packed::int8(&w, n, k);
            let wq = q.unpack();
            assert!(w
                .iter()
                .zip(&wq)
                .all(|(a, b)| (a - b).abs() <= 1.0 / 254.0 + 1e-6));
            let want_q = naive(&wq, n, k, &x, b);
            for threads in [1, 2, 3] {
                let pool = Pool::new(threads).unwrap();
                for (packed, want) in [(&f, &want), (&q, &want_q)] {
                    let mut out = vec![f32::NAN; b * n];
                    pool.matmul(packed, &x, b, &mut out);
                    for (o, e) in out.iter().zip(want) {
                        assert!(
                            (*o as f64 - e).abs() < 1e-4 * (k as f64).sqrt(),
                            "{n}x{k}x{b} t{threads}: {o} vs {e}"
                        );
                    }
                }
            }
        }
        assert_eq!(Packed::f32(&[0.0; 6], 3, 2).bytes(), NR * 2 * 4);
        assert!(!isa().is_empty());
    }

    #[test]
    fn the_baseline_kernel_agrees_with_the_dispatched_one() {
        let (n, k, b) = (100, 70, 6);
        let w = random(n * k, 9);
        let x = random(b * k, 10);
        let p = Packed::f32(&w, n, k);
        let Store::F32(data) = &p.store else {
            unreachable!()
        };
        let mut plain = vec![0f32; n.div_ceil(NR) * b * NR];
        panels_generic::<f32, false, 4, 8>(data, k, &x, b, &mut plain);
        let mut fast = vec![0f32; plain.len()];
        panels_dispatch(data, k, &x, b, &mut fast);
        for (a, e) in plain.iter().zip(&fast) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
    }
}
