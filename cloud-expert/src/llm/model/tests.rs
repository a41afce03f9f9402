//! Tests of `model.rs`.
use super::*;
use crate::llm::lsr::Init;

fn tiny(tied: bool, kv_heads: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: tied,
        max_position_embeddings: 64,
    }
}

#[test]
fn cached_decoding_equals_the_full_forward_pass() {
    let _g = tch::no_grad_guard();
    for (tied, kv) in [(true, 2), (false, 4), (true, 1)] {
        let m = Llama::random(tiny(tied, kv), 3, Device::Cpu).unwrap();
        let tokens = Tensor::from_slice(&[1i64, 7, 3, 9, 4, 22, 5, 8, 11, 2]).view([2, 5]);
        let full = m
            .forward(&tokens, &mut KvCache::default(), Adapt::None)
            .unwrap();
        let mut cache = KvCache::default();
        let mut steps = vec![m
            .forward(&tokens.narrow(1, 0, 2), &mut cache, Adapt::None)
            .unwrap()];
        for i in 2..5 {
            steps.push(
                m.forward(&tokens.narrow(1, i, 1), &mut cache, Adapt::None)
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), 5);
        let inc = Tensor::cat(&steps, 1);
        let d = (&full - &inc).abs().max().double_value(&[]);
        assert!(d < 1e-5, "tied={tied} kv={kv}: {d}");
    }
}

