#!/usr/bin/env bash
# Side by side with a peer server (`make bench-peer`, also run by `make bench`): the same expert
# (same weights, same version directory) served by MLServer 1.7.1 (PyPI, its own virtualenv,
# custom runtime scripts/mlserver_expert) and by `cloud-expert serve`, both driven by the same
# load generator (target/release/loadgen) over the same protocol (Open Inference Protocol v2
# gRPC, batch-1 ModelInfer requests) on loopback, in one run. Prints throughput and p50/p99 at
# concurrency 1, 16 and 64 with the ratios.
#   usage: bench-peer.sh OUT_DIR [SECONDS_PER_POINT]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-bench-out}"
secs="${2:-5}"
bin="$root/target/release"
venv="$root/.venv-mlserver"
export RUST_LOG="${RUST_LOG:-warn}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bash "$root/scripts/setup-mlserver.sh" "$venv" > /dev/null
if [ ! -f "$out/repo/digits/1/expert.safetensors" ]; then
  "$bin/cloud-expert" legacy --out "$out/legacy.onnx" > /dev/null
  "$bin/cloud-expert" train --repo "$out/repo" --legacy "$out/legacy.onnx" --no-progress > /dev/null
fi
version_dir="$out/repo/digits/1"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ml_http=$(free_port); ml_grpc=$(free_port)
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
bash "$root/scripts/start-mlserver.sh" "$venv" "$version_dir" digits "$ml_http" "$ml_grpc" "$work/mlserver" > "$work/mlserver.log" 2>&1 &
pids+=($!)
"$bin/cloud-expert" serve --repo "$out/repo" --addr 127.0.0.1:0 --http-addr off > "$work/cloud.out" 2> "$work/cloud.log" &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q "^ready on" "$work/cloud.out" 2>/dev/null && \
    curl -sf "http://127.0.0.1:$ml_http/v2/models/digits/ready" > /dev/null 2>&1 && break
  sleep 0.1
done
ours="http://$(sed -n 's/^ready on \([^ ]*\).*/\1/p' "$work/cloud.out")"
peer="http://127.0.0.1:$ml_grpc"
curl -sf "http://127.0.0.1:$ml_http/v2/models/digits/ready" > /dev/null || { cat "$work/mlserver.log"; exit 1; }
echo "peer comparison: digits expert ($(python3 -c "import json;a=json.load(open('$version_dir/expert.json'))['arch'];print(a['type'], a.get('hidden', ''))")), v2 gRPC ModelInfer, batch-1 requests, ${secs} s per point"
"$bin/loadgen" --url "$ours" --compare "$peer" --seconds 0.2 --concurrency 1 --devices 1 > "$work/compare.json"
python3 - "$work/compare.json" <<'PY'
import json, sys
v = json.loads(open(sys.argv[1]).read().splitlines()[0])
print(f"  same weights: max |p_ours - p_mlserver| over {v['inputs']} inputs = {v['max_abs_diff']:.2e}")
PY
printf "  %-11s | %-30s | %-30s | %s\n" concurrency "MLServer 1.7.1 req/s p50 p99" "cloud-expert req/s p50 p99" "throughput ratio, p99 ratio"
for c in 1 16 64; do
  devices=$(( c < 16 ? c : 16 ))
  m=$("$bin/loadgen" --url "$peer" --concurrency "$c" --devices "$devices" --seconds "$secs")
  o=$("$bin/loadgen" --url "$ours" --concurrency "$c" --devices "$devices" --seconds "$secs")
  python3 - "$c" "$m" "$o" <<'PY'
import json, sys
c, m, o = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def cell(v):
    err = sum(v["errors"].values())
    return f"{v['rps']:8.0f} {v['p50_us']/1000:7.2f} ms {v['p99_us']/1000:7.2f} ms" + (f" ({err} errors)" if err else "")
print(f"  {c:>11} | {cell(m):30} | {cell(o):30} | {o['rps']/max(m['rps'],1e-9):6.1f}x, p99 {m['p99_us']/max(o['p99_us'],1):5.1f}x lower")
PY
done
