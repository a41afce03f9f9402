use super::*;

/// Three groups in R^40: on subspaces of dimension 2, 6 and 14, with separated offsets;
/// (rows, labels).
fn three_strata(per: usize) -> (Vec<Vec<f64>>, Vec<i64>) {
    let mut s = 11u64;
    let mut u = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (g, dim) in [(0usize, 2usize), (1, 6), (2, 14)] {
        let basis: Vec<Vec<f64>> = (0..dim).map(|_| (0..40).map(|_| u()).collect()).collect();
        for _ in 0..per {
            let coef: Vec<f64> = (0..dim).map(|_| u()).collect();
            let row: Vec<f64> = (0..40)
                .map(|t| {
                    6.0 * (t % 3 == g) as u8 as f64
                        + (0..dim).map(|j| coef[j] * basis[j][t]).sum::<f64>()
                })
                .collect();
            rows.push(row);
            labels.push(g as i64);
        }
    }
    (rows, labels)
}

fn params() -> StratifyParams {
    StratifyParams {
        experts: 3,
        pca_dim: 24,
        code_dim: 16,
        sparsities: Some(vec![2, 6, 12]),
        epochs: 12,
        batch_size: 64,
        lr: 5e-3,
        kmeans_k: 3,
        seed: 4,
        ..StratifyParams::default()
    }
}

#[test]
fn strata_follow_the_groups_and_statistics_are_consistent() {
    let (rows, labels) = three_strata(120);
    let r = stratify(&rows, Some(&labels), &params(), &Progress::default()).unwrap();
    assert_eq!(r.n_points, 360);
    assert!(
        r.loss_history.last().unwrap() < &(r.loss_history[0] * 0.7),
        "{:?}",
        r.loss_history
    );
    assert!((r.usage.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(r
        .gating_entropy
        .iter()
        .all(|h| (0.0..=1.0 + 1e-9).contains(h)));
    assert_eq!(r.gating_entropy_histogram.iter().sum::<usize>(), 360);
    assert!((0.0..=1.0 + 1e-9).contains(&r.mean_gate_entropy));
    for s in &r.strata {
        assert!(s.label_purity.unwrap() > 0.95, "{s:?}");
    }
    // The lPCA dimensions of the strata order as the groups' subspaces do.
    let mut dims: Vec<usize> = r.strata.iter().map(|s| s.lpca_dimension.unwrap()).collect();
    dims.sort();
    assert!(dims[0] <= 2 && dims[2] >= 6, "{dims:?}");
    assert!(
        r.silhouette > 0.3 && r.davies_bouldin < 1.5,
        "{} {}",
        r.silhouette,
        r.davies_bouldin
    );
    for a in 0..3 {
        assert!((r.key_cosine[a][a] - 1.0).abs() < 1e-6);
        assert_eq!(r.subspace_distance[a][a], 0.0);
        for b in 0..3 {
            assert!((r.subspace_distance[a][b] - r.subspace_distance[b][a]).abs() < 1e-12);
        }
    }
    // Deterministic given the seed.
    let again = stratify(&rows, Some(&labels), &params(), &Progress::default()).unwrap();
    assert_eq!(again.assignment, r.assignment);
    assert_eq!(again.loss_history, r.loss_history);
    assert_eq!(again.strata_assignment, r.strata_assignment);
}

#[test]
fn bad_input_names_the_field() {
    let (rows, labels) = three_strata(5);
    let e = |p: StratifyParams, l: Option<&[i64]>| {
        stratify(&rows, l, &p, &Progress::default())
            .unwrap_err()
            .to_string()
    };
    assert!(e(
        StratifyParams {
            experts: 1,
            ..params()
        },
        None
    )
    .contains("experts"));
    assert!(e(
        StratifyParams {
            sparsities: Some(vec![2]),
            ..params()
        },
        None
    )
    .contains("sparsities"));
    assert!(e(
        StratifyParams {
            sparsities: Some(vec![2, 2, 40]),
            ..params()
        },
        None
    )
    .contains("sparsities"));
    assert!(e(params(), Some(&labels[1..])).contains("labels"));
    let mut ragged = rows.clone();
    ragged[3].pop();
    let err = stratify(&ragged, None, &params(), &Progress::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("embeddings") && err.contains("row 3"), "{err}");
}

#[test]
fn labels_with_a_weight_train_a_supervised_head() {
    // Without a weight no head is trained; with one, it learns the groups from the codes.
    let (rows, groups) = three_strata(60);
    let unsupervised = stratify(&rows, Some(&groups), &params(), &Progress::default()).unwrap();
    assert_eq!(unsupervised.label_accuracy, None);
    let p = StratifyParams {
        label_weight: 1.0,
        epochs: 30,
        ..params()
    };
    let r = stratify(&rows, Some(&groups), &p, &Progress::default()).unwrap();
    let acc = r.label_accuracy.unwrap();
    assert!(acc > 0.95, "{acc}");
    // The same seed gives the same run.
    let again = stratify(&rows, Some(&groups), &p, &Progress::default()).unwrap();
    assert_eq!(again.loss_history, r.loss_history);
    let bad = StratifyParams {
        label_weight: -1.0,
        ..params()
    };
    let err = stratify(&rows, Some(&groups), &bad, &Progress::default()).unwrap_err();
    assert!(err.to_string().starts_with("label_weight"), "{err}");
}
