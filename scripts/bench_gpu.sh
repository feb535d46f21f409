#!/usr/bin/env bash
# The benchmarks on a CUDA machine (configs/bench/gpu.yaml sizes), a few minutes on one H100/H200.
#
#   scripts/bench_gpu.sh                 # writes $OUT if set, else results/bench/gpu/
#   scripts/bench_gpu.sh --dry-run       # the same Python calls on the CPU at tiny sizes (seconds each):
#                                        # checks the script and configs on a machine without a GPU
#   scripts/bench_gpu.sh --only "fastpath overhead" [hydra overrides...]
#
# Each benchmark runs in its own process under a time limit (BENCH_TIMEOUT seconds, default 300), so
# one failure or hang costs only its own figures. The headline GPU target (fastpath.md): bf16 autocast +
# channels_last vs fp32 NCHW eager >= 2x for PreActResNet-18 training steps. attack_precision.md gives the
# price of the attack precision policy: PreActResNet-18 training steps (and attack passes) with the attack in
# fp32 (the default) vs bf16 (trainer.autocast_attack=bf16), natural pass in bf16 on both sides, per loss,
# with the first attack step's gradient-sign agreement against fp32. Environment: PYTHON
# (interpreter, default .venv/bin/python, else python3), ADVTRAIN_DATA_DIR (real CIFAR-10; without it
# the benchmarks time random pixels, which is fine for speed), BENCH_THREADS (CPU threads, default 8).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
ONLY="fastpath overhead gkl_vs_trades official_loop data gkl_loss eval scaling attack_precision"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    *) break ;;
  esac
done

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT_DIR=${OUT:-results/bench/gpu}
LIMIT=${BENCH_TIMEOUT:-300}
export ADVTRAIN_RUNS_DIR=${ADVTRAIN_RUNS_DIR:-$OUT_DIR/runs}

if [[ $DRY -eq 1 ]]; then
  OUT_DIR=${OUT:-$(mktemp -d)}/dry-run
  ARGS=(device=cpu threads=1 dry_run=true)
  echo "dry run on the CPU (tiny sizes, not a measurement) -> $OUT_DIR"
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA GPU visible to $PY; use --dry-run to check the script on a CPU" >&2
    exit 1
  fi
  ARGS=(device=cuda "threads=${BENCH_THREADS:-8}")
fi
mkdir -p "$OUT_DIR"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
} > "$OUT_DIR/environment.txt" 2>&1

DATA=()
if [[ -n "${ADVTRAIN_DATA_DIR:-}" ]]; then DATA=("data_root=$ADVTRAIN_DATA_DIR"); fi

FAILED=()
for b in $ONLY; do
  echo "=== $b"
  start=$(date +%s)
  if timeout "$LIMIT" "$PY" -m advtrain bench bench=gpu "only=[$b]" "${ARGS[@]}" "out_dir=$OUT_DIR" \
      "${DATA[@]}" "$@" > "$OUT_DIR/$b.log" 2>&1; then
    echo "    ok in $(( $(date +%s) - start ))s: $OUT_DIR/$b.md"
    grep -E "\] -   " "$OUT_DIR/$b.log" | sed 's/^.*\] -   /    /' || true
  else
    rc=$?
    echo "    FAILED (exit $rc after $(( $(date +%s) - start ))s); last lines of $OUT_DIR/$b.log:"
    tail -n 5 "$OUT_DIR/$b.log" | sed 's/^/    /'
    FAILED+=("$b")
  fi
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "failed: ${FAILED[*]}" >&2
  exit 1
fi
echo "all done: $OUT_DIR"
