#!/usr/bin/env bash
# One prepared session on a lent GPU machine (H100/H200), sized to end within ~9.5 minutes:
#   1. scripts/gpu_check.sh alone (clean timings): gpu-marked tests, benchmark, timed paper phase;
#   2. PAPER_PAIR=1 only: in the background, the paper-profile LUCIR pair (herding, mnemonics),
#      caltech100, N=10 (projected ~28 min per run on an H200: it cannot finish in one session);
#   3. every quick-profile run the notebooks need (sweep first, which chooses the mnemonics
#      settings; then Table 1, the ablations, ...), in priority order, JOBS processes (default 2),
#      launching nothing new after a time limit (runs are written atomically: a stop loses only
#      the runs in flight). Few processes on purpose: the step is launch-bound, and 10 processes
#      time-sliced one H200 to ~180 ms per step, so no run finished (2026-11-26 session);
#   4. results/ (new runs, sweep choice, benchmark files) packed into $OUT/results.tgz.
# Needs data/caltech101_32 carried with the tree (copy of ../shared/data/caltech101_32).
# SMALL=1: the same steps at smoke size, to prove the script end to end on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MNEMONICS_CHECKPOINTS="${MNEMONICS_CHECKPOINTS:-$PWD/checkpoints}"
PY=${PY:-python3}
OUT=${OUT:-build/gpu_out}
mkdir -p "$OUT" results/bench
SMALL=${SMALL:-0}
if [ "$SMALL" = 1 ]; then
  QUICK=smoke; PAPER=smoke; JOBS=${JOBS:-2}; DEVICE=${DEVICE:-cpu}; CHECK_BUDGET=${CHECK_BUDGET:-200}
  END_AT=${END_AT:-560}; QUICK_LIMIT=${QUICK_LIMIT:-60}
else
  QUICK=quick; PAPER=paper; JOBS=${JOBS:-2}; DEVICE=${DEVICE:-cuda}; CHECK_BUDGET=${CHECK_BUDGET:-150}
  END_AT=${END_AT:-545}; QUICK_LIMIT=${QUICK_LIMIT:-300}
fi
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
stamp() { echo "[gpu_session +$(now)s] $*"; }
pack() {
  tar czf "$OUT/results.tgz" --exclude='.tmp-*' results "$( [ "$SMALL" = 1 ] && echo build/smoke_results )" 2>/dev/null
  ls -la "$OUT"; stamp "packed"
}
trap pack EXIT

stamp "device: $($PY -c 'import torch;print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch.__version__)')"
stamp "gpu_check alone (budget ${CHECK_BUDGET}s)"
GPU_CHECK_SMALL=$SMALL GPU_CHECK_BUDGET_S=$CHECK_BUDGET timeout $(( CHECK_BUDGET + 20 )) env -u OUT \
    bash scripts/gpu_check.sh > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$?" >> "$OUT/gpu_check.log"
tail -n 30 "$OUT/gpu_check.log"

paper_pid=
if [ "${PAPER_PAIR:-0}" = 1 ]; then
  left=$(( END_AT - $(now) ))
  stamp "paper-profile LUCIR pair in the background (${left}s left)"
  timeout "$left" $PY scripts/study.py results --profile "$PAPER" --only table1 --first 2 --jobs 2 \
      --threads 2 --device "$DEVICE" > "$OUT/paper_runs.log" 2>&1 &
  paper_pid=$!
fi

stamp "quick-profile runs, sweep first (jobs=$JOBS, no new launch after ${QUICK_LIMIT}s)"
left=$(( END_AT - $(now) ))
timeout "$left" $PY scripts/study.py results --profile "$QUICK" --jobs "$JOBS" --threads 1 \
    --device "$DEVICE" --time-limit "$QUICK_LIMIT" > "$OUT/quick_runs.log" 2>&1
echo "quick rc=$?" >> "$OUT/quick_runs.log"
grep -E "chosen|done|FAILED|cached|tasks" "$OUT/quick_runs.log" | tail -n 40

if [ -n "$paper_pid" ]; then
  stamp "waiting for the paper pair"
  wait "$paper_pid"; echo "paper rc=$?" >> "$OUT/paper_runs.log"
  grep -E "done|FAILED|rc=" "$OUT/paper_runs.log" | tail -n 5
fi
stamp "done"
