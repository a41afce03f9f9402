//! `y = x W^T` for a few rows of `x` (decoding: 1 to 16 sequences) against a large row-major
//! weight `W` (N x K), the operation that bounds LLM decoding on CPUs. libtorch's float32 path
//! runs it on one thread at about a third of the machine's memory bandwidth; this kernel splits
//! the N output rows over a rayon pool and keeps each weight row in L1 while it meets every row
//! of `x`, so `W` streams from memory exactly once per call.
//!
//! The dot products are plain Rust written so LLVM vectorises them (32 independent partial
//! sums); they are compiled three times, for AVX-512F, AVX2+FMA and the baseline, and the best
//! version the CPU supports is chosen at run time.
//!
//! Safety: the only `unsafe` is calling a `#[target_feature]` function, each time directly after
//! `is_x86_feature_detected!` confirmed every feature it enables.
//!
//! Invariant: results equal the naive sums up to float32 reassociation (tested against f64).

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

    /// `out[n * b + i] = dot(W[n], x[i])` for `W` (n x k) row-major and `x` (b x k) row-major:
    /// the product in (N, B) layout. Panics if the slice lengths do not match the shapes.
    pub fn matmul_t(&self, w: &[f32], n: usize, k: usize, x: &[f32], b: usize, out: &mut [f32]) {
        assert_eq!(w.len(), n * k, "W is not n x k");
        assert_eq!(x.len(), b * k, "x is not b x k");
        assert_eq!(out.len(), n * b, "out is not n x b");
        if n == 0 || b == 0 {
            return;
        }
        // About 64 KiB of weights per task: enough work to amortise scheduling, and several
        // tasks per thread so a slow thread does not hold up the call.
        let rows = (16_384 / k.max(1)).clamp(8, n.div_ceil(self.threads).max(8));
        let run = |(t, chunk): (usize, &mut [f32])| {
            let start = t * rows;
            let count = chunk.len() / b;
            rows_dispatch(&w[start * k..(start + count) * k], k, x, b, chunk);
        };
        if self.threads == 1 || n * k < 65_536 {
            out.chunks_mut(rows * b).enumerate().for_each(run);
        } else {
            self.pool
                .install(|| out.par_chunks_mut(rows * b).enumerate().for_each(run));
        }
    }
}

fn rows_dispatch(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return rows_avx512(w, k, x, b, out);
            }
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return rows_avx2(w, k, x, b, out);
            }
        }
    }
    rows_plain(w, k, x, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn rows_avx512(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    rows_fma(w, k, x, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    rows_fma(w, k, x, b, out)
}

/// Rows with fused multiply-adds (only reached from the target-feature versions above, where
/// `mul_add` compiles to FMA instructions instead of a library call).
#[inline(always)]
fn rows_fma(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    rows_generic::<true>(w, k, x, b, out)
}

fn rows_plain(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    rows_generic::<false>(w, k, x, b, out)
}

/// Every weight row against the rows of `x`, four `x` rows per pass so each weight chunk is
/// loaded once for four multiply-adds.
#[inline(always)]
fn rows_generic<const FMA: bool>(w: &[f32], k: usize, x: &[f32], b: usize, out: &mut [f32]) {
    for (row, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(b)) {
        let mut i = 0;
        while i + 4 <= b {
            let d = dots::<FMA, 4>(row, &x[i * k..(i + 4) * k], k);
            o[i..i + 4].copy_from_slice(&d);
            i += 4;
        }
        while i + 2 <= b {
            let d = dots::<FMA, 2>(row, &x[i * k..(i + 2) * k], k);
            o[i..i + 2].copy_from_slice(&d);
            i += 2;
        }
        if i < b {
            o[i] = dots::<FMA, 1>(row, &x[i * k..(i + 1) * k], k)[0];
        }
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

/// Horizontal sum of partial sums plus the tail.
#[inline(always)]
fn reduce(mut a: [f32; L], tail: f32) -> f32 {
    let mut width = L / 2;
    while width > 0 {
        for l in 0..width {
            a[l] += a[l + width];
        }
        width /= 2;
    }
    a[0] + tail
}

/// Partial sums per dot product (one 512-bit register, or two 256-bit ones).
const L: usize = 16;

/// Dot products of `row` with the `M` (1, 2 or 4) rows of length `k` packed in `xs`: each
/// weight chunk is loaded once for `M` multiply-adds, and the accumulators are separate named
/// arrays so they stay in registers and the lane loop vectorises without reassociation.
#[inline(always)]
fn dots<const FMA: bool, const M: usize>(row: &[f32], xs: &[f32], k: usize) -> [f32; M] {
    let full = k / L * L;
    let x = |r: usize| &xs[(r.min(M - 1)) * k..(r.min(M - 1) + 1) * k];
    let (x0, x1, x2, x3) = (x(0), x(1), x(2), x(3));
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
    let mut j = 0;
    while j < full {
        let wv: &[f32; L] = row[j..j + L].try_into().expect("L elements");
        let v0: &[f32; L] = x0[j..j + L].try_into().expect("L elements");
        let v1: &[f32; L] = x1[j..j + L].try_into().expect("L elements");
        let v2: &[f32; L] = x2[j..j + L].try_into().expect("L elements");
        let v3: &[f32; L] = x3[j..j + L].try_into().expect("L elements");
        for l in 0..L {
            a0[l] = madd::<FMA>(wv[l], v0[l], a0[l]);
            if M > 1 {
                a1[l] = madd::<FMA>(wv[l], v1[l], a1[l]);
            }
            if M > 2 {
                a2[l] = madd::<FMA>(wv[l], v2[l], a2[l]);
                a3[l] = madd::<FMA>(wv[l], v3[l], a3[l]);
            }
        }
        j += L;
    }
    let tail = |xr: &[f32]| (full..k).map(|t| row[t] * xr[t]).sum::<f32>();
    let all = [
        reduce(a0, tail(x0)),
        reduce(a1, tail(x1)),
        reduce(a2, tail(x2)),
        reduce(a3, tail(x3)),
    ];
    std::array::from_fn(|r| all[r])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], n: usize, k: usize, x: &[f32], b: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * b];
        for r in 0..n {
            for i in 0..b {
                out[r * b + i] = (0..k)
                    .map(|j| w[r * k + j] as f64 * x[i * k + j] as f64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_f64_sums_for_odd_shapes_and_thread_counts() {
        let mut s = 12345u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        for (n, k, b) in [
            (1, 1, 1),
            (7, 33, 3),
            (300, 576, 1),
            (1536, 576, 8),
            (65, 1537, 5),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..b * k).map(|_| rnd()).collect();
            let want = naive(&w, n, k, &x, b);
            for threads in [1, 2, 3] {
                let pool = Pool::new(threads).unwrap();
                let mut out = vec![0f32; n * b];
                pool.matmul_t(&w, n, k, &x, b, &mut out);
                for (o, e) in out.iter().zip(&want) {
                    assert!(
                        (*o as f64 - e).abs() < 1e-4 * (k as f64).sqrt(),
                        "{n}x{k}x{b} t{threads}: {o} vs {e}"
                    );
                }
            }
        }
        let mut plain = vec![0f32; 4];
        rows_plain(
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            3,
            &[1.0, 0.0, 1.0, 0.5, 0.5, 0.5],
            2,
            &mut plain,
        );
        assert_eq!(plain, [4.0, 3.0, 10.0, 7.5]);
        assert!(!isa().is_empty());
    }
}
