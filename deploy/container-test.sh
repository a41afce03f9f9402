#!/usr/bin/env bash
# `make container-test`: builds the runtime images with podman from a locally made Debian base
# and the binaries built on the host, starts the cloud container on loopback, has the host's edge
# client (and one edge container) offload to it and checks every answer against the offline
# evaluation of the same pair, checks health, metrics and a clean SIGTERM stop, then removes it.
# Needs root, podman and debootstrap (Debian: apt-get install podman debootstrap runc).
# usage: deploy/container-test.sh   (expects target/release/cloud-expert, target/edge/edge-client)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CONTAINERS_CONF="$root/deploy/podman/containers.conf"
base="localhost/offload-debian:bookworm"
work="$root/target/container"
cloud_bin="$root/target/release/cloud-expert"
edge_bin="$root/target/edge/edge-client"
name="cloud-expert-test-$$"
for tool in podman debootstrap; do
  command -v "$tool" > /dev/null || { echo "container-test: $tool is not installed (apt-get install podman debootstrap runc)" >&2; exit 1; }
done
for b in "$cloud_bin" "$edge_bin"; do
  [ -x "$b" ] || { echo "container-test: $b is missing (make container-test builds it)" >&2; exit 1; }
done
export RUST_LOG=warn
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
compose=("$root/.venv/bin/podman-compose" -p "offload-test-$$" -f deploy/compose/compose.yaml)
cleanup() {
  podman rm -f "$name" > /dev/null 2>&1 || true
  "${compose[@]}" down -v > /dev/null 2>&1 || true
}
trap cleanup EXIT
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "1. base image (debootstrap, no registry)"
bash deploy/base-image.sh "$base"

step "2. runtime images from the Dockerfiles (BINARIES=host: the host's binaries)"
rm -rf "$work" && mkdir -p "$work/cloud" "$work/edge/dist/bin"
bash deploy/collect-libs.sh "$cloud_bin" "$work/cloud/dist"
cp "$edge_bin" "$work/edge/dist/bin/"
build() {
  podman build --quiet --format docker --target runtime --build-arg BINARIES=host --build-arg BASE_IMAGE="$base" \
    -f "$1" -t "$2" "$3" > /dev/null
  echo "built $2: $(podman image inspect --format '{{.Size}}' "$2" | numfmt --to=iec)"
}
build deploy/cloud-expert/Dockerfile localhost/cloud-expert:test "$work/cloud"
build deploy/edge-client/Dockerfile localhost/edge-client:test "$work/edge"
user=$(podman image inspect --format '{{.Config.User}}' localhost/cloud-expert:test)
[ "$user" = "10001:10001" ] || { echo "cloud image runs as '$user', not the unprivileged user" >&2; exit 1; }

step "3. a model repository trained on the host"
repo="$work/repo"
"$cloud_bin" legacy --task multiclass --out "$work/legacy.onnx" > /dev/null
"$cloud_bin" train --repo "$repo" --model digits --legacy "$work/legacy.onnx" --epochs 40 > /dev/null
"$cloud_bin" eval --repo "$repo" --model digits --predictions-out "$work/offline.jsonl" > /dev/null
chmod -R a+rX "$repo"

step "4. the cloud container (host network, loopback only; the repository mounted read-only)"
grpc=$(free_port); http=$(free_port); health=$(free_port)
podman run -d --name "$name" --network host -v "$repo:/models:ro" \
  -e CLOUD_EXPERT_ADDR="127.0.0.1:$grpc" -e CLOUD_EXPERT_HTTP_ADDR="127.0.0.1:$http" \
  -e CLOUD_EXPERT_HEALTH_ADDR="127.0.0.1:$health" -e CLOUD_EXPERT_GRACE_SECS=5 \
  localhost/cloud-expert:test > /dev/null
for _ in $(seq 1 120); do
  podman healthcheck run "$name" > /dev/null 2>&1 && break
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] \
    || { podman logs "$name" >&2; echo "the cloud container exited" >&2; exit 1; }
  sleep 0.5
