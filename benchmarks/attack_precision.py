"""attack_precision: what the attack precision policy costs, and what it buys.

The policy (`advtrain.engine.fastpath.resolve_attack_autocast`): whatever `trainer.autocast` does
for the natural forward/backward, the training attack and the adversarial forward of the loss run
in fp32 unless `trainer.autocast_attack=bf16` opts in. This benchmark runs `Trainer.train_step`
(and the attack pass alone) both ways from the same weights on the same batch, with the natural
pass under `autocast` (bf16 by default here, the CUDA `auto`), and reports

* the time of an fp32-attack step relative to a bf16-attack step (the policy's price), per loss;
* the agreement of the first attack step's gradient signs with an fp32 reference at the start
  point the attack really uses (what the price buys: bf16 rounds the 0.001 N(0, 1) start away).

Meant for a GPU (`scripts/bench_gpu.sh`); on a CPU, bf16 autocast timings say little.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import torch

from advtrain.attacks.objectives import get_objective, needs_natural
from advtrain.data import to_float
from benchmarks.common import (
    BenchContext,
    BenchResult,
    Target,
    check_settings,
    compare,
    interleave,
)
from benchmarks.harness import bench_data, build_trainer, train_config

log = logging.getLogger(__name__)

NAME = "attack_precision"
TITLE = "Attack precision policy: fp32 attack (default) vs bf16 attack (opt-in)"
#: CPU sizes (configs/bench/attack_precision.yaml); configs/bench/gpu.yaml sets PreActResNet-18.
DEFAULTS: dict[str, Any] = {
    "losses": ["pgdat", "trades", "gkl"],
    "model": "small_cnn",
    "model_kwargs": {"width": 16},
    "batch_size": 64,
    "attack_steps": 5,
    "repeats": 9,
    "warmup": 1,
    "autocast": "bf16",  # the natural pass's precision on both sides
    "channels_last": "auto",
    "min_sign_agreement": 0.99,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "model": "small_cnn",
    "model_kwargs": {"width": 4},
    "batch_size": 8,
    "attack_steps": 1,
    "repeats": 2,
    "warmup": 0,
}


def first_step_sign_agreement(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of input-gradient signs at the attack's start point that match an fp32 reference.

    Both gradients are taken at the same start (the attack's own random start, drawn once), with
    the trainer's objective, in the attack's mode; only the precision context differs.
    """
    attack = trainer.attack
    model = trainer.attack_model
    objective = get_objective(trainer.loss.attack_objective())
    gen = torch.Generator(device=x.device).manual_seed(0)
    from advtrain.attacks.pgd import model_mode, start_mode
    from advtrain.attacks.threat import make_threat

    threat = make_threat(attack.norm, attack.eps)
    x0 = threat.init(x, start_mode(attack.random_start), gen)

    def grad(ctx: contextlib.AbstractContextManager[Any]) -> torch.Tensor:
        with model_mode(model, training=not attack.eval_mode), ctx:
            nat = None
            if needs_natural(objective):
                with torch.no_grad():
                    nat = model(x).float()
            xa = x0.clone().requires_grad_(True)
            value = objective(model(xa).float(), y, nat).sum()
            return torch.autograd.grad(value, xa)[0]

    with torch.autocast(x.device.type, enabled=False):
        ref = grad(contextlib.nullcontext())
    ours = grad(trainer.attack_autocast())
    return float((ours.sign() == ref.sign()).float().mean())


def _sides(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
    """(a full training step, the attack pass alone), each as a no-argument callable."""
    it = iter(range(10**9))
    objective = trainer.loss.attack_objective()

    def step() -> Any:
        return trainer.train_step(x, y, next(it))

    def attack() -> torch.Tensor:
        with trainer.attack_autocast():
            return trainer.attack(trainer.attack_model, x, y, objective=objective)

    return step, attack


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    images, labels, source = bench_data(ctx.data_root, s["batch_size"], seed=ctx.seed)
    x, y = to_float(images), labels
    results: dict[str, Any] = {"data": source, "per_loss": {}}
    rows, targets = [], []
    for loss in s["losses"]:
        trainers = {}
        base = None
        for name, attack_precision in (("fp32", False), ("bf16", "bf16")):
            cfg = train_config(
                model=s["model"],
                loss=loss,
                model_kwargs=s["model_kwargs"],
                batch_size=s["batch_size"],
                attack_kwargs={"steps": s["attack_steps"], "step_size": 2 / 255},
                trainer_kwargs={
                    "channels_last": s["channels_last"],
                    "autocast": s["autocast"],
                    "autocast_attack": attack_precision,
                },
            )
            torch.manual_seed(ctx.seed)
            trainer = build_trainer(cfg, ctx.device, model=copy.deepcopy(base) if base else None)
            base = base or copy.deepcopy(trainer.unwrapped_model)
            trainers[name] = trainer
        xb = x.to(ctx.device).contiguous(memory_format=trainers["fp32"].memory_format)
        yb = y.to(ctx.device)
        agreement = {n: first_step_sign_agreement(t, xb, yb) for n, t in trainers.items()}
        sides = {}
        for name, trainer in trainers.items():
            sides[f"step_{name}"], sides[f"attack_{name}"] = _sides(trainer, xb, yb)
        times = interleave(sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device)
        c_step = compare(times, "step_fp32", "step_bf16")
        c_attack = compare(times, "attack_fp32", "attack_bf16")
        results["per_loss"][loss] = {
            "step": c_step,
            "attack": c_attack,
            "sign_agreement": agreement,
            "autocast": str(trainers["fp32"].autocast_dtype),
        }
        rows.append(
            {
                "loss": loss,
                "attack steps": s["attack_steps"],
                "step fp32-attack s": c_step["step_fp32_s"]["median"],
                "step bf16-attack s": c_step["step_bf16_s"]["median"],
                "step ratio fp32/bf16": c_step["ratio"],
                "attack ratio fp32/bf16": c_attack["ratio"],
                "sign agreement fp32": agreement["fp32"],
                "sign agreement bf16": agreement["bf16"],
            }
        )
        log.info(
            "attack_precision %s: step fp32/bf16 %.3f, attack %.3f, signs fp32 %.3f bf16 %.3f",
            loss,
            c_step["ratio"],
            c_attack["ratio"],
            agreement["fp32"],
            agreement["bf16"],
        )
        targets.append(
            Target(
                f"{loss}: default (fp32) attack, first-step sign agreement with fp32",
                agreement["fp32"],
                s["min_sign_agreement"],
                ">=",
                note=f"bf16 opt-in: {agreement['bf16']:.3f}; step time fp32/bf16 "
                f"{c_step['ratio']:.3f}",
            )
        )
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[
            (
                f"{s['model']} {s['model_kwargs']}, batch {s['batch_size']}, natural pass "
                f"autocast={s['autocast']}, {s['repeats']} interleaved rounds",
                rows,
            )
        ],
        targets=targets,
        notes=[
            f"data: {source}",
            "step ratio = median over rounds of (fp32-attack step / bf16-attack step): the price "
            "of the precision policy per training step; attack ratio: the attack pass alone.",
            "sign agreement: share of input-gradient signs at the attack's start point equal to "
            "an fp32 reference (1.0 = the attack follows the fp32 direction exactly).",
        ],
    )
