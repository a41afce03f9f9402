//! Next-token choice from a row of logits: greedy at temperature 0, otherwise temperature,
//! top-k and nucleus (top-p) filtering, then a draw from a per-request generator (seeded when the
//! request gives a seed, so a seeded request is reproducible whatever else is in the batch).

/// Sampling settings of one request (OpenAI's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: no limit).
    pub top_k: usize,
    /// Generator seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

/// A small, fast generator (SplitMix64): statistically fine for sampling, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the clock and a counter.
    pub fn from_entropy() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(t ^ N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Chooses tokens for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = params.seed.map_or_else(Rng::from_entropy, Rng::new);
        Self { params, rng }
    }

    /// The next token for `logits` (one row over the vocabulary).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax();
        }
        // Candidates: all tokens, or the top k, as (id, logit) most likely first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (i as u32, v))
            .collect();
        if cand.is_empty() {
            return argmax();
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let inv_t = 1.0 / p.temperature as f64;
        let mut probs: Vec<(u32, f64)> = cand
            .iter()
            .map(|&(i, v)| (i, ((v - max) as f64 * inv_t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|x| x.1).sum();
        if p.top_p < 1.0 {
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let target = p.top_p.max(0.0) as f64 * total;
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|x| {
                    acc += x.1;
                    acc >= target
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().map(|x| x.1).sum();
        let mut u = self.rng.uniform() * total;
        for &(i, w) in &probs {
            if u < w {
                return i;
            }
            u -= w;
        }
        probs.last().map_or_else(argmax, |x| x.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: Some(seed),
        }
    }

    #[test]
    fn greedy_topk_topp_and_seeds_behave() {
        let logits = [0.0f32, 3.0, 2.0, 1.0, f32::NEG_INFINITY];
        assert_eq!(Sampler::new(params(0.0, 1.0, 0, 1)).sample(&logits), 1);
        // top_k = 2 only ever yields the two best tokens.
        let mut s = Sampler::new(params(5.0, 1.0, 2, 7));
        let draws: Vec<u32> = (0..500).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t == 1 || t == 2));
        assert!(draws.contains(&1) && draws.contains(&2));
        // A tiny top_p keeps only the most likely token.
        let mut s = Sampler::new(params(1.0, 0.01, 0, 7));
        assert!((0..100).all(|_| s.sample(&logits) == 1));
        // Frequencies follow softmax(logits / T): p(1) = e^3 / (1 + e + e^2 + e^3) ~ 0.644.
        let mut s = Sampler::new(params(1.0, 1.0, 0, 3));
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count() as f64 / n as f64;
        assert!((ones - 0.644).abs() < 0.02, "{ones}");
        // Same seed, same sequence; -inf is never drawn.
        let a: Vec<u32> = {
            let mut s = Sampler::new(params(2.0, 0.9, 0, 42));
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params(2.0, 0.9, 0, 42));
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(!a.contains(&4));
    }
}
