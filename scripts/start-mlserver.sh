#!/usr/bin/env bash
# Serves one cloud-expert model version with MLServer (the Open Inference Protocol v2 peer
# that the benchmark compares cloud-expert against). Runs in the foreground (exec).
#   usage: start-mlserver.sh VENV_DIR VERSION_DIR MODEL_NAME HTTP_PORT GRPC_PORT WORKDIR
# Writes WORKDIR/settings.json and WORKDIR/MODEL_NAME/model-settings.json. Binds 127.0.0.1;
# metrics are disabled (metrics_endpoint null: no metrics server and no Prometheus
# interceptor on the request path); parallel_workers 0 runs inference in the main process.
set -euo pipefail
if [ $# -ne 6 ]; then
  echo "usage: $0 VENV_DIR VERSION_DIR MODEL_NAME HTTP_PORT GRPC_PORT WORKDIR" >&2
  exit 2
fi
venv="$(cd "$1" 2>/dev/null && pwd)" || { echo "start-mlserver: no virtualenv at $1" >&2; exit 1; }
version_dir="$(cd "$2" && pwd)"
model="$3"
http_port="$4"
grpc_port="$5"
workdir="$6"
here="$(cd "$(dirname "$0")" && pwd)"
for f in expert.json expert.safetensors; do
  [ -f "$version_dir/$f" ] || { echo "start-mlserver: $version_dir/$f missing" >&2; exit 1; }
done
[ -x "$venv/bin/mlserver" ] || { echo "start-mlserver: no mlserver in $venv (run scripts/setup-mlserver.sh)" >&2; exit 1; }
mkdir -p "$workdir/$model"
workdir="$(cd "$workdir" && pwd)"
"$venv/bin/python" - "$workdir" "$model" "$version_dir" "$http_port" "$grpc_port" <<'PY'
import json, os, sys
workdir, model, version_dir, http_port, grpc_port = sys.argv[1:]
settings = {
    "debug": False,
    "host": "127.0.0.1",
    "http_port": int(http_port),
    "grpc_port": int(grpc_port),
    "metrics_endpoint": None,
    "metrics_port": int(http_port) + 2,
    "parallel_workers": 0,
    "load_models_at_startup": True,
}
model_settings = {
    "name": model,
    "implementation": "runtime.ExpertRuntime",
    "parameters": {"uri": version_dir},
}
with open(os.path.join(workdir, "settings.json"), "w") as f:
    json.dump(settings, f, indent=2)
with open(os.path.join(workdir, model, "model-settings.json"), "w") as f:
    json.dump(model_settings, f, indent=2)
PY
export PYTHONPATH="$here/mlserver_expert${PYTHONPATH:+:$PYTHONPATH}"
# MLServer reads MLSERVER_* env vars too; keep stray ones from overriding settings.json.
unset MLSERVER_HOST MLSERVER_HTTP_PORT MLSERVER_GRPC_PORT MLSERVER_PARALLEL_WORKERS
cd "$workdir"
exec "$venv/bin/mlserver" start "$workdir"
