#!/usr/bin/env bash
# One prepared run on a remote GPU machine (H100/H200) with a time limit, sized to end within ~9.5 minutes:
#   1. alone on the GPU (clean timings): the benchmark and the paper-schedule projection
#      (scripts/gpu_check.sh, stages bench + projection; ~115 s on an H200; TIMING=0 skips it);
#   2. then side by side until END_AT seconds:
#      - the gpu-marked tests (accuracy checks: they need no quiet GPU);
#      - paper-profile runs, caltech100, N = 10 first, LUCIR first (PAPER_MATCH selects them;
#        default: every method but the mnemonics ones), PAPER_JOBS processes (default 1: one
#        paper-profile LUCIR run took 420 s beside five other processes on an H200);
#      - PAPER_MNEMONICS=1: the paper-profile LUCIR w/ mnemonics N = 10 run, one process (its
#        exemplar stage costs ~18 training steps per hypergradient even graphed: its log gives the
#        per-phase time even when it cannot finish);
#        PAPER_MNEMONICS_MATCH (default seed 1993) / PAPER_MNEMONICS_JOBS pick other seeds / processes;
#        a run begun elsewhere resumes when its checkpoints/runs/<hash> folder is carried;
#        PAPER_RUNS=0 leaves the paper-profile runs above out;
#      - quick-profile runs the notebooks need (QUICK_MATCH; default: all but cifar10, whose
#        data cannot travel; mnemonics runs included: at quick, M = 10, their exemplar stage is
#        ~30 hypergradients per phase, seconds on a GPU), JOBS processes, nothing new launched
#        after QUICK_LIMIT seconds; QUICK2_MATCH (optional) starts a second such process of
#        JOBS2 processes, so that long runs and short ones proceed side by side;
#   3. results/ (benchmark files) and $RESULTS_DIR (runs) packed into $OUT/results.tgz, the logs into $OUT/logs.tgz,
#      the phase checkpoints of runs cut off at END_AT into $OUT/checkpoints.tgz.part-* (15 MB parts,
#      CKPT_MAX_MB in all, default 45: returned files are limited to 8 and 64 MiB): a later run
#      that carries checkpoints/ resumes them instead of starting again.
# Runs are written atomically: a stop at END_AT loses only the runs in flight. What the runs write
# on the device lives only until the next call copies the tree there again (a second call on the
# warm machine keeps ignored folders such as checkpoints/, not the tracked results/), so
# $OUT/results.tgz is the copy that counts.
# Needs data/caltech101_32 carried with the tree (copy of ../shared/data/caltech101_32), and
# MNEMONICS_GIT_COMMIT set to the commit the tree was copied from (the copy has no .git).
# SMALL=1: the same steps at smoke size, to prove the script end to end on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MNEMONICS_CHECKPOINTS="${MNEMONICS_CHECKPOINTS:-$PWD/checkpoints}"
PY=${PY:-python3}
OUT=${OUT:-build/gpu_out}
LOGS=${LOGS:-build/gpu_logs}  # packed into $OUT/logs.tgz at the end (returned files are counted)
# the runs are written into an ignored folder, seeded with results/ (the cached runs): a second call on the warm machine still has them there (results/ itself is replaced by
# each call's copy of the tree, and finished runs written there would be lost)
RESULTS_DIR=${RESULTS_DIR:-build/gpu_results}
mkdir -p "$OUT" "$LOGS" results/bench "$RESULTS_DIR"
cp -rn results/. "$RESULTS_DIR"/
SMALL=${SMALL:-0}
NOT_MN='^(?!.*(mnemonics|cifar10))'
NOT_CIFAR='^(?!.*cifar10)'
if [ "$SMALL" = 1 ]; then
  QUICK=smoke; PAPER=smoke; JOBS=${JOBS:-2}; DEVICE=${DEVICE:-cpu}; END_AT=${END_AT:-400}
  QUICK_LIMIT=${QUICK_LIMIT:-120}; QUICK_MATCH=${QUICK_MATCH:-"${NOT_MN}"}; THREADS=${THREADS:-1}
  PAPER_MATCH=${PAPER_MATCH:-"${NOT_MN}.*lucir-"}
else
  QUICK=quick; PAPER=paper; JOBS=${JOBS:-3}; DEVICE=${DEVICE:-cuda}; END_AT=${END_AT:-530}
  QUICK_LIMIT=${QUICK_LIMIT:-420}; QUICK_MATCH=${QUICK_MATCH:-$NOT_CIFAR}; THREADS=${THREADS:-2}
