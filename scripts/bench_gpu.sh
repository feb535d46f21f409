#!/usr/bin/env bash
# GPU benchmarks: one command on any machine with one CUDA GPU, a copy of this working tree and the prepared
# .gpu_data/ folder. Sized to finish within 10 minutes on one H100/H200.
#
#   1. on a machine with the data (ADVTRAIN_DATA_DIR) and the venv:
#        scripts/bench_gpu.sh prepare
#      writes .gpu_data/ (about 36 MB, git-ignored through .git/info/exclude): the first 10,512 CIFAR-10
#      training and 1,000 test images, plus the pure-Python packages a bare PyTorch machine may lack (Hydra,
#      OmegaConf, ANTLR, pyautoattack) under .gpu_data/site (scripts/gpu_check.sh prepare does the work).
#   2. copy the working tree with .gpu_data/ to the GPU machine and run there, from the tree's root:
#        bash scripts/bench_gpu.sh
#      figures go to $OUT if set, else results/gpu/ (commit them from there).
#
# What the default run measures (#15; benchmarks/gpu_step.py, benchmarks/official_loop.py, GPU sizes in
# configs/bench/gpu.yaml):
#   gpu_step       images/s of TrainLoader + Trainer.train_step for PGD-AT, TRADES and GKL with PreActResNet-18
#                  and WRN-34-10 (batch 128, 10 attack steps), in fp32 and in the default precision policy (bf16
#                  natural pass, fp32 attack, channels_last); sync-free vs one read per step; the share of step
#                  time in host syncs and in data (torch.profiler); peak GPU memory; and the official GKL loop
#                  re-implemented (per-sample PIL DataLoader, fp32 NCHW eager) side by side.
#   official_loop  the same comparison for PreActResNet-18 with its equivalence check (same loss, same x_adv).
#
#   bash scripts/bench_gpu.sh --dry-run        # the same Python calls on the CPU at tiny sizes (seconds each):
#                                              # checks the script and configs on a machine without a GPU
#   bash scripts/bench_gpu.sh --all            # every benchmark at GPU sizes (longer than 10 minutes)
#   bash scripts/bench_gpu.sh --only "fastpath overhead" [hydra overrides...]
#
# Each benchmark runs in its own process under a time limit (BENCH_TIMEOUT seconds; default 400 for gpu_step,
# 150 for the others), so one failure or hang costs only its own figures. Environment: PYTHON (interpreter,
# default .venv/bin/python, else python3), GPU_DATA (default .gpu_data; else ADVTRAIN_DATA_DIR; without either the
# benchmarks time random pixels, fine for speed), BENCH_THREADS (CPU threads, default 8).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [[ "${1:-}" == "prepare" ]]; then
  shift
  exec bash scripts/gpu_check.sh prepare "$@"
fi

DRY=0
ONLY="gpu_step official_loop"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --all) ONLY="gpu_step fastpath overhead gkl_vs_trades official_loop data gkl_loss eval scaling attack_precision"; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    *) break ;;
  esac
done

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
GPU_DATA=${GPU_DATA:-.gpu_data}
if [[ -d "$GPU_DATA/site" ]]; then
  export PYTHONPATH="$PWD/$GPU_DATA/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-results/gpu}
export ADVTRAIN_RUNS_DIR=${ADVTRAIN_RUNS_DIR:-/tmp/advtrain_bench_gpu_runs}

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
if [[ -f "$GPU_DATA/cifar10_train.npz" ]]; then
  DATA=("data_root=$GPU_DATA")
elif [[ -n "${ADVTRAIN_DATA_DIR:-}" ]]; then
  DATA=("data_root=$ADVTRAIN_DATA_DIR")
else
  DATA=("data_root=null")
fi

FAILED=()
for b in $ONLY; do
  limit=${BENCH_TIMEOUT:-150}
  if [[ $b == gpu_step && -z "${BENCH_TIMEOUT:-}" ]]; then limit=400; fi
  echo "=== $b (limit ${limit}s)"
  start=$(date +%s)
  if timeout "$limit" "$PY" -m advtrain bench bench=gpu "only=[$b]" "${ARGS[@]}" "out_dir=$OUT_DIR" \
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
