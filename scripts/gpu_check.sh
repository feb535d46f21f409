#!/usr/bin/env bash
# GPU check on one H100/H200: GKL-AT and TRADES with PreActResNet-18 for a few epochs (bf16 autocast +
# channels_last, batches augmented on the GPU, no host sync per step), then AutoAttack standard on 1,000
# CIFAR-10 test images; images/s, wall times and accuracies go to $OUT (else results/gpu/). See
# docs/studies.md, "GPU check". The step-level figures (images/s per loss, model and precision, sync and
# data shares, memory, the official loop side by side) come from scripts/bench_gpu.sh.
#
#   1. on a machine with the data (ADVTRAIN_DATA_DIR) and the venv:   scripts/gpu_check.sh prepare
#      copies the first 10,000 + 512 CIFAR-10 training images and the first 1,000 test images into
#      .gpu_data/ (about 36 MB; git-ignored), plus the pure-Python packages a bare PyTorch machine may lack
#      (hydra-core, omegaconf, antlr4, pyautoattack) from the venv into .gpu_data/site.
#   2. copy the working tree with .gpu_data/ to the GPU machine and run, from the tree's root:
#      bash scripts/gpu_check.sh run
#      expected to take 3-5 minutes on one H100 (not yet measured); each of the 4 steps has its own
#      time limit (STEP_TIMEOUT, 135 s), so the whole script stays under 10 minutes.
#
# Knobs (environment; the defaults are the H100 check, small values give the CPU dry run):
#   GPU_DATA=.gpu_data N_TRAIN=10000 N_VAL=512 N_TEST=1000   (prepare)
#   EPOCHS=5 N_AA=1000 MODEL_WIDTH=64 DEVICE=cuda AUTOCAST=bf16 CHANNELS_LAST=true
#   AA_PRESET=aa_standard STEP_TIMEOUT=135 PYTHON=python3 GPU_WORK=/tmp/advtrain_gpu_check
# CPU dry run of both parts with tiny sizes (a few minutes on 2 idle cores):
#   export N_TRAIN=128 N_VAL=64 N_TEST=16 GPU_DATA=/tmp/gpu_dry GPU_WORK=/tmp/gpu_dry/work EPOCHS=1 \
#     N_AA=16 MODEL_WIDTH=8 DEVICE=cpu AUTOCAST=false PYTHON=.venv/bin/python OUT=/tmp/gpu_dry/out
#   scripts/gpu_check.sh prepare && scripts/gpu_check.sh run
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

GPU_DATA=${GPU_DATA:-.gpu_data}
N_TRAIN=${N_TRAIN:-10000}
N_VAL=${N_VAL:-512}
N_TEST=${N_TEST:-1000}
EPOCHS=${EPOCHS:-5}
N_AA=${N_AA:-1000}
MODEL_WIDTH=${MODEL_WIDTH:-64}
DEVICE=${DEVICE:-cuda}
AUTOCAST=${AUTOCAST:-bf16}
CHANNELS_LAST=${CHANNELS_LAST:-true}
AA_PRESET=${AA_PRESET:-aa_standard}
STEP_TIMEOUT=${STEP_TIMEOUT:-135}
GPU_WORK=${GPU_WORK:-/tmp/advtrain_gpu_check}

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    local src=${ADVTRAIN_DATA_DIR:-../shared/data}
    mkdir -p "$GPU_DATA"
    if [ "$GPU_DATA" = ".gpu_data" ]; then
        local exclude
        exclude=$(git rev-parse --git-path info/exclude) || return 1
        mkdir -p "$(dirname "$exclude")"
        grep -qx '/.gpu_data/' "$exclude" 2>/dev/null || echo '/.gpu_data/' >>"$exclude"
    fi
    SRC="$src" DST="$GPU_DATA" N_TRAIN="$N_TRAIN" N_VAL="$N_VAL" N_TEST="$N_TEST" "$py" - <<'EOF'
"""Data subset (the loader holds out the LAST N_VAL training images) and pure-Python packages."""
import importlib.metadata as md
import os
import shutil
from pathlib import Path

import numpy as np

src, dst = Path(os.environ["SRC"]), Path(os.environ["DST"])
n_train, n_val, n_test = (int(os.environ[k]) for k in ("N_TRAIN", "N_VAL", "N_TEST"))
for split, n in (("train", n_train + n_val), ("test", n_test)):
    with np.load(src / f"cifar10_{split}.npz") as d:
        image, label = d["image"][:n], d["label"][:n]
    if len(label) < n:
        raise SystemExit(f"{src}/cifar10_{split}.npz has only {len(label)} images, {n} needed")
    np.savez(dst / f"cifar10_{split}.npz", image=image, label=label)
    print(f"{dst}/cifar10_{split}.npz: {image.shape} {image.dtype}")
site = dst / "site"
for dist in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pyautoattack"):
    d = md.distribution(dist)
    n = 0
    for f in d.files or []:
        parts = Path(f).parts
        if "examples" in parts or "__pycache__" in parts or f.suffix == ".pyc" or ".." in parts:
            continue
        target = site / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d.locate_file(f), target)
        n += 1
    print(f"{site}: {dist} {d.version} ({n} files)")
EOF
    du -sh "$GPU_DATA"
}

