use super::*;

/// Deterministic standard normals (Box-Muller over splitmix64).
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut u = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (u().max(1e-300), u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

fn matrix(rows: usize, cols: usize, data: Vec<f32>) -> Matrix {
    Matrix::new("w".into(), rows, cols, data).unwrap()
}

/// `W + theta u v^T` with unit u (rows) and v (cols).
fn add_rank_one(w: &mut [f32], rows: usize, cols: usize, theta: f64) -> (Vec<f64>, Vec<f64>) {
    let u: Vec<f64> = (0..rows)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } / (rows as f64).sqrt())
        .collect();
    let v: Vec<f64> = (0..cols).map(|j| (j % 3) as f64 - 1.0).collect();
    let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let v: Vec<f64> = v.iter().map(|x| x / nv).collect();
    for i in 0..rows {
        for j in 0..cols {
            w[i * cols + j] += (theta * u[i] * v[j]) as f32;
        }
    }
    (u, v)
}

#[test]
fn eigenvalues_are_the_squared_singular_values_for_both_orientations() {
    // The last shapes take the block-triangular Gram path (more than two 512-column panels).
    for (r, c) in [(60, 25), (25, 60), (1100, 1030), (1030, 1100)] {
        let m = matrix(r, c, normals(r * c, 7));
        let ev = eigenvalues(&m).unwrap();
        let k = r.min(c);
        assert_eq!(ev.len(), k);
        let w = Tensor::from_slice(&m.data)
            .view([r as i64, c as i64])
            .to_kind(Kind::Double);
        let sv = Vec::<f64>::try_from(w.svd(true, false).1).unwrap();
        let mut sq: Vec<f64> = sv.iter().map(|s| s * s).collect();
        sq.sort_by(f64::total_cmp);
        for (a, b) in ev.iter().zip(&sq) {
            assert!((a - b).abs() <= 1e-9 * sq[k - 1], "{a} vs {b}");
        }
    }
}

#[test]
fn a_gaussian_matrix_fits_the_mp_bulk_and_a_planted_spike_is_found() {
    let (r, c) = (800, 200);
    let mut data = normals(r * c, 3);
    data.iter_mut().for_each(|x| *x *= 0.5);
    let plain = analyze(
        &matrix(r, c, data.clone()),
        None,
        &SpectrumOptions::default(),
    )
    .unwrap();
    let mp = &plain.marchenko_pastur;
    assert!((mp.sigma2 - 0.25).abs() < 0.01, "{mp:?}");
    assert!((mp.q - 4.0).abs() < 1e-12);
    assert!(mp.spikes.is_empty(), "{mp:?}");
    assert!(plain.lambda_max < mp.spike_threshold && plain.lambda_max > 0.9 * mp.lambda_plus);
    // A rank-one signal of strength theta: its eigenvalue is ~theta^2 (1 + ...) far past the edge.
    let theta = 3.0 * 0.5 * ((r * c) as f64).powf(0.25) * 2.0;
    add_rank_one(&mut data, r, c, theta);
    let spiked = analyze(&matrix(r, c, data), None, &SpectrumOptions::default()).unwrap();
    assert_eq!(
        spiked.marchenko_pastur.spikes.len(),
        1,
        "{:?}",
        spiked.marchenko_pastur
    );
    assert!(spiked.marchenko_pastur.spikes[0] > theta * theta);
    assert!((spiked.spectral_norm - spiked.lambda_max.sqrt()).abs() < 1e-12);
    assert!(spiked.stable_rank < plain.stable_rank);
}

#[test]
fn drift_from_an_initial_checkpoint_measures_the_update() {
    let (r, c) = (120, 80);
    let w0 = normals(r * c, 11);
    let mut w = w0.clone();
    add_rank_one(&mut w, r, c, 5.0);
    let out = analyze(
        &matrix(r, c, w),
        Some(&matrix(r, c, w0.clone())),
        &SpectrumOptions::default(),
    )
    .unwrap();
    let d = out.drift.unwrap();
    assert!((d.operator - 5.0).abs() < 1e-4, "{d:?}");
    assert!((d.frobenius - 5.0).abs() < 1e-4, "{d:?}");
    let f0 = w0.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    assert!((d.relative_frobenius - 5.0 / f0).abs() < 1e-6);
    assert!(d.esd_distance > 0.0 && d.esd_distance <= 1.0);
    // No change: zero drift.
    let same = analyze(
        &matrix(r, c, w0.clone()),
        Some(&matrix(r, c, w0)),
        &SpectrumOptions::default(),
    )
    .unwrap();
    let d = same.drift.unwrap();
    assert_eq!((d.frobenius, d.operator, d.esd_distance), (0.0, 0.0, 0.0));
    assert_eq!(d.alpha_change, Some(0.0));
}

