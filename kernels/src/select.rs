//! The inner loop of k-smallest selection by threshold: find the next 16-value chunk of a row
//! that holds a value below the current k-th best. Almost every chunk holds none once the
//! threshold has settled, so the scan is a stream of vector minimums with an early exit;
//! compiled for AVX-512F, AVX2 and the baseline like the other kernels.

/// Values per chunk.
pub const CHUNK: usize = 16;

/// Index of the first chunk start `s >= from` (stepping by [`CHUNK`] while a whole chunk fits)
/// whose chunk `v[s..s + CHUNK]` holds a value `< threshold`; `None` if no whole chunk does.
/// NaN values never count as below.
pub fn next_chunk_below(v: &[f32], from: usize, threshold: f32) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return next_avx512(v, from, threshold);
            }
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            #[allow(unsafe_code)]
            unsafe {
                return next_avx2(v, from, threshold);
            }
        }
    }
    next_generic(v, from, threshold)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn next_avx512(v: &[f32], from: usize, threshold: f32) -> Option<usize> {
    next_generic(v, from, threshold)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn next_avx2(v: &[f32], from: usize, threshold: f32) -> Option<usize> {
    next_generic(v, from, threshold)
}

#[inline(always)]
fn next_generic(v: &[f32], from: usize, threshold: f32) -> Option<usize> {
    let rest = v.get(from..)?;
    rest.chunks_exact(CHUNK)
        .position(|ch| {
            let mut m = [f32::INFINITY; CHUNK];
            for l in 0..CHUNK {
                m[l] = if ch[l] < m[l] { ch[l] } else { m[l] };
            }
            m.iter().any(|&x| x < threshold)
        })
        .map(|c| from + c * CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_chunk_with_a_smaller_value() {
        let mut v = vec![5.0f32; 100];
        assert_eq!(next_chunk_below(&v, 0, 5.0), None);
        v[40] = 1.0;
        assert_eq!(next_chunk_below(&v, 0, 2.0), Some(32));
        assert_eq!(next_chunk_below(&v, 3, 2.0), Some(35));
        assert_eq!(next_chunk_below(&v, 41, 2.0), None);
        // The tail that is not a whole chunk is left to the caller.
        v[99] = 0.0;
        assert_eq!(next_chunk_below(&v, 41, 2.0), None);
        v[40] = f32::NAN;
        assert_eq!(next_chunk_below(&v, 0, 2.0), None);
        assert_eq!(next_chunk_below(&v, 200, 2.0), None);
    }
}
