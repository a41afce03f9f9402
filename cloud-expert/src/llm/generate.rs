//! Offline batched greedy generation (evaluation and benchmarks): prompts run `batch` at a time
//! through prefill and shared decode steps, one adapter (or none) for all of them.

use super::adapter::Adapter;
use super::kv::SlotKv;
use super::model::{Adapt, Llama, ModelError};

/// Greedy continuations of `prompts` (at most `max_new` tokens each, ending before the first
/// token in `stop_ids`).
pub fn greedy(
    model: &Llama,
    adapter: Option<&Adapter>,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    batch: usize,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let _g = tch::no_grad_guard();
    let c = &model.cfg;
    let batch = batch.max(1);
    let mut kv = SlotKv::new(
        c.num_hidden_layers,
        batch,
        c.num_key_value_heads,
        c.head_dim(),
        c.max_position_embeddings,
        tch::Device::Cpu,
    );
    let adapt = adapter.map_or(Adapt::None, Adapt::All);
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch) {
        let mut last = Vec::new();
        let mut pos = Vec::new();
        for (i, p) in chunk.iter().enumerate() {
            let ids: Vec<i64> = p.iter().map(|&t| t as i64).collect();
            let l = model.prefill(&ids, i as i64, &mut kv, adapter)?;
            last.push(l.argmax(-1, false).int64_value(&[]) as u32);
            pos.push(ids.len() as i64);
        }
        let mut gen: Vec<Vec<u32>> = vec![Vec::new(); chunk.len()];
        let mut done = vec![false; chunk.len()];
        for _ in 0..max_new {
            for i in 0..chunk.len() {
                if !done[i] {
                    if stop_ids.contains(&last[i]) {
                        done[i] = true;
                    } else {
                        gen[i].push(last[i]);
                        done[i] = gen[i].len() >= max_new;
                    }
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let toks: Vec<i64> = last.iter().map(|&t| t as i64).collect();
            let slots: Vec<i64> = (0..chunk.len() as i64).collect();
            let logits = model.decode(&toks, &slots, &pos, &mut kv, adapt)?;
            let next: Vec<i64> = Vec::try_from(logits.argmax(-1, false))?;
            last = next.into_iter().map(|t| t as u32).collect();
            pos.iter_mut().for_each(|p| *p += 1);
        }
        out.extend(gen);
    }
    Ok(out)
}