#[test]
fn randomisation_is_seeded_and_destroys_structure() {
    // A low-rank-plus-noise matrix: permuting entries spreads its mass back into a bulk.
    let (r, c) = (150, 100);
    let mut data = normals(r * c, 5);
    data.iter_mut().for_each(|x| *x *= 0.01);
    for k in 0..5 {
        let col: Vec<f32> = normals(r, 100 + k);
        let row: Vec<f32> = normals(c, 200 + k);
        for i in 0..r {
            for j in 0..c {
                data[i * c + j] += col[i] * row[j] / 10.0;
            }
        }
    }
    let opts = SpectrumOptions {
        randomize: true,
        seed: 9,
        svg: true,
        eigenvalues: true,
        ..SpectrumOptions::default()
    };
    let a = analyze(&matrix(r, c, data.clone()), None, &opts).unwrap();
    let b = analyze(&matrix(r, c, data), None, &opts).unwrap();
    assert_eq!(a.randomized_esd_distance, b.randomized_esd_distance);
    assert!(
        a.randomized_esd_distance.unwrap() > 0.5,
        "{:?}",
        a.randomized_esd_distance
    );
    assert!(a.randomized_lambda_max.unwrap() < a.lambda_max);
    assert_eq!(a.eigenvalues.as_ref().unwrap().len(), 100);
    let svg = a.svg.unwrap();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>") && svg.contains("polyline"));
}

#[test]
fn matrix_entropy_is_one_for_equal_singular_values_and_lower_for_a_spike() {
    let (n, m) = (50usize, 50usize);
    let mut eye = vec![0f32; n * m];
    (0..n).for_each(|i| eye[i * m + i] = 2.0);
    let flat = analyze(
        &matrix(n, m, eye.clone()),
        None,
        &SpectrumOptions::default(),
    )
    .unwrap();
    assert!(
        (flat.matrix_entropy - 1.0).abs() < 1e-6,
        "{}",
        flat.matrix_entropy
    );
    assert!((flat.stable_rank - 50.0).abs() < 1e-9);
    eye[0] = 40.0;
    let spiky = analyze(&matrix(n, m, eye), None, &SpectrumOptions::default()).unwrap();
    assert!(spiky.matrix_entropy < 0.7, "{}", spiky.matrix_entropy);
}

