use super::*;

/// Signals from a planted unit-norm dictionary: (dictionary, signals).
fn planted(m: usize, c: usize, s: usize, n: usize, noise: f64, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64::new(seed);
    let mut d: Vec<f64> = (0..m * c).map(|_| rng.normal()).collect();
    for k in 0..m {
        normalise(&mut d[k * c..(k + 1) * c]);
    }
    let mut h = vec![0f64; n * c];
    for i in 0..n {
        let mut atoms: Vec<usize> = (0..m).collect();
        shuffle(&mut rng, &mut atoms);
        for &k in &atoms[..s] {
            let g = rng.normal();
            for t in 0..c {
                h[i * c + t] += g * d[k * c + t];
            }
        }
        for t in 0..c {
            h[i * c + t] += noise * rng.normal();
        }
    }
    (d, h)
}

/// Planted atoms matched by a learned atom with |cosine| > 0.99.
fn recovered(truth: &[f64], learned: &[f64], c: usize) -> f64 {
    let m = truth.len() / c;
    let found = (0..m)
        .filter(|&k| {
            learned.chunks(c).any(|l| {
                let cos: f64 = l
                    .iter()
                    .zip(&truth[k * c..(k + 1) * c])
                    .map(|(a, b)| a * b)
                    .sum();
                cos.abs() > 0.99
            })
        })
        .count();
    found as f64 / m as f64
}

#[test]
fn every_method_recovers_a_planted_dictionary_and_lowers_the_error() {
    let (c, m, s) = (16, 32, 3);
    let (truth, h) = planted(m, c, s, 1500, 0.01, 4);
    for (method, iterations, want) in [
        (Method::Ksvd, 40, 0.9),
        (Method::Mod, 40, 0.9),
        (Method::Online, 40, 0.8),
    ] {
        let p = LearnParams {
            method,
            atoms: m,
            iterations,
            seed: 1,
            batch_size: 100,
        };
        let out = learn(&h, c, s, &p, &Progress::default()).unwrap();
        let first = out.mse_history[0];
        let last = *out.mse_history.last().unwrap();
        let rate = recovered(&truth, &out.dict, c);
        assert!(last < first / 5.0, "{method:?}: mse {first} -> {last}");
        assert!(rate >= want, "{method:?}: recovered {rate}, mse {last}");
        for atom in out.dict.chunks(c) {
            let n: f64 = atom.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-9);
        }
        assert_eq!(out.mse_history.len(), iterations + 1);
        // Deterministic given the seed.
        let again = learn(&h, c, s, &p, &Progress::default()).unwrap();
        assert_eq!(again.dict, out.dict);
    }
}

#[test]
fn bad_settings_are_refused_and_cancellation_stops_learning() {
    let (_, h) = planted(8, 4, 2, 50, 0.0, 1);
    let p = |atoms, iterations| LearnParams {
        atoms,
        iterations,
        ..LearnParams::default()
    };
    let e = learn(&h, 4, 2, &p(1, 5), &Progress::default()).unwrap_err();
    assert!(e.to_string().contains("learn.atoms"), "{e}");
    let e = learn(&h, 4, 2, &p(8, 0), &Progress::default()).unwrap_err();
    assert!(e.to_string().contains("learn.iterations"), "{e}");
    let cancelled = Progress::default();
    cancelled.cancel();
    assert!(matches!(
        learn(&h, 4, 2, &p(8, 5), &cancelled),
        Err(AnalysisError::Cancelled)
    ));
    // More atoms than signals: Gaussian atoms fill the rest; still unit norm.
    let out = learn(&h, 4, 2, &p(64, 2), &Progress::default()).unwrap();
    assert_eq!(out.dict.len(), 64 * 4);
}
