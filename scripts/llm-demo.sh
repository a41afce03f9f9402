#!/usr/bin/env bash
# The LLM part of the demo, on the bundled SmolLM2-135M-Instruct: fine-tune an LSR-Adapt adapter
# on the project's date task (short run), serve base + adapter through the OpenAI-compatible API,
# and ask both the same held-out questions with the official `openai` client.
# usage: scripts/llm-demo.sh OUT_DIR [STEPS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-demo-out}/llm"
steps="${2:-60}"
bin="$here/target/release/cloud-expert"
model="$here/models/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$out"
head -n 48 "$here/shared/data/llm/dates/eval.jsonl" > "$out/eval-small.jsonl"

echo "-- fine-tune LSR-Adapt (q,k,v,o,gate,up,down; s=8, r1=r2=2) for $steps steps"
"$bin" finetune --model "$model" --train "$here/shared/data/llm/dates/train.jsonl" \
  --eval "$out/eval-small.jsonl" --eval-base --out "$out/dates-lsr" --targets q,k,v,o,gate,up,down \
  --steps "$steps" --lr 5e-3 --checkpoint-every 0

echo
echo "-- serve SmolLM2 with the adapter as model \"dates\" (OpenAI API on the HTTP port)"
mkdir -p "$out/empty-repo"
"$bin" serve --repo "$out/empty-repo" --addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --llm "$model" --llm-name smollm2 --adapter "dates=$out/dates-lsr" > "$out/serve.log" 2> "$out/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q "^ready on" "$out/serve.log" && break; sleep 0.5; done
http="http://$(sed -n 's/^ready on .* http //p' "$out/serve.log")"
"$here/.venv/bin/python" - "$http" <<'PY'
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="demo")
print("models:", [m.id for m in c.models.list().data])
for q in ["the 3rd of July, 1999", "Nov 21 2042", "14.02.1987 (day.month.year)"]:
    msgs = [{"role": "user", "content": f"Convert to YYYY-MM-DD, nothing else: {q}"}]
    row = [q]
    for model in ("smollm2", "dates"):
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
        row.append(repr(r.choices[0].message.content))
    print(f"{row[0]:32s} base: {row[1]:40s} adapter: {row[2]}")
PY