fi
PAPER_MATCH=${PAPER_MATCH:-"${NOT_MN}.*-N10-"}
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
stamp() { echo "[gpu_timed_run +$(now)s] $*"; }
pack() {
  # what comes back from $OUT: at most 8 files, 16 MiB each, 64 MiB together (files beyond that
  # are dropped), so one results.tgz, one logs.tgz, and at most CKPT_MAX_MB of checkpoints in 15 MB parts
  # results/ for the benchmark files, $RESULTS_DIR for the runs (also those of an earlier call)
  tar czf "$OUT/results.tgz" --exclude='.tmp-*' --exclude='.locks' results "$RESULTS_DIR" 2>/dev/null
  # the latest phase of each cut-off run is all a resume reads; one caltech100 phase is ~25 MB
  # (the exemplar memory in fp32). Join the parts with `cat checkpoints.tgz.part-* | tar xz -C checkpoints`
  if [ -d "$MNEMONICS_CHECKPOINTS/runs" ]; then
    local budget=$(( ${CKPT_MAX_MB:-45} * 1024 * 1024 )) f size
    (cd "$MNEMONICS_CHECKPOINTS" && for d in runs/*/; do ls "$d"phase_*.pt 2>/dev/null | sort | tail -n 1; done) \
        | while read -r f; do  # (a run folder without phases makes ls fail: it is skipped)
            size=$(stat -c %s "$MNEMONICS_CHECKPOINTS/$f")
            if [ "$size" -le "$budget" ]; then budget=$(( budget - size )); echo "$f"
            else echo "checkpoint left behind (over CKPT_MAX_MB): $f" >> "$LOGS/pack.log"; fi
          done > "$LOGS/checkpoints.list"
    [ -s "$LOGS/checkpoints.list" ] && tar czf - -C "$MNEMONICS_CHECKPOINTS" -T "$LOGS/checkpoints.list" \
        | split -b 15M - "$OUT/checkpoints.tgz.part-"
  fi
  tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null
  ls -la "$OUT"; stamp "packed ($(ls "$OUT" | wc -l) files; at most 8 come back)"
}
trap pack EXIT

stamp "device: $($PY -c 'import torch;print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch.__version__)'); commit ${MNEMONICS_GIT_COMMIT:-unknown}"
if [ "${TIMING:-1}" = 1 ]; then
  stamp "benchmark and projection, alone on the device"
  # 320 s: the benchmark compiles the backbones for its ours_compiled variant (inductor, ~1 min)
  # TIMING_STAGES="bench projection projection_compiled" adds the compiled projection (~1.5 min more)
  GPU_CHECK_SMALL=$SMALL GPU_CHECK_STAGES="${TIMING_STAGES:-bench projection}" GPU_CHECK_BUDGET_S=${TIMING_BUDGET_S:-320} GPU_CHECK_TAG=timing \
      timeout $(( ${TIMING_BUDGET_S:-320} + 20 )) env -u OUT bash scripts/gpu_check.sh > "$LOGS/gpu_timing.log" 2>&1
  echo "gpu_check timing rc=$?" >> "$LOGS/gpu_timing.log"
  grep -E "ratio|projected|rc=|graph" "$LOGS/gpu_timing.log" | tail -n 30
fi

left() { echo $(( END_AT - $(now) )); }
stamp "side by side: gpu tests, paper runs, quick runs ($(left)s left)"
GPU_CHECK_SMALL=$SMALL GPU_CHECK_STAGES="pytest" GPU_CHECK_BUDGET_S=$(( $(left) - 20 )) GPU_CHECK_TAG=tests \
    timeout "$(left)" env -u OUT bash scripts/gpu_check.sh > "$LOGS/gpu_tests.log" 2>&1 &
tests_pid=$!
paper_pid=
if [ "${PAPER_RUNS:-1}" = 1 ]; then
  timeout "$(left)" $PY scripts/study.py results --results-dir "$RESULTS_DIR" --profile "$PAPER" --only table1 --match "$PAPER_MATCH" \
      --jobs "${PAPER_JOBS:-1}" --threads "$THREADS" --device "$DEVICE" > "$LOGS/paper_runs.log" 2>&1 &
  paper_pid=$!
fi
# quick_runs MATCH JOBS LOG: the quick-profile runs MATCH selects, nothing new after QUICK_LIMIT
quick_runs() {
  timeout "$(left)" $PY scripts/study.py results --results-dir "$RESULTS_DIR" --profile "$QUICK" --match "$1" --jobs "$2" \
      --threads "$THREADS" --device "$DEVICE" --time-limit "$QUICK_LIMIT" > "$LOGS/$3" 2>&1
}
q2_pid=
if [ -n "${QUICK2_MATCH:-}" ]; then
  quick_runs "$QUICK2_MATCH" "${JOBS2:-2}" quick2_runs.log &
  q2_pid=$!
fi
mn_pid=
if [ "${PAPER_MNEMONICS:-0}" = 1 ]; then
  timeout "$(left)" $PY scripts/study.py results --results-dir "$RESULTS_DIR" --profile "$PAPER" --only table1 \
      --match "${PAPER_MNEMONICS_MATCH:-lucir_mnemonics-N10-s1993}" --jobs "${PAPER_MNEMONICS_JOBS:-1}" --threads "$THREADS" \
      --device "$DEVICE" > "$LOGS/paper_mnemonics.log" 2>&1 &
  mn_pid=$!
fi
quick_runs "$QUICK_MATCH" "$JOBS" quick_runs.log
echo "quick rc=$?" >> "$LOGS/quick_runs.log"
for pid in $tests_pid $paper_pid $mn_pid $q2_pid; do wait "$pid"; echo "pid $pid rc=$?"; done
[ -n "$paper_pid" ] && { echo "paper runs:"; grep -E "computed|done|FAILED|phase [0-9]+:" "$LOGS/paper_runs.log" | tail -n 15; }
[ -n "$mn_pid" ] && { echo "paper mnemonics:"; grep -E "phase [0-9]+:|exemplar|done" "$LOGS/paper_mnemonics.log" | tail -n 8; }
for f in "$LOGS"/quick*_runs.log; do
  echo "$f: $(grep -cE "^done " "$f") done"; grep -E "^done |FAILED|Error" "$f" | cut -c1-110 | head -n 12
done
echo "gpu tests:"; grep -E "passed|failed|AIA|graph steps|rc=" "$LOGS/gpu_tests.log" | tail -n 8
stamp "done"
