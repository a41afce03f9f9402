//! `cloud-expert legacy`: trains a deliberately weak legacy classifier (by default a linear
//! softmax regression on a few dozen samples) and exports it to ONNX. Only the demo and the tests
//! use it; the rest of the system treats any legacy ONNX file as a black box.

use crate::config::LegacyArgs;
use crate::error::{io_err, CloudError};
use crate::nets::{normalization_from, Net, NetSpec};
use offload_shared::onnx_build::{Dim, GraphBuilder};
use offload_shared::repository::Arch;
use offload_shared::rng::SplitMix64;
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

/// What the command produced.
#[derive(Debug)]
pub struct LegacyOutcome {
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Samples it was trained on.
    pub trained_on: usize,
}

/// Trains and exports; returns its test accuracy.
pub fn run(a: &LegacyArgs) -> Result<LegacyOutcome, CloudError> {
    let spec = crate::train::dataset_spec(&a.data)?;
    let splits = spec.load_splits()?;
    let arch = Arch::parse(&a.arch).map_err(CloudError::Config)?;
    let mut idx: Vec<usize> = (0..splits.train.len()).collect();
    SplitMix64::new(a.seed).shuffle(&mut idx);
    idx.truncate(a.train_samples.max(1));
    let sub = splits.train.subset(&idx);
    let d = sub.feature_len();
    tch::manual_seed(a.seed as i64);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let net = Net::new(
        &vs.root(),
        NetSpec {
            arch,
            input_shape: sub.sample_shape().to_vec(),
            extra_inputs: 0,
            out_dim: sub.num_classes(),
            norm: normalization_from(sub.features(), d),
        },
    )
    .map_err(CloudError::Config)?;
    let x = Tensor::from_slice(sub.features()).view([sub.len() as i64, d as i64]);
    let y = Tensor::from_slice(&sub.labels().iter().map(|&l| l as i64).collect::<Vec<_>>());
    let mut opt = nn::Adam {
        wd: 1e-3,
        ..Default::default()
    }
    .build(&vs, 1e-2)?;
    for _ in 0..a.epochs {
        let loss = net.forward(&x, None).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let test = &splits.test;
    let tx = Tensor::from_slice(test.features()).view([test.len() as i64, d as i64]);
    let ty = Tensor::from_slice(&test.labels().iter().map(|&l| l as i64).collect::<Vec<_>>());
    let acc = tch::no_grad(|| {
        net.forward(&tx, None)
            .argmax(-1, false)
            .eq_tensor(&ty)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
    })
    .double_value(&[]);
    let mut g = GraphBuilder::new();
    let mut dims = vec![Dim::Batch];
    dims.extend(sub.sample_shape().iter().map(|&v| Dim::Fixed(v)));
    let input = g.input("input", &dims);
    let logits = net.export(&mut g, &input, None)?;
    g.output(
        &logits,
        "logits",
        &[Dim::Batch, Dim::Fixed(sub.num_classes())],
    );
    g.metadata("note", "deliberately weak legacy model for demos and tests");
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::write(&a.out, g.finish("legacy")).map_err(io_err(&a.out))?;
    Ok(LegacyOutcome {
        test_accuracy: acc,
        trained_on: sub.len(),
    })
}
