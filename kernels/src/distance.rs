//! Squared Euclidean distances of float32 vectors, accumulated in float64: the exact
//! refinement step of k-nearest-neighbour search (a GEMM ranks the candidates, this recomputes
//! each candidate's distance without the GEMM form's cancellation). Differences are taken in
//! float64 from the float32 inputs, so each term is exact up to its square's rounding.
//!
//! Like the matrix kernel, the loop is plain Rust that LLVM vectorises, compiled for AVX-512F,
//! AVX2+FMA and the baseline, the best chosen at run time.

/// Accumulators: enough independent chains to hide the add latency at any vector width.
const ACC: usize = 16;

/// `sum_i (a_i - b_i)^2` in float64. Panics if the lengths differ.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "sq_dist: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return sq_dist_avx512(a, b);
            }
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return sq_dist_avx2(a, b);
            }
        }
    }
    sq_dist_generic(a, b)
}

/// `out[t] = sq_dist(a, rows[t])`, the next row prefetched while one is summed: the rows of a
/// neighbour search are scattered over memory, and each new row would otherwise start with a
/// cache miss. Panics if `out` is shorter than `rows` or a length differs from `a`'s.
pub fn sq_dists(a: &[f32], rows: &[&[f32]], out: &mut [f64]) {
    if let Some(first) = rows.first() {
        prefetch(first);
    }
    for (t, row) in rows.iter().enumerate() {
        if let Some(next) = rows.get(t + 1) {
            prefetch(next);
        }
        out[t] = sq_dist(a, row);
    }
}

/// Asks for `v`'s cache lines ahead of use (a hint: never faults, whatever the address).
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: SSE, the only feature `_mm_prefetch` needs, is part of every x86_64 CPU, and
        // a prefetch reads nothing architecturally (the pointer is in bounds anyway).
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sq_dist_avx512(a: &[f32], b: &[f32]) -> f64 {
    sq_dist_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sq_dist_avx2(a: &[f32], b: &[f32]) -> f64 {
    sq_dist_generic(a, b)
}

#[inline(always)]
fn sq_dist_generic(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; ACC];
    let (ca, cb) = (a.chunks_exact(ACC), b.chunks_exact(ACC));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..ACC {
            let e = f64::from(x[l]) - f64::from(y[l]);
            acc[l] = e.mul_add(e, acc[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_naive_sum() {
        for len in [0usize, 1, 15, 16, 17, 768, 1001] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() + 1e-4).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum();
            let got = sq_dist(&a, &b);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "len {len}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn batched_distances_equal_single_ones() {
        let rows: Vec<Vec<f32>> = (0..5)
            .map(|r| (0..40).map(|i| (i * r) as f32 * 0.1).collect())
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0; 5];
        sq_dists(&rows[2], &refs, &mut out);
        for (t, r) in rows.iter().enumerate() {
            assert_eq!(out[t], sq_dist(&rows[2], r));
        }
    }

    #[test]
    fn near_points_keep_their_small_distance() {
        // 1e3-sized coordinates 1e-3 apart: the GEMM form would lose every digit here.
        let a: Vec<f32> = (0..64).map(|i| 1000.0 + i as f32).collect();
        let b: Vec<f32> = a.iter().map(|x| x + 0.001).collect();
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*y as f64 - *x as f64).powi(2))
            .sum();
        assert!((sq_dist(&a, &b) - want).abs() < 1e-15);
    }
}
