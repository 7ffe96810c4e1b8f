#!/usr/bin/env bash
# One prepared session on a lent GPU machine (H100/H200), sized for ~9 minutes:
#   1. scripts/gpu_check.sh: gpu-marked tests, the benchmark, the timed paper-schedule phase;
#   2. in the background from the start: the paper-profile LUCIR pair (herding, mnemonics), N=10;
#   3. every quick-profile run the notebooks need, 8 processes sharing the GPU, in priority order,
#      stopping new launches at a time limit (each run is written atomically, so a stop loses
#      only runs in flight);
#   4. the new run directories and benchmark files are packed into $OUT.
# Needs data/caltech101_32 carried with the tree (the offline copy; see data/README.md).
# Usage (device tool): bash scripts/gpu_session.sh   env: QUICK_LIMIT (s), PAPER_LIMIT (s), SMALL=1
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
PY=${PY:-python3}
OUT=${OUT:-build/gpu_out}
mkdir -p "$OUT" results/bench
QUICK_LIMIT=${QUICK_LIMIT:-330}
PAPER_LIMIT=${PAPER_LIMIT:-480}
PROFILE_QUICK=${PROFILE_QUICK:-quick}
PROFILE_PAPER=${PROFILE_PAPER:-paper}
JOBS=${JOBS:-8}
DEVICE=${DEVICE:-cuda}
start=$(date +%s)
stamp() { echo "[gpu_session +$(( $(date +%s) - start ))s] $*"; }

stamp "device: $($PY -c 'import torch;print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch.__version__)')"

stamp "paper-profile LUCIR pair in the background (limit ${PAPER_LIMIT}s)"
timeout "$PAPER_LIMIT" $PY scripts/study.py results --profile "$PROFILE_PAPER" --only paper_pair \
    --jobs 2 --device "$DEVICE" > "$OUT/paper_runs.log" 2>&1 &
paper_pid=$!

stamp "gpu_check (tests, benchmark, timed phase)"
timeout 170 env -u OUT bash scripts/gpu_check.sh > "$OUT/gpu_check.log" 2>&1; echo "gpu_check rc=$?" >> "$OUT/gpu_check.log"
tail -n 25 "$OUT/gpu_check.log"

stamp "quick-profile study runs (jobs=$JOBS, limit ${QUICK_LIMIT}s)"
timeout $(( QUICK_LIMIT + 60 )) $PY scripts/study.py results --profile "$PROFILE_QUICK" --jobs "$JOBS" \
    --device "$DEVICE" --time-limit "$QUICK_LIMIT" > "$OUT/quick_runs.log" 2>&1
echo "quick rc=$?" >> "$OUT/quick_runs.log"
tail -n 15 "$OUT/quick_runs.log"

stamp "waiting for the paper pair"
wait $paper_pid; echo "paper rc=$?" >> "$OUT/paper_runs.log"
tail -n 8 "$OUT/paper_runs.log"

# Pack what this session produced (run dirs are immutable; the tarball only adds new ones).
tar czf "$OUT/results.tgz" results --exclude='results/**/.tmp-*'
ls -la "$OUT"
stamp "done"
