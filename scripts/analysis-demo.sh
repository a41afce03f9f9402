#!/usr/bin/env bash
# The analysis demo: the bundled SmolLM2 embeds 160 short texts from four domains (code,
# dialogue, arithmetic, legal-style prose; data/analysis-demo/texts.jsonl), then the server
# stratifies them (mixture of LISTA experts + KMeans strata, purity against the domains),
# estimates their intrinsic dimension, and reports the spectra of the LLM's layers.
# usage: scripts/analysis-demo.sh OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-demo-out}/analysis"
bin="$here/target/release/cloud-expert"
model="$here/models/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$out/empty-repo"
"$bin" serve --repo "$out/empty-repo" --addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --llm "$model" --llm-name smollm2 > "$out/serve.log" 2> "$out/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q "^ready on" "$out/serve.log" && break; sleep 0.5; done
http="http://$(sed -n 's/^ready on .* http //p' "$out/serve.log")"
"$here/.venv/bin/python" "$here/scripts/analysis_demo.py" "$http" "$here/data/analysis-demo/texts.jsonl" "$out"