#[test]
fn bad_matrices_are_refused_with_the_field() {
    let e = Matrix::new("q".into(), 3, 3, vec![0.0; 8])
        .unwrap_err()
        .to_string();
    assert!(e.contains("matrices[q]") && e.contains("8 values"), "{e}");
    let e = Matrix::new("q".into(), 1, 3, vec![0.0; 3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 x 2"), "{e}");
    let mut d = vec![0.0; 9];
    d[4] = f32::NAN;
    let e = Matrix::new("q".into(), 3, 3, d).unwrap_err().to_string();
    assert!(e.contains("value 4"), "{e}");
    let init = matrix(3, 4, vec![1.0; 12]);
    let e = analyze(
        &matrix(4, 3, vec![1.0; 12]),
        Some(&init),
        &SpectrumOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("initial[w]"), "{e}");
}

/// The alignment of `dir` on `m` by itself.
fn align(
    m: &Matrix,
    dir: &Direction,
    spikes: usize,
) -> Result<alignment::Alignment, AnalysisError> {
    alignment::decompose(m)?.1.align(dir, spikes)
}

fn direction(name: &str, values: Vec<f64>, side: Option<alignment::Side>) -> Direction {
    Direction {
        name: name.into(),
        values,
        side,
    }
}

#[test]
fn spike_alignment_equals_the_svd_overlaps_on_either_side_and_orientation() {
    use alignment::Side;
    for (r, c) in [(300, 120), (120, 300)] {
        let mut data = normals(r * c, 11);
        data.iter_mut().for_each(|x| *x *= 0.5);
        let theta = 3.0 * 0.5 * ((r * c) as f64).powf(0.25) * 2.0;
        let (u, v) = add_rank_one(&mut data, r, c, theta);
        let m = matrix(r, c, data);
        let w = Tensor::from_slice(&m.data)
            .view([r as i64, c as i64])
            .to_kind(Kind::Double);
        // torch.svd returns V itself (not V^T): singular vectors are columns of both.
        let (left, _, right) = w.svd(true, true);
        let svd_overlap = |vectors: &Tensor, dir: &[f64]| {
            let d = Tensor::from_slice(dir);
            let d = &d / d.norm();
            f64::try_from(vectors.dot(&d).abs()).unwrap()
        };
        let opts = SpectrumOptions {
            directions: vec![direction("w", v.clone(), None)],
            ..SpectrumOptions::default()
        };
        let rep = analyze(&m, None, &opts).unwrap();
        let a = rep.alignment.unwrap();
        assert_eq!(a.side, Side::Input);
        assert_eq!(a.spikes.len(), rep.marchenko_pastur.spikes.len());
        assert_eq!(a.spikes.len(), 1, "{:?}", rep.marchenko_pastur);
        // The planted spike's right singular vector lies along v (BBP: well above 0.9 here)...
        let want = svd_overlap(&right.select(1, 0), &v);
        assert!((a.top - want).abs() < 1e-9, "{r}x{c}: {} vs {want}", a.top);
        assert!(a.top > 0.9 && a.spikes[0] == a.top, "{a:?}");
        // ... and its left one along u, with u scaled (the norm does not matter).
        let u2: Vec<f64> = u.iter().map(|x| x * -7.0).collect();
        let out = align(&m, &direction("w", u2, None), 1).unwrap();
        assert_eq!(out.side, Side::Output);
        let want = svd_overlap(&left.select(1, 0), &u);
        assert!(
            (out.top - want).abs() < 1e-9,
            "{r}x{c}: {} vs {want}",
            out.top
        );
        // An unrelated direction: about 1/sqrt(len).
        let other: Vec<f64> = normals(c, 5).iter().map(|&x| f64::from(x)).collect();
        let o = align(&m, &direction("w", other.clone(), None), 0).unwrap();
        assert!(
            o.top < 4.0 / (c as f64).sqrt() && o.spikes.is_empty(),
            "{o:?}"
        );
        let want = svd_overlap(&right.select(1, 0), &other);
        assert!((o.top - want).abs() < 1e-9);
    }
}

#[test]
fn bad_directions_are_refused_with_the_field() {
    use alignment::Side;
    let m = matrix(6, 4, normals(24, 1));
    let layers = [("w", 6, 4), ("v", 3, 3)];
    let err = |dirs: &[Direction]| alignment::check(dirs, layers).unwrap_err().to_string();
    let e = err(&[direction("w", vec![1.0; 5], None)]);
    assert!(
        e.contains("directions[0].values") && e.contains("has 5 values"),
        "{e}"
    );
    let e = err(&[direction("w", vec![1.0; 4], Some(Side::Output))]);
    assert!(e.contains("output side has 6"), "{e}");
    let e = err(&[direction("w", vec![0.0; 4], None)]);
    assert!(e.contains("all zeros"), "{e}");
    let e = err(&[direction("w", vec![1.0, f64::NAN, 0.0, 0.0], None)]);
    assert!(e.contains("finite"), "{e}");
    let e = err(&[
        direction("w", vec![1.0; 4], None),
        direction("q", vec![], None),
    ]);
    assert!(
        e.contains("directions[1].name") && e.contains("\"q\""),
        "{e}"
    );
    let e = err(&[
        direction("w", vec![1.0; 4], None),
        direction("w", vec![1.0; 6], None),
    ]);
    assert!(
        e.contains("directions[1].name") && e.contains("already"),
        "{e}"
    );
    assert!(alignment::check(&[direction("w", vec![1.0; 6], None)], layers).is_ok());
    // The same checks guard a direct call, named by layer; huge finite values are fine.
    let e = align(&m, &direction("w", vec![1.0; 5], None), 0).unwrap_err();
    assert!(e.to_string().contains("directions[w]"), "{e}");
    let a = align(&m, &direction("w", vec![1e200; 6], None), 0).unwrap();
    assert!(a.top > 0.0 && a.top <= 1.0 + 1e-12, "{a:?}");
}

#[test]
fn a_layer_with_a_direction_reports_the_same_eigenvalues() {
    let (r, c) = (90, 40);
    let m = matrix(r, c, normals(r * c, 4));
    let plain = analyze(&m, None, &SpectrumOptions::default()).unwrap();
    let opts = SpectrumOptions {
        directions: vec![direction("w", vec![1.0; c], None)],
        eigenvalues: true,
        ..SpectrumOptions::default()
    };
    let with = analyze(&m, None, &opts).unwrap();
    let want = eigenvalues(&m).unwrap();
    for (a, b) in with.eigenvalues.unwrap().iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * want[c - 1], "{a} vs {b}");
    }
    assert!((with.lambda_max - plain.lambda_max).abs() <= 1e-12 * plain.lambda_max);
    assert!(with.alignment.is_some() && plain.alignment.is_none());
}