done
podman healthcheck run "$name" > /dev/null || { podman logs "$name" >&2; echo "never healthy" >&2; exit 1; }
echo "healthy after $(( $(date +%s) - t0 ))s of the test"

step "5. the host's edge client offloads to the container"
"$edge_bin" run --cloud "http://127.0.0.1:$grpc" --legacy "$work/legacy.onnx" --model digits \
  --input digits:test --deadline-ms 2000 --telemetry-interval-secs 0 --out "$work/edge-host.jsonl" 2> "$work/edge-host.log"
step "6. an edge container offloads to it too"
podman run --rm --network host -v "$work/legacy.onnx:/etc/edge/legacy.onnx:ro" localhost/edge-client:test \
  run --cloud "http://127.0.0.1:$grpc" --legacy /etc/edge/legacy.onnx --model digits \
  --input digits:test --deadline-ms 2000 --device-id edge-container > "$work/edge-container.jsonl" 2> "$work/edge-container.log"
python3 deploy/check-answers.py "$work/offline.jsonl" "$work/edge-host.jsonl" "$work/edge-container.jsonl"

step "7. metrics"
metrics=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$http/metrics').read().decode())")
grep -E '^cloud_requests_total\{.*status="ok"' <<< "$metrics" | head -3
grep -q '^cloud_requests_total{' <<< "$metrics" || { echo "no request counts in /metrics" >&2; exit 1; }
# The edge container reported its answers through Telemetry (the host's client did not).
fleet=$(awk '/^fleet_answers_total\{/ {s += $2} END {print s + 0}' <<< "$metrics")
echo "fleet_answers_total: $fleet"
[ "$fleet" = 359 ] || { echo "fleet telemetry counted $fleet answers, not 359" >&2; exit 1; }

step "8. SIGTERM stop (podman stop): drains and exits 0"
podman stop -t 15 "$name" > /dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
podman logs "$name" 2>&1 | tail -2
[ "$code" = 0 ] || { echo "the cloud container exited with $code" >&2; exit 1; }
step "9. Compose: bootstrap, cloud and three simulated devices (Prometheus's image needs a registry)"
export CLOUD_IMAGE=localhost/cloud-expert:test DEVICE_IMAGE=localhost/edge-client:test
CLOUD_GRPC_PORT=$(free_port); CLOUD_HTTP_PORT=$(free_port); export CLOUD_GRPC_PORT CLOUD_HTTP_PORT
"${compose[@]}" up -d --no-build bootstrap cloud edge-1 edge-2 edge-3 > "$work/compose.log" 2>&1 \
  || { cat "$work/compose.log" >&2; exit 1; }
# Each device reports its answers through Telemetry as it goes: wait for one full pass of all
# three (3 x 359 answers) to reach the cloud's /metrics through the published port.
fleet_kind() { awk -v k="kind=\"$1\"" '/^fleet_answers_total\{/ && index($0, k) {s += $2} END {print s + 0}' <<< "$2"; }
for _ in $(seq 1 240); do
  m=$(curl -s "http://127.0.0.1:$CLOUD_HTTP_PORT/metrics" || true)
  total=$(awk '/^fleet_answers_total\{/ {s += $2} END {print s + 0}' <<< "$m")
  [ "$total" -ge 1077 ] && break
  sleep 0.5
done
echo "compose fleet: $total answers, $(fleet_kind offloaded "$m") offloaded, $(fleet_kind fallback "$m") fallbacks"
[ "$total" -ge 1077 ] || { "${compose[@]}" logs > "$work/compose-logs.txt" 2>&1; tail -20 "$work/compose-logs.txt" >&2; echo "the simulated devices did not get through the test split" >&2; exit 1; }
[ "$(fleet_kind offloaded "$m")" -gt 0 ] && [ "$(fleet_kind fallback "$m")" = 0 ] \
  || { echo "compose devices did not offload cleanly" >&2; exit 1; }
"${compose[@]}" down -v > /dev/null 2>&1

# Rebuilds leave the previous images and the offline `host` stage untagged: drop those (podman
# image prune removes every untagged image of this machine's store).
podman image prune -f > /dev/null 2>&1 || true
echo "container test passed in $(( $(date +%s) - t0 ))s"
