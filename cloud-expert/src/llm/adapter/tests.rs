//! Tests of `adapter.rs`.
use super::*;

fn cfg() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 40,
        hidden_size: 36,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
        max_position_embeddings: 32,
    }
}

#[test]
fn adapters_round_trip_through_peft_directories_and_check_their_base() {
    let _g = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::randn([3, 36], (Kind::Float, Device::Cpu));
    let lsr = Adapter::new_lsr(
        "tiny",
        &cfg(),
        &[Module::QProj, Module::DownProj],
        2,
        2,
        2,
        8.0,
        Init::SmallRandom,
        Device::Cpu,
    )
    .unwrap();
    let lora = Adapter::new_lora("tiny", &cfg(), &Module::ALL, 4, 8.0, Device::Cpu).unwrap();
    for (name, a) in [("lsr", &lsr), ("lora", &lora)] {
        a.save(&dir.path().join(name)).unwrap();
        let b = Adapter::load(&dir.path().join(name), Device::Cpu).unwrap();
        assert_eq!(b.config, a.config);
        assert_eq!(b.parameters(), a.parameters());
        b.check_fits(&cfg()).unwrap();
        let (ua, ub) = (
            a.update(1, Module::QProj).unwrap(),
            b.update(1, Module::QProj).unwrap(),
        );
        let d = (ua.delta(&x) - ub.delta(&x)).abs().max().double_value(&[]);
        assert_eq!(d, 0.0, "{name}");
        let e = ub.expanded().delta(&x);
        assert!((e - ua.delta(&x)).abs().max().double_value(&[]) < 1e-6);
    }
    // LSR's parameter count for q (36x36 = 6x6 each side) and down (36 x 48 = 6x6, 6x8).
    assert_eq!(
        lsr.parameters(),
        2 * (2 * 2 * (6 + 6) * 2 + 2 * (2 * 6 + 2 * 8 + 2 * 6 + 2 * 6))
    );
    let other = LlamaConfig {
        hidden_size: 48,
        num_attention_heads: 6,
        ..cfg()
    };
    let e = lsr.check_fits(&other).unwrap_err().to_string();
    assert!(
        e.contains("does not fit") && e.contains("hidden_size: 36"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("lora/adapter_model.safetensors")).unwrap();
    let e = Adapter::load(&dir.path().join("lora"), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("adapter_model.safetensors"), "{e}");
    assert_eq!(Module::parse("q"), Some(Module::QProj));
    assert_eq!(Module::parse("down_proj"), Some(Module::DownProj));
    assert_eq!(Module::parse("x"), None);
}
