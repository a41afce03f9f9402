use cloud_expert::llm::{linear::Precision, load::load, model::SlotKv};
fn main() {
    let _g = tch::no_grad_guard();
    tch::set_num_threads(2);
    let mut l = load(
        std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        tch::Device::Cpu,
    )
    .unwrap();
    for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
        l.model.set_precision(p);
        let m = &l.model;
        for b in [1usize, 8] {
            let mut kv = SlotKv::new(30, b, 3, 64, 2048, tch::Device::Cpu);
            let prompt: Vec<i64> = l
                .tokenizer
                .encode("The capital of France is")
                .iter()
                .map(|&x| x as i64)
                .collect();
            let t0 = std::time::Instant::now();
            for s in 0..b {
                m.prefill(&prompt, s as i64, &mut kv, None).unwrap();
            }
            let ttft = t0.elapsed();
            let slots: Vec<i64> = (0..b as i64).collect();
            let mut pos = vec![prompt.len() as i64; b];
            let toks = vec![42i64; b];
            let n = 40;
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                let out = m
                    .decode(
                        &toks,
                        &slots,
                        &pos,
                        &mut kv,
                        cloud_expert::llm::model::Adapt::None,
                    )
                    .unwrap();
                let _ = out.argmax(-1, false);
                pos.iter_mut().for_each(|p| *p += 1);
            }
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "{p:?} b={b}: prefill {:.1} ms/seq, {:.1} tok/s ({:.1} ms/step), bytes/step {} MB",
                ttft.as_secs_f64() * 1e3 / b as f64,
                (n * b) as f64 / dt,
                dt * 1e3 / n as f64,
                m.bytes_per_step() / 1_000_000
            );
        }
    }
}
