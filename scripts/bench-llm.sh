#!/usr/bin/env bash
# LLM generation benchmark: transformers (reference) then cloud-expert's engine, same model,
# same prompt, same machine, one after the other. Prints the tables; JSON in bench-out/llm/.
# usage: scripts/bench-llm.sh [TOKENS]   (default 64)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
tokens="${1:-64}"
out=bench-out/llm
mkdir -p "$out"
model_dir=models
model_file=SmolLM2-135M-Instruct.Q4_1.gguf
HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_transformers.py "$model_dir" "$model_file" "$tokens" 2 "$out/transformers.json" 2>/dev/null
target/release/cloud-expert bench-llm --model "$model_dir/$model_file" --tokens "$tokens" \
  --reference "$out/transformers.json" --json "$out/cloud-expert.json"
echo
echo "offload-kernels on one SmolLM2 decoder step (all 121 matrices), 2 threads:"
cargo run --quiet --release -p offload-kernels --example bench 2
