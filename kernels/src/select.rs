//! The inner loops of k-smallest selection by threshold: find the next 16-value chunk of a row
//! that holds a value at or below the current k-th best, either one threshold for the whole
//! row (the row's own neighbours) or one threshold per column (the row offered to every
//! column's neighbour list, the symmetric half of a distance matrix). Almost every chunk holds
//! none once the thresholds have settled, so each scan is a stream of vector compares with an
//! early exit; compiled for AVX-512F, AVX2 and the baseline like the other kernels.
//!
//! Both compare `v + shift` (rounded to float32) with the threshold: a row of `|y|^2 - 2 x.y`
//! plus the row's `|x|^2` is a squared distance. Rounding is monotonic, so the caller that
//! re-checks a found chunk value by value with the same float32 sum sees the same answer.

/// Values per chunk.
pub const CHUNK: usize = 16;

/// Index of the first chunk start `s >= from` (stepping by [`CHUNK`] while a whole chunk fits)
/// whose chunk `v[s..s + CHUNK]` holds a value with `v + shift <= threshold`; `None` if no
/// whole chunk does. NaN values never count.
pub fn next_chunk_at_most(v: &[f32], from: usize, shift: f32, threshold: f32) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return one_avx512(v, from, shift, threshold);
            }
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return one_avx2(v, from, shift, threshold);
            }
        }
    }
    one_generic(v, from, shift, threshold)
}

/// Like [`next_chunk_at_most`] with a threshold per value: the first chunk start `s >= from`
/// with some `l` in the chunk where `v[l] + shift <= thresholds[l]`. Panics if `thresholds` is
/// shorter than `v`.
pub fn next_chunk_at_most_each(
    v: &[f32],
    thresholds: &[f32],
    from: usize,
    shift: f32,
) -> Option<usize> {
    assert!(thresholds.len() >= v.len(), "one threshold per value");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return each_avx512(v, thresholds, from, shift);
            }
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return each_avx2(v, thresholds, from, shift);
            }
        }
    }
    each_generic(v, thresholds, from, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn one_avx512(v: &[f32], from: usize, shift: f32, threshold: f32) -> Option<usize> {
    one_generic(v, from, shift, threshold)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn one_avx2(v: &[f32], from: usize, shift: f32, threshold: f32) -> Option<usize> {
    one_generic(v, from, shift, threshold)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn each_avx512(v: &[f32], t: &[f32], from: usize, shift: f32) -> Option<usize> {
    each_generic(v, t, from, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn each_avx2(v: &[f32], t: &[f32], from: usize, shift: f32) -> Option<usize> {
    each_generic(v, t, from, shift)
}

#[inline(always)]
fn one_generic(v: &[f32], from: usize, shift: f32, threshold: f32) -> Option<usize> {
    let rest = v.get(from..)?;
    rest.chunks_exact(CHUNK)
        .position(|ch| {
            let mut hit = [false; CHUNK];
            for l in 0..CHUNK {
                hit[l] = ch[l] + shift <= threshold;
            }
            hit.iter().fold(false, |a, &h| a | h)
        })
        .map(|c| from + c * CHUNK)
}

#[inline(always)]
fn each_generic(v: &[f32], t: &[f32], from: usize, shift: f32) -> Option<usize> {
    let rest = v.get(from..)?;
    rest.chunks_exact(CHUNK)
        .zip(t[from..].chunks_exact(CHUNK))
        .position(|(ch, th)| {
            let mut hit = [false; CHUNK];
            for l in 0..CHUNK {
                hit[l] = ch[l] + shift <= th[l];
            }
            hit.iter().fold(false, |a, &h| a | h)
        })
        .map(|c| from + c * CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_chunk_with_a_value_at_most_the_threshold() {
        let mut v = vec![5.0f32; 100];
        assert_eq!(next_chunk_at_most(&v, 0, 0.0, 4.5), None);
        assert_eq!(next_chunk_at_most(&v, 0, 0.0, 5.0), Some(0), "ties count");
        v[40] = 1.0;
        assert_eq!(next_chunk_at_most(&v, 0, 0.0, 2.0), Some(32));
        assert_eq!(next_chunk_at_most(&v, 3, 0.0, 2.0), Some(35));
        assert_eq!(next_chunk_at_most(&v, 41, 0.0, 2.0), None);
        // The shift is added before the compare.
        assert_eq!(next_chunk_at_most(&v, 0, 1.5, 2.0), None);
        assert_eq!(next_chunk_at_most(&v, 0, -3.5, 2.0), Some(0));
        // The tail that is not a whole chunk is left to the caller.
        v[99] = 0.0;
        assert_eq!(next_chunk_at_most(&v, 41, 0.0, 2.0), None);
        v[40] = f32::NAN;
        assert_eq!(next_chunk_at_most(&v, 0, 0.0, 2.0), None);
        assert_eq!(next_chunk_at_most(&v, 200, 0.0, 2.0), None);
    }

    #[test]
    fn per_value_thresholds_are_matched_position_by_position() {
        let v: Vec<f32> = (0..80).map(|i| i as f32).collect();
        let mut t = vec![-1.0f32; 80];
        assert_eq!(next_chunk_at_most_each(&v, &t, 0, 0.0), None);
        t[50] = 50.0;
        assert_eq!(next_chunk_at_most_each(&v, &t, 0, 0.0), Some(48));
        assert_eq!(next_chunk_at_most_each(&v, &t, 0, 0.5), None);
        assert_eq!(next_chunk_at_most_each(&v, &t, 2, 0.0), Some(50));
        // A low value under a high threshold elsewhere does not count.
        t.fill(-100.0);
        t[70] = 3.0;
        assert_eq!(next_chunk_at_most_each(&v, &t, 0, 0.0), None);
        assert_eq!(next_chunk_at_most_each(&v, &t, 0, -70.0), Some(64));
    }
}
