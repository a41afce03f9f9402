#!/usr/bin/env bash
# Creates (or completes) the project-local virtualenv that provides libtorch for tch.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
venv="$1"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" - <<'PY' 2>/dev/null
import sys, importlib.metadata as md
want = {}
for line in open(sys.argv[1] if len(sys.argv) > 1 else "scripts/requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, ver = line.split("==")
        want[name.split("[")[0]] = ver
for name, ver in want.items():
    if md.version(name) != ver:
        raise SystemExit(1)
PY
then
  echo "setup: installing Python requirements (torch ${TORCH_VERSION:-2.13.0} for libtorch)"
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off -q -r "$here/requirements.txt"
fi
"$venv/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
echo "setup: virtualenv ready ($venv)"
