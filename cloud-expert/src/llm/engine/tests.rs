//! Tests of `engine.rs`.
use super::*;
use crate::llm::model::{KvCache, LlamaConfig};

fn setup() -> (Llama, Arc<Tokenizer>) {
    let tok = Tokenizer::train_byte_level("hello world, the cat sat on the mat", 30);
    let cfg = LlamaConfig {
        max_position_embeddings: 64,
        ..crate::llm::fixture::tiny_config(tok.vocab_size(), 32)
    };
    (
        Llama::random(cfg, 5, tch::Device::Cpu).unwrap(),
        Arc::new(tok),
    )
}

fn greedy_reference(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let _g = tch::no_grad_guard();
    let mut toks: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let l = m
            .forward(
                &Tensor::from_slice(&toks).view([1, -1]),
                &mut KvCache::default(),
                Adapt::None,
            )
            .unwrap();
        let t = l
            .select(1, toks.len() as i64 - 1)
            .argmax(-1, false)
            .int64_value(&[0]);
        out.push(t as u32);
        toks.push(t);
    }
    out
}

fn request(
    prompt: Vec<u32>,
    max_tokens: usize,
) -> (GenRequest, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let req = GenRequest {
        prompt,
        adapter: None,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens,
        stop: vec![],
        ignore_eos: false,
        events: tx,
        arrived: Instant::now(),
    };
    (req, rx)
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (String, Event) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("events end with Done or Error") {
            Event::Text(t) => text.push_str(&t),
            other => return (text, other),
        }
    }
}

#[test]
fn concurrent_greedy_requests_equal_each_sequence_alone_and_limits_hold() {
    // Both paths: libtorch tensors, and the host forward pass of packed weights.
    for host in [false, true] {
        concurrent_requests(host);
    }
}

fn concurrent_requests(host: bool) {
    let (mut m, tok) = setup();
    if host {
        m.set_precision(crate::llm::linear::Precision::F32);
    }
    assert_eq!(m.host_ready(), host);
    let prompts: Vec<Vec<u32>> = ["hello", "the cat sat", "world, the mat", "sat on"]
        .iter()
        .map(|p| tok.encode(p))
        .collect();
    let want: Vec<String> = prompts
        .iter()
        .map(|p| {
            let ids = greedy_reference(&m, p, 6);
            let stop = ids.iter().position(|&t| t == 2).unwrap_or(ids.len());
            tok.decode(&ids[..stop])
        })
        .collect();
    let engine = Engine::start(
        m,
        tok.clone(),
        EngineConfig {
            max_seqs: 2,
            max_queue: 2,
            max_prompt_tokens: 20,
            max_new_tokens: 6,
            threads: 1,
            step_delay: std::time::Duration::ZERO,
        },
    );
    // Four requests, two slots: two wait and join as others finish.
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (req, rx) = request(p.clone(), 6);
            engine.submit(req).unwrap();
            rx
        })
        .collect();
    // A fifth is refused while four are in the system (unless some already finished).
    let (req, _rx) = request(prompts[0].clone(), 6);
    if let Err(e) = engine.submit(req) {
        assert_eq!(e, SubmitError::Full(4));
    }
    for (i, rx) in rxs.into_iter().enumerate() {
        let (text, done) = collect(rx);
        assert_eq!(text, want[i], "request {i} (host path: {host})");
        assert!(
            matches!(done, Event::Done { prompt_tokens, .. } if prompt_tokens == prompts[i].len())
        );
    }
    // Never more than the two slots (how full batches get depends on arrival timing).
    assert!((1..=2).contains(&engine.stats.max_batch.load(Ordering::Relaxed)));
    let (req, _) = request(vec![5; 21], 1);
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::PromptTooLong { got: 21, max: 20 })
    ));
    let (req, _) = request(vec![5; 3], 7);
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::TooManyTokens { .. })
    ));
    let (req, _) = request(vec![], 1);
    assert_eq!(engine.submit(req), Err(SubmitError::EmptyPrompt));
}

#[test]
fn stop_strings_cut_the_text_and_cancelled_requests_free_their_slot() {
    let (m, tok) = setup();
    let prompt = tok.encode("the cat");
    let full = {
        let ids = greedy_reference(&m, &prompt, 12);
        let stop = ids.iter().position(|&t| t == 2).unwrap_or(ids.len());
        tok.decode(&ids[..stop])
    };
    let engine = Engine::start(
        m,
        tok.clone(),
        EngineConfig {
            max_seqs: 1,
            ..Default::default()
        },
    );
    // Stop at the third character of the greedy continuation (if it has one).
    if full.chars().count() >= 4 {
        let stop: String = full.chars().skip(2).take(2).collect();
        let (mut req, rx) = request(prompt.clone(), 12);
        req.stop = vec![stop.clone()];
        engine.submit(req).unwrap();
        let (text, done) = collect(rx);
        assert_eq!(text, full[..full.find(&stop).unwrap()]);
        assert!(matches!(
            done,
            Event::Done {
                finish: FinishReason::Stop,
                ..
            }
        ));
    }
    // A dropped receiver cancels; the single slot is then free for the next request.
    let (req, rx) = request(prompt.clone(), 12);
    drop(rx);
    engine.submit(req).unwrap();
    let (req, rx) = request(prompt.clone(), 3);
    engine.submit(req).unwrap();
    let (_, done) = collect(rx);
    assert!(matches!(done, Event::Done { .. }));
    assert!(engine.stats.cancelled.load(Ordering::Relaxed) >= 1);
    assert_eq!(engine.stats.in_system.load(Ordering::Relaxed), 0);
}
