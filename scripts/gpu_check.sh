#!/usr/bin/env bash
# One prepared check for a remote GPU machine (H100/H200); finishes within 8 minutes in total.
#   (a) the GPU tests:  pytest -m gpu -q (bf16 vs fp32 LUCIR accuracy, the benchmark's CUDA path)
#   (b) the benchmark on CUDA (scripts/bench.py): ours vs the field's DataLoader pipeline
#   (c) a timed paper-schedule phase on CIFAR-100-shaped data (synthetic, 100 x 500, B50, batch 128):
#       s/epoch of phase 0 and of an incremental phase, projected to a full 160-epoch N=10 LUCIR run
#   (d) opt-in stage projection_compiled: (c) in bf16 with MNEMONICS_CUDA_COMPILE=1
#   (e) opt-in stage step_profile: the training step's kernels by kind, channels_last / NCHW /
#       compiled, against the graphed step's wall time (scripts/bench.py --step-profile)
# Everything goes to results/bench/ and, when $OUT is set, is copied there too (at most 8 files;
# one tar file when there are more). Needs only python3 with torch, torchvision, numpy, tqdm and
# pytest (the GPU image has them): the package is used from the checkout via PYTHONPATH.
#
#   bash scripts/gpu_check.sh                  # on the GPU machine
#   GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh  # dry run at tiny sizes (any machine, CPU too)
#   GPU_CHECK_STAGES="bench projection" bash scripts/gpu_check.sh  # a subset (default: all three)
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# phase checkpoints of the tests go to a throw-away folder, not into the checkout
export MNEMONICS_CHECKPOINTS="${MNEMONICS_CHECKPOINTS:-$(mktemp -d)}"
SMALL="${GPU_CHECK_SMALL:-0}"
STAGES=" ${GPU_CHECK_STAGES:-pytest bench projection} "
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"  # 8 minutes minus slack for start-up and the copy to $OUT
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi

DEST=results/bench
mkdir -p "$DEST"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
LOG="$DEST/$STAMP-gpu-check${GPU_CHECK_TAG:+-$GPU_CHECK_TAG}.log"
MARK="$(mktemp)"  # files newer than this are what this run wrote
T0=$SECONDS
declare -A RC

say() { echo "[gpu-check +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

# stage NAME CAP_SECONDS CMD...: run under `timeout`, capped by what is left of the budget
stage() {
  local name=$1 cap=$2; shift 2
  if [[ "$STAGES" != *" $name "* ]]; then RC[$name]=not-asked; return; fi
  local left=$((BUDGET_S - (SECONDS - T0) - 10))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 20 ]; then say "$name: skipped, budget spent"; RC[$name]=skipped; return; fi
  say "$name: start (timeout ${t}s): $*"
  local s=$SECONDS
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  RC[$name]=${PIPESTATUS[0]}
  say "$name: rc=${RC[$name]} in $((SECONDS - s))s"
}

say "python: $PY; small=$SMALL; budget ${BUDGET_S}s"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"

# only the files that hold gpu tests: collecting the notebook tests would need jupyter packages
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)
# the cap leaves room for the GPU tests beside other training processes on the same GPU
# GPU_CHECK_PYTEST_K: a pytest -k expression, to rerun only the tests a change touched
stage pytest "${GPU_CHECK_PYTEST_CAP:-320}" "$PY" -m pytest -m gpu -q -p no:cacheprovider -s --junitxml="$DEST/$STAMP-gpu-pytest.xml" \
    ${GPU_CHECK_PYTEST_K:+-k "$GPU_CHECK_PYTEST_K"} $GPU_TESTS
if [ "$SMALL" = 1 ]; then
  stage bench 220 "$PY" scripts/bench.py --quick --out "$DEST"  # 2 shared CPU cores: slow
  stage projection 100 "$PY" scripts/bench.py --paper-projection --small --out "$DEST"
  stage projection_compiled 100 env MNEMONICS_CUDA_COMPILE=1 "$PY" scripts/bench.py --paper-projection --small --bf16-only --out "$DEST"
  stage step_profile 100 "$PY" scripts/bench.py --step-profile --quick --out "$DEST"
else
  stage bench 200 "$PY" scripts/bench.py --out "$DEST"  # ~1 min of it compiles ours_compiled
  stage projection 110 "$PY" scripts/bench.py --paper-projection --out "$DEST"
  # opt-in (GPU_CHECK_STAGES): the trainer's phases with compiled backbones inside the graphs;
  # the record's provenance says cuda_compile: true
  stage projection_compiled 150 env MNEMONICS_CUDA_COMPILE=1 "$PY" scripts/bench.py --paper-projection --bf16-only --out "$DEST"
  stage step_profile 120 "$PY" scripts/bench.py --step-profile --out "$DEST"  # ~40 s of it compiles
fi

say "summary: pytest=${RC[pytest]} bench=${RC[bench]} projection=${RC[projection]} projection_compiled=${RC[projection_compiled]} step_profile=${RC[step_profile]} (124/137 = timed out)"
if [ -n "${OUT:-}" ]; then
  mapfile -t NEW < <(find "$DEST" -maxdepth 1 -type f -newer "$MARK" | sort)
  if [ "${#NEW[@]}" -le 8 ]; then
    cp "${NEW[@]}" "$OUT"/
  else
    tar -czf "$OUT/$STAMP-gpu-check.tar.gz" "${NEW[@]}"
  fi
  echo "copied ${#NEW[@]} file(s) to $OUT"
fi
rm -f "$MARK"
for k in pytest bench projection projection_compiled step_profile; do [ "${RC[$k]}" = 0 ] || [ "${RC[$k]}" = not-asked ] || exit 1; done
exit 0
