//! `edge-client run`: answers every input of a file in order, writing one JSON line per input
//! and a summary at the end.

use crate::edge::Edge;
use crate::stats::Summary;
use offload_shared::dataset::{DataSource, SplitSpec};
use std::io::Write;
use std::sync::Arc;

/// Which inputs: `digits` (whole set), `digits:test|train|val` (a split with the default
/// fractions and `split_seed`), or any data source (`csv:PATH`, `npy:X,Y`, ...).
pub fn load_inputs(
    spec: &str,
    split_seed: u64,
) -> Result<offload_shared::dataset::Dataset, String> {
    let (src, part) = match spec.rsplit_once(':') {
        Some((s, p @ ("test" | "train" | "val"))) => (s, Some(p)),
        _ => (spec, None),
    };
    let data = DataSource::parse(src, None)
        .map_err(|e| e.to_string())?
        .load()
        .map_err(|e| e.to_string())?;
    let Some(part) = part else { return Ok(data) };
    let s = SplitSpec {
        seed: split_seed,
        ..Default::default()
    }
    .split(&data)
    .map_err(|e| e.to_string())?;
    Ok(match part {
        "test" => s.test,
        "train" => s.train,
        _ => s.val,
    })
}

/// Answers every input, pausing `interval` between inputs; flushes each line as it is written
/// (so a reader sees progress live); returns the summary.
pub async fn run(
    edge: Arc<Edge>,
    data: &offload_shared::dataset::Dataset,
    out: &mut dyn Write,
    interval: std::time::Duration,
) -> Result<Summary, String> {
    if data.feature_len() != edge.feature_len() {
        return Err(format!(
            "inputs have {} values, the legacy model takes {}",
            data.feature_len(),
            edge.feature_len()
        ));
    }
    for i in 0..data.len() {
        let label = data.labels()[i];
        let a = edge
            .answer(i.to_string(), data.row(i).to_vec(), Some(label))
            .await
            .map_err(|e| e.to_string())?;
        let mut line = serde_json::to_value(&a).map_err(|e| e.to_string())?;
        line["true_label"] = label.into();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| e.to_string())?;
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    Ok(edge.stats())
}
