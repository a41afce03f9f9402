#!/usr/bin/env bash
# Base vs LSR-Adapt vs LoRA (equal bottleneck) on the project's date task with SmolLM2-135M.
# Writes bench-out/finetune/{lsr,lora}/ (adapters + finetune_report.json) and prints a table.
# usage: scripts/finetune-compare.sh [STEPS]   (default 150; about 3.5 s per step on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
steps="${1:-150}"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bin=target/release/cloud-expert
out=bench-out/finetune
mkdir -p "$out"
common=(--model "$model" --train shared/data/llm/dates/train.jsonl --eval shared/data/llm/dates/eval.jsonl
        --targets q,k,v,o,gate,up,down --steps "$steps" --batch 8 --lr 5e-3 --alpha 16
        --eval-every 50 --checkpoint-every 50 --seed 0)
only="${ONLY:-lsr lora}"   # ONLY=lora re-runs one method
for m in $only; do
  case $m in
    lsr) "$bin" finetune "${common[@]}" --method lsr --separation-rank 8 --r1 2 --r2 2 --eval-base --out "$out/lsr" | tee "$out/lsr.log" ;;
    lora) "$bin" finetune "${common[@]}" --method lora --lora-r 4 --out "$out/lora" | tee "$out/lora.log" ;;
  esac
done
python3 - "$out" <<'PY'
import json, sys, re
out = sys.argv[1]
base = re.search(r"base model: eval loss ([0-9.]+), exact match ([0-9.]+)%", open(f"{out}/lsr.log").read())
rows = [("base", None, float(base.group(1)), float(base.group(2)), None)]
for m in ("lsr", "lora"):
    r = json.load(open(f"{out}/{m}/finetune_report.json"))
    step, ev = r["evals"][-1]
    rows.append((m, r["trainable_parameters"], ev["loss"], 100 * ev["accuracy"], r["seconds_per_step"]))
print("| model | trainable parameters | eval loss | exact match | s/step |")
print("|---|---|---|---|---|")
for name, p, loss, acc, t in rows:
    print(f"| {name} | {p if p is not None else '-'} | {loss:.4f} | {acc:.1f}% | {'-' if t is None else f'{t:.2f}'} |")
lsr, lora = rows[1][1], rows[2][1]
print(f"LSR uses {lsr / lora:.1%} of LoRA's parameters at the same bottleneck (r1*r2 = 4 = LoRA r)")
PY