#[test]
fn future_tokens_do_not_change_past_logits_and_bad_weights_are_named() {
    let _g = tch::no_grad_guard();
    let m = Llama::random(tiny(true, 2), 5, Device::Cpu).unwrap();
    let a = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
    let b = Tensor::from_slice(&[1i64, 2, 3, 40]).view([1, 4]);
    let la = m.forward(&a, &mut KvCache::default(), Adapt::None).unwrap();
    let lb = m.forward(&b, &mut KvCache::default(), Adapt::None).unwrap();
    let past = (la.narrow(1, 0, 3) - lb.narrow(1, 0, 3))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(past, 0.0);
    let last = (la.narrow(1, 3, 1) - lb.narrow(1, 3, 1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(last > 0.0);
    let mut w: HashMap<String, Tensor> = m
        .weights()
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    w.remove("model.layers.1.mlp.up_proj.weight");
    let err = Llama::from_weights(tiny(true, 2), w, Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    let bad = LlamaConfig {
        num_key_value_heads: 3,
        ..tiny(true, 2)
    };
    assert!(Llama::random(bad, 0, Device::Cpu).is_err());
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
#[allow(clippy::needless_range_loop)]
fn mixed_adapter_decode_steps_equal_each_sequence_decoded_alone() {
    let _g = tch::no_grad_guard();
    let cfg = LlamaConfig {
        hidden_size: 36,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        ..tiny(true, 2)
    };
    let mut m = Llama::random(cfg.clone(), 11, Device::Cpu).unwrap();
    // The serving layout: float32 kernel weights with q/k/v and gate/up stacked.
    m.set_precision(Precision::F32);
    let lsr = Adapter::new_lsr(
        "t",
        &cfg,
        &Module::ALL,
        2,
        2,
        2,
        8.0,
        Init::SmallRandom,
        Device::Cpu,
    )
    .unwrap()
    .detached();
    let lora = Adapter::new_lora(
        "t",
        &cfg,
        &[Module::QProj, Module::VProj],
        4,
        8.0,
        Device::Cpu,
    )
    .unwrap();
    // LoRA starts at B = 0; give it a visible update.
    let lora = {
        let d = lora.detached();
        for u in d.updates.values() {
            if let crate::llm::adapter::Update::Lora(x) = u {
                let _ = x.b.shallow_clone().normal_(0.0, 0.05);
            }
        }
        d
    };
    let prompts: [&[i64]; 3] = [&[1, 2, 3, 4, 5], &[7, 8], &[9, 10, 11]];
    let adapters = [Some(&lsr), None, Some(&lora)];
    // Reference: each sequence alone through `forward` with its adapter.
    let steps = 4;
    let mut want = Vec::new();
    for (p, a) in prompts.iter().zip(adapters) {
        let adapt = a.map_or(Adapt::None, Adapt::All);
        let mut cache = KvCache::default();
        let mut toks = p.to_vec();
        let mut rows = Vec::new();
        let mut last = m
            .forward(&Tensor::from_slice(&toks).view([1, -1]), &mut cache, adapt)
            .unwrap()
            .select(1, toks.len() as i64 - 1);
        for _ in 0..steps {
            rows.push(last.shallow_clone());
            let next = last.argmax(-1, false).int64_value(&[0]);
            toks.push(next);
            last = m
                .forward(&Tensor::from_slice(&[next]).view([1, 1]), &mut cache, adapt)
                .unwrap()
                .select(1, 0);
        }
        want.push(rows);
    }
    // Serving path: slots 2, 0, 1 (not consecutive), prefill then mixed decode steps.
    let slots = [2i64, 0, 1];
    let mut kv = SlotKv::new(cfg.num_hidden_layers, 3, 2, cfg.head_dim(), 64, Device::Cpu);
    let mut last: Vec<Tensor> = prompts
        .iter()
        .zip(adapters)
        .zip(slots)
        .map(|((p, a), s)| m.prefill(p, s, &mut kv, a).unwrap())
        .collect();
    let mut pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let groups = [
        (&lsr, Tensor::from_slice(&[0i64])),
        (&lora, Tensor::from_slice(&[2i64])),
    ];
    for step in 0..steps {
        for i in 0..3 {
            let d = max_diff(&last[i], &want[i][step].squeeze());
            assert!(d < 1e-4, "sequence {i} step {step}: {d}");
        }
        let toks: Vec<i64> = last
            .iter()
            .map(|l| l.argmax(-1, false).int64_value(&[]))
            .collect();
        let out = m
            .decode(&toks, &slots, &pos, &mut kv, Adapt::Rows(&groups))
            .unwrap();
        last = (0..3).map(|i| out.get(i)).collect();
        pos.iter_mut().for_each(|p| *p += 1);
    }
    assert!(kv.capacity() >= 9);
    // Host path: the three prompts prefilled in one batch, then mixed decode steps.
    assert!(m.host_ready());
    let hslots = [2usize, 0, 1];
    let mut hkv = m.host_kv(3);
    let (mut toks, mut hs, mut hp, mut ends) = (vec![], vec![], vec![], vec![]);
    let (mut lsr_rows, mut lora_rows) = (vec![], vec![]);
    for (i, p) in prompts.iter().enumerate() {
        for (j, &t) in p.iter().enumerate() {
            [&mut lsr_rows, &mut vec![], &mut lora_rows][i].push(toks.len());
            toks.push(t);
            hs.push(hslots[i]);
            hp.push(j);
        }
        ends.push(toks.len() - 1);
    }
    let g0 = [(&lsr, lsr_rows), (&lora, lora_rows)];
    fn batch<'a>(
        tokens: &'a [i64],
        slots: &'a [usize],
        pos: &'a [usize],
        groups: &'a [(&'a Adapter, Vec<usize>)],
    ) -> crate::llm::host::Rows<'a> {
        crate::llm::host::Rows {
            tokens,
            slots,
            pos,
            groups,
        }
    }
    let v = cfg.vocab_size;
    let mut out = m
        .forward_host(&batch(&toks, &hs, &hp, &g0), &mut hkv, &ends)
        .unwrap();
    let mut hpos: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let g1 = [(&lsr, vec![0usize]), (&lora, vec![2usize])];
    for step in 0..steps {
        let mut next = vec![];
        for i in 0..3 {
            let got = Tensor::from_slice(&out[i * v..(i + 1) * v]);
            let d = max_diff(&got, &want[i][step].squeeze());
            assert!(d < 1e-4, "host: sequence {i} step {step}: {d}");
            next.push(got.argmax(-1, false).int64_value(&[]));
        }
        out = m
            .forward_host(&batch(&next, &hslots, &hpos, &g1), &mut hkv, &[0, 1, 2])
            .unwrap();
        hpos.iter_mut().for_each(|p| *p += 1);
    }
    // A position past the cached ones is refused before anything changes.
    let gap = m.forward_host(&batch(&[1], &[0], &[hpos[1] + 1], &[]), &mut hkv, &[0]);
    assert!(matches!(gap, Err(ModelError::Config(e)) if e.contains("position")));
    // Merging the adapter into the weights gives the adapter's logits.
    let merged = m.merged(&lsr).unwrap();
    let t = Tensor::from_slice(prompts[0]).view([1, -1]);
    let a = merged
        .forward(&t, &mut KvCache::default(), Adapt::None)
        .unwrap();
    let b = m
        .forward(&t, &mut KvCache::default(), Adapt::All(&lsr))
        .unwrap();
    assert!(max_diff(&a, &b) < 1e-4);
    let e = m
        .forward(&t, &mut KvCache::default(), Adapt::All(&lsr.expanded()))
        .unwrap();
    assert!(max_diff(&e, &b) < 1e-4);
}

#[test]
fn low_precision_weights_keep_the_greedy_tokens_close() {
    let _g = tch::no_grad_guard();
    let mut m = Llama::random(tiny(true, 2), 4, Device::Cpu).unwrap();
    let t = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, -1]);
    let want = m.forward(&t, &mut KvCache::default(), Adapt::None).unwrap();
    let f32_bytes = m.bytes_per_step();
    for p in [Precision::Bf16, Precision::Int8] {
        m.set_precision(p);
        let got = m.forward(&t, &mut KvCache::default(), Adapt::None).unwrap();
        let rel = max_diff(&got, &want) / want.abs().max().double_value(&[]);
        assert!(rel < 0.05, "{p:?}: {rel}");
        assert!(m.bytes_per_step() < f32_bytes / 2 + 4096, "{p:?}");
    }
}
