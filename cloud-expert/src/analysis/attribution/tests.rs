//! The two kernel paths agree, projections approximate the exact kernel, and the poisoning
//! check finds flipped labels on a planted task.

use super::ntk::{gradient_kernel, KernelKind, KernelOptions};
use super::poison::{poison_check, PoisonParams};
use super::AttributionParams;
use crate::analysis::Progress;
use crate::nets::{Net, NetSpec};
use offload_shared::repository::{Arch, Normalization};
use tch::{nn, Kind, Tensor};

fn net(arch: Arch, input_shape: Vec<usize>, out: usize) -> (nn::VarStore, Net) {
    tch::manual_seed(5);
    let d: usize = input_shape.iter().product();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let net = Net::new(
        &vs.root(),
        NetSpec {
            arch,
            input_shape,
            extra_inputs: 0,
            out_dim: out,
            norm: Normalization {
                mean: vec![0.1; d],
                std: vec![2.0; d],
            },
        },
    )
    .unwrap();
    (vs, net)
}

fn kernel(vs: &nn::VarStore, net: &Net, x: &Tensor, n: usize, o: KernelOptions) -> Tensor {
    gradient_kernel(
        net,
        &vs.trainable_variables(),
        x,
        n,
        &o,
        &Progress::default(),
    )
    .unwrap()
    .k
}

/// A 6-16-8-4 MLP and 40 random inputs for it.
fn small_mlp() -> (nn::VarStore, Net, Tensor) {
    let (vs, net) = net(
        Arch::Mlp {
            hidden: vec![16, 8],
        },
        vec![6],
        4,
    );
    let x = Tensor::randn([40, 6], (Kind::Float, tch::Device::Cpu));
    (vs, net, x)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn factored_kernel_equals_per_sample_gradients() {
    let _seeded = crate::analysis::seeded_section();
    let (vs, net, x) = small_mlp();
    for kind in [KernelKind::Pntk, KernelKind::Trntk] {
        for normalize in [false, true] {
            let o = KernelOptions {
                kind,
                normalize,
                ..KernelOptions::default()
            };
            let fast = kernel(&vs, &net, &x, 30, o);
            let slow = kernel(
                &vs,
                &net,
                &x,
                30,
                KernelOptions {
                    per_sample: true,
                    ..o
                },
            );
            assert_eq!(fast.size(), [40, 30]);
            let scale = slow.abs().max().double_value(&[]);
            assert!(
                max_diff(&fast, &slow) < 1e-5 * scale,
                "{kind:?} {normalize}"
            );
        }
    }
    // Normalised: the training block has a unit diagonal and is symmetric.
    let k = kernel(&vs, &net, &x, 30, KernelOptions::default());
    let block = k.narrow(0, 0, 30);
    assert!(max_diff(&block, &block.tr()) < 1e-12);
    assert!(
        max_diff(
            &block.diagonal(0, 0, 1),
            &Tensor::ones([30], (Kind::Double, tch::Device::Cpu))
        ) < 1e-12
    );
}

#[test]
fn projected_kernels_approximate_the_exact_one() {
    let _seeded = crate::analysis::seeded_section();
    let (vs, net, x) = small_mlp();
    let exact = kernel(&vs, &net, &x, 40, KernelOptions::default());
    for per_sample in [false, true] {
        let o = KernelOptions {
            projection: Some(4096),
            seed: 9,
            per_sample,
            ..KernelOptions::default()
        };
        let approx = kernel(&vs, &net, &x, 40, o);
        let mean_err = (&approx - &exact)
            .abs()
            .mean(Kind::Double)
            .double_value(&[]);
        // Johnson-Lindenstrauss: errors of order sqrt(2 / p) = 0.022.
        assert!(mean_err < 0.03, "{per_sample}: mean error {mean_err}");
        assert!(max_diff(&approx, &exact) < 0.15, "{per_sample}");
        // Same seed, same projection.
        assert!(max_diff(&approx, &kernel(&vs, &net, &x, 40, o)) == 0.0);
    }
}

#[test]
fn cnn_kernels_come_from_per_sample_gradients() {
    let _seeded = crate::analysis::seeded_section();
    let (vs, net) = net(
        Arch::Cnn {
            channels: vec![2],
            hidden: 8,
        },
        vec![1, 4, 4],
        3,
    );
    let x = Tensor::randn([12, 16], (Kind::Float, tch::Device::Cpu));
    let r = gradient_kernel(
        &net,
        &vs.trainable_variables(),
        &x,
        10,
        &KernelOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(r.method, "per-sample");
    let params: usize = vs
        .trainable_variables()
        .iter()
        .filter(|t| t.requires_grad())
        .map(|t| t.numel())
        .sum();
    assert_eq!(r.gradient_dim, params);
    let block = r.k.narrow(0, 0, 10);
    assert!(max_diff(&block, &block.tr()) < 1e-12);
    // Positive semi-definite Gram block.
    let eig = block.linalg_eigvalsh("L");
    assert!(eig.min().double_value(&[]) > -1e-9);
    // A limit that cannot hold the gradients is refused, naming the way out.
    let err = gradient_kernel(
        &net,
        &vs.trainable_variables(),
        &x,
        10,
        &KernelOptions {
            max_gradient_values: 100,
            ..KernelOptions::default()
        },
        &Progress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("projection"), "{err}");
}

/// Four Gaussian blobs in 10-D, `per` points each.
fn blobs(per: usize, seed: i64) -> (Vec<f32>, Vec<u32>) {
    let _seeded = crate::analysis::seeded_section();
    tch::manual_seed(seed);
    let centres = Tensor::randn([4, 10], (Kind::Float, tch::Device::Cpu)) * 3.0;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for c in 0..4 {
        let pts = Tensor::randn([per as i64, 10], (Kind::Float, tch::Device::Cpu)) + centres.get(c);
        x.extend(Vec::<f32>::try_from(&pts.view([-1])).unwrap());
        y.extend(std::iter::repeat_n(c as u32, per));
    }
    (x, y)
}

#[test]
fn attribution_ranks_flipped_labels_first() {
    let (tx, ty) = blobs(100, 1);
    let (qx, qy) = blobs(25, 2);
    let p = PoisonParams {
        fraction: 0.1,
        epochs: 150,
        hidden: Some(vec![32]),
        ..PoisonParams::default()
    };
    let r = poison_check(
        &tx,
        &ty,
        &qx,
        &qy,
        &[10],
        4,
        &p,
        &AttributionParams::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(r.n_flipped, 40);
    let pk = &r.precision_at_k;
    // Chance is 0.1; the surrogate's suspicion should find most of them.
    assert!(
        pk.attribution > 0.6,
        "{pk:?} memorised {}",
        r.flipped_memorised
    );
    assert!(
        r.attribution.surrogate.kendall_tau > 0.3,
        "{:?}",
        r.attribution.surrogate
    );
    assert_eq!(r.attribution.queries.len(), 100);
    assert_eq!(r.attribution.queries[0].top.len(), 5);
}