run() {
    local py=${PYTHON:-python3}
    local out=${OUT:-results/gpu}
    mkdir -p "$out" "$GPU_WORK"
    export PYTHONPATH="$PWD/$GPU_DATA/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    local logf="$out/gpu_check.log"
    : >"$logf"
    : >"$GPU_WORK/steps.jsonl"
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
        "$py" -c "import torch, hydra, pyautoattack; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    } >>"$logf" 2>&1
    # GKL's scaled recipe bits as in Study A: AWP from 5% of the run, weight average time constant
    # = 5% of the run, per optimiser step (ceil(N_TRAIN / 128) steps per epoch).
    local steps=$(((N_TRAIN + 127) / 128))
    local ema
    ema=$("$py" -c "print(round(1 - 1 / max(0.05 * $EPOCHS * $steps, 1.0001), 4))")
    local common=(model=preact_resnet18 "model.width=$MODEL_WIDTH" "data.root=$GPU_DATA"
        "data.val_size=$N_VAL" "trainer.epochs=$EPOCHS" "trainer.autocast=$AUTOCAST"
        "trainer.channels_last=$CHANNELS_LAST" "device=$DEVICE" trainer.eval_every=1
        "trainer.val_examples=$N_VAL" trainer.test_examples=0 trainer.progress=false
        data.augment_on=auto)
    local method rc
    for method in trades gkl; do
        local extra=()
        if [ "$method" = gkl ]; then
            extra=(trainer.awp_warmup_epochs=1 trainer.weight_average_tau=null "trainer.ema_decay=$ema")
        fi
        rm -rf "$GPU_WORK/$method"
        local t0=$SECONDS
        echo "### train $method: +exp=cifar10_$method ${common[*]} ${extra[*]}" >>"$logf"
        timeout "$STEP_TIMEOUT" "$py" -m advtrain train "+exp=cifar10_$method" "${common[@]}" \
            "${extra[@]}" "hydra.run.dir=$GPU_WORK/$method/train" >>"$logf" 2>&1
        rc=$?
        echo "{\"step\": \"train_$method\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >>"$GPU_WORK/steps.jsonl"
        t0=$SECONDS
        if [ -f "$GPU_WORK/$method/train/last.pt" ]; then
            echo "### eval $method: eval=$AA_PRESET n_examples=$N_AA" >>"$logf"
            timeout "$STEP_TIMEOUT" "$py" -m advtrain eval "ckpt=$GPU_WORK/$method/train/last.pt" \
                "eval=$AA_PRESET" "n_examples=$N_AA" "data.root=$GPU_DATA" "device=$DEVICE" \
                progress=false "hydra.run.dir=$GPU_WORK/$method/aa" >>"$logf" 2>&1
            rc=$?
        else
            rc=-1
        fi
        echo "{\"step\": \"aa_$method\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >>"$GPU_WORK/steps.jsonl"
        cp "$GPU_WORK/$method/train/metrics.jsonl" "$out/${method}_metrics.jsonl" 2>/dev/null
        cp "$GPU_WORK/$method/aa/results.json" "$out/${method}_aa_results.json" 2>/dev/null
    done
    WORK="$GPU_WORK" OUTDIR="$out" "$py" - <<'EOF' | tee -a "$logf"
"""summary.json: per method images/s, wall times and accuracies (fractions)."""
import json
import os
import statistics
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUTDIR"])
steps = [json.loads(x) for x in (work / "steps.jsonl").read_text().splitlines() if x.strip()]
summary = {"steps": steps, "methods": {}}
try:
    import torch

    summary["torch"] = torch.__version__
    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
except Exception as e:  # the summary must still be written
    summary["device"] = f"unknown ({e})"
for m in ("trades", "gkl"):
    rec: dict = {}
    mj = work / m / "train" / "metrics.jsonl"
    if mj.is_file():
        epochs = [json.loads(x) for x in mj.read_text().splitlines() if x.strip()]
        epochs = [e for e in epochs if "train_images_per_s" in e]
        ips = [e["train_images_per_s"] for e in epochs]
        rec["epochs"] = len(epochs)
        rec["images_per_s_epoch1"] = ips[0] if ips else None
        rec["images_per_s_median_after_1"] = statistics.median(ips[1:]) if len(ips) > 1 else None
        rec["train_seconds"] = sum(e.get("train_seconds", 0.0) for e in epochs)
        last = epochs[-1] if epochs else {}
        rec["val_clean_acc"], rec["val_pgd_acc"] = last.get("val_clean_acc"), last.get("val_pgd_acc")
    rj = work / m / "aa" / "results.json"
    if rj.is_file():
        r = json.loads(rj.read_text())
        rec.update(aa_clean_acc=r["clean_acc"], aa_robust_acc=r["robust_acc"],
                   pgd20_acc=(r.get("pgd") or {}).get("acc"), aa_n_examples=r["n_examples"],
                   aa_wall_time_s=r["wall_time_s"], aa_warnings=r.get("warnings"))
    rec["wall_s"] = {s["step"]: s["wall_s"] for s in steps if s["step"].endswith(m)}
    summary["methods"][m] = rec
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
    ! grep -q '"rc": [^0]' "$out/summary.json"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: scripts/gpu_check.sh prepare|run (see the header of this file)" >&2
    exit 2
    ;;
esac
