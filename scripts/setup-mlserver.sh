#!/usr/bin/env bash
# Creates the separate virtualenv that runs MLServer (the comparison peer for cloud-expert).
# MLServer 1.7.1 pins protobuf 6.x, so it cannot share the project's ./.venv.
# Idempotent: does nothing once VENV_DIR/.ready exists.
#   uvloop is pinned to 0.21.0: MLServer 1.7.1 crash-loops with uvloop >= 0.22.
set -euo pipefail
venv="${1:?usage: setup-mlserver.sh VENV_DIR}"
python="${PYTHON:-python3}"
if [ -f "$venv/.ready" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-mlserver: creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
echo "setup-mlserver: installing mlserver 1.7.1 (this takes a minute)"
"$venv/bin/pip" install --disable-pip-version-check --progress-bar off -q \
  mlserver==1.7.1 uvloop==0.21.0 numpy==2.4.6 safetensors==0.8.0
"$venv/bin/python" -c "import mlserver, numpy, safetensors; from mlserver.grpc import dataplane_pb2_grpc"
touch "$venv/.ready"
echo "setup-mlserver: virtualenv ready ($venv)"
