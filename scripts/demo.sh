#!/usr/bin/env bash
# The end-to-end demo on the bundled digits data: train weak legacy models, train L2H experts and
# rejectors for them (multi-class and binary), evaluate against the baselines, print the tables.
set -euo pipefail
out="${1:-demo-out}"
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release"
rm -rf "$out" && mkdir -p "$out"
repo="$out/repo"
export RUST_LOG="${RUST_LOG:-warn}"
ce() { "$bin/cloud-expert" "$@"; }

echo "== 1. legacy models (deliberately weak: linear, 60 training samples)"
ce legacy --task multiclass --out "$out/legacy-digits.onnx"
ce legacy --task odd-even --out "$out/legacy-oddeven.onnx"

echo
echo "== 2. multi-class L2H (stage-switching, consistent loss), agreement rejector"
ce train --repo "$repo" --model digits --legacy "$out/legacy-digits.onnx" --rejector-agreement

echo
echo "== 3. binary L2H (surrogate L_S, calibrated alpha) on odd vs even digits, agreement rejector"
ce train --repo "$repo" --model oddeven --task odd-even --legacy "$out/legacy-oddeven.onnx" --rejector-agreement

echo
echo "== 4. ablation: the papers' plain rejector (raw input only, no legacy probabilities)"
ce train --repo "$repo" --model digits-plain --legacy "$out/legacy-digits.onnx"

echo
echo "== 5. the device engine re-evaluates the deployed multi-class pair"
ce eval --repo "$repo" --model digits
"$bin/edge-client" decide --bundle "$repo/digits/1" > "$out/edge-decisions.jsonl"

echo
echo "== 6. live: cloud server + a fleet of edge clients over the test split, with a cloud outage"
ce eval --repo "$repo" --model digits --grid "1,0.25" --predictions-out "$out/offline.jsonl" > /dev/null
python3 "$(dirname "$0")/fleet.py" "$bin" "$repo" digits "$out/legacy-digits.onnx" "$out" 4

echo
if [ "${LLM_DEMO:-1}" != 0 ]; then
  echo "== 7. LLM: fine-tune an LSR-Adapt adapter for SmolLM2-135M and serve it (OpenAI API); LLM_DEMO=0 skips"
  bash "$(dirname "$0")/llm-demo.sh" "$out" "${LLM_DEMO_STEPS:-60}"
  echo
fi
if [ "${ANALYSIS_DEMO:-1}" != 0 ]; then
  echo "== 8. Analysis: SmolLM2 embeds texts of four domains; strata, intrinsic dimension, spectra; ANALYSIS_DEMO=0 skips"
  bash "$(dirname "$0")/analysis-demo.sh" "$out"
  echo
fi
echo "demo outputs in $out:"
echo "  model repository   $repo/<model>/<version>/ (expert, rejector.onnx, legacy.onnx, report.json)"
echo "  curves             $repo/digits/1/curves.svg, $repo/oddeven/1/curves.svg, $repo/digits-plain/1/curves.svg"
echo "  device decisions   $out/edge-decisions.jsonl (offline), $out/edge-<i>.jsonl (live fleet)"
echo "  LLM adapter        $out/llm/dates-lsr/ (adapter_config.json, adapter_model.safetensors, finetune_report.json)"
echo "  analysis reports   $out/analysis/stratify.json, $out/analysis/spectrum.json"
