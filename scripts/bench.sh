#!/usr/bin/env bash
# The benchmark entry point (`make bench`): training throughput, device decision latency,
# offload round trip at concurrency 1/16/64, and dynamic batching on versus off, for the digits
# expert and for a compute-bound expert. Prints the figures; writes nothing outside $1.
set -euo pipefail
out="${1:-bench-out}"
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release"
export RUST_LOG="${RUST_LOG:-warn}"
rm -rf "$out" && mkdir -p "$out"
echo "== training throughput and m + r latency (cloud-expert bench)"
"$bin/cloud-expert" bench
"$bin/cloud-expert" legacy --out "$out/legacy.onnx" > /dev/null
"$bin/cloud-expert" train --repo "$out/repo" --legacy "$out/legacy.onnx" --rejector-agreement --grid "1,0.25" --no-progress > /dev/null
echo
echo "== device decision latency (edge-client bench, digits bundle)"
"$bin/edge-client" bench --bundle "$out/repo/digits/1"
echo
echo "== serving, digits expert (mlp:256,128)"
"$bin/cloud-expert" bench-serve --repo "$out/repo"
"$bin/cloud-expert" train --repo "$out/big" --legacy "$out/legacy.onnx" --expert-arch mlp:2048,2048 --epochs 2 --grid "1,0.25" --no-progress > /dev/null
echo
echo "== serving, compute-bound expert (mlp:2048,2048, 4.3 M parameters)"
"$bin/cloud-expert" bench-serve --repo "$out/big"
echo
echo "== load: 32 simulated devices (own connections), 128 requests in flight, 5 s per protocol"
"$bin/cloud-expert" serve --repo "$out/repo" --addr 127.0.0.1:0 --http-addr off > "$out/serve.out" 2> "$out/serve.log" &
serve_pid=$!
for _ in $(seq 1 100); do grep -q "^ready on" "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
url="http://$(sed -n 's/^ready on \([^ ]*\).*/\1/p' "$out/serve.out")"
for proto in v2 offload; do
  r=$("$bin/loadgen" --url "$url" --protocol "$proto" --devices 32 --concurrency 128 --seconds 5)
  python3 - "$r" <<'PY'
import json, sys
v = json.loads(sys.argv[1].splitlines()[-1])
print(f"  {v['protocol']:8} {v['rps']:8.0f} req/s  p50 {v['p50_us']/1000:.2f} ms  p99 {v['p99_us']/1000:.2f} ms"
      f"  p999 {v['p999_us']/1000:.2f} ms  errors {sum(v['errors'].values())}")
PY
done
echo "  server peak RSS under load: $(awk '/VmHWM/ {print $2, $3}' /proc/$serve_pid/status)"
kill $serve_pid; wait $serve_pid 2>/dev/null || true
echo
echo "== binary sizes (stripped)"
strip -o "$out/cloud-expert.stripped" "$bin/cloud-expert"
echo "  cloud-expert (release, links libtorch dynamically): $(du -h "$out/cloud-expert.stripped" | cut -f1)"
edge="$bin/../edge/edge-client"
echo "  edge-client (profile edge: opt-level s, fat LTO, panic=abort, stripped): $(du -h "$edge" | cut -f1)"
echo "  edge-client decision latency with the edge profile:"
"$edge" bench --bundle "$out/repo/digits/1"
/usr/bin/time -f "  edge-client peak RSS deciding the 1,797 digits: %M KiB" "$edge" decide --bundle "$out/repo/digits/1" > /dev/null 2> "$out/rss.txt" || true
tail -1 "$out/rss.txt"
