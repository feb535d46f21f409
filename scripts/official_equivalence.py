#!/usr/bin/env python
"""Run the official GKL / IKL training script and `+exp=cifar10_gkl` side by side, step by step.

    python scripts/official_equivalence.py /path/to/DKL [--variant both] [--epochs 4 --steps-per-epoch 4]

OFFICIAL_DIR is a checkout of github.com/jiequancui/DKL (nothing of it is copied into this repository):
`DKLv2/Adv-training-dkl/train_dkl_cifar10.py` is the GKL script, `DKLv1/Adv-training-dkl/train_dkl_cifar10.py`
the IKL one (a folder that itself holds `train_dkl_cifar10.py` is taken as the GKL folder). The script is imported
as a module and its own `main()` runs the official loop: its model class, optimiser, `adjust_learning_rate_cosine`,
`train()`, `perturb_input`, `TradesAWP`, per-epoch checkpoints; its `swa.py` then averages those checkpoints.
Our side is `advtrain`'s own assembly of `+exp=cifar10_gkl` (or `+exp=cifar10_ikl`): Hydra composition,
`validate_config`, `model_from_config`, `build_loss`, `build_attack`, `assemble_trainer`, `Trainer.fit`.

Both loops get the same initial weights (the official model's, loaded into ours), the same batches in the same order
without augmentation, and the same attack start noise (drawn once per step by this harness and handed to both
through `torch.randn`). docs/official_equivalence.md lists every shim; in short, for the official module:

* `sys.argv` is the official shell script's arguments (sh/train_dkl_cifar10.sh) plus `--no-cuda`, the tiny
  `--arch`, `--epochs`, `--batch-size`, `--awp-warmup` and a temporary `--model-dir`;
* at import, `torchvision.datasets.CIFAR10` is a stand-in (no download; the loaders are replaced right after);
  a missing `progress` package is replaced by an inert stand-in;
* while the official code runs, `Tensor.cuda()` returns the tensor itself (the two `.cuda()` calls of `train()`
  have no `--no-cuda` path) and, in float64, `Tensor.float()` converts to float64 (its one-hot labels would
  otherwise be float32 and the matrix products would refuse the mixed dtypes);
* `Bar`, `AverageMeter`, `train`, `perturb_input` and `adjust_learning_rate_cosine` are wrapped to record the
  step (they call the originals unchanged).

Reported per step: loss, adversarial accuracy, and the max relative difference (max |ours - official| / max
|official|, per tensor, maximum over tensors) of x_adv, of the class-weight matrix in use and of the weights after
the step; per epoch: the lr, the newly collected class-weight matrix and the averaged weights (ours online,
official from `swa.py`). With `--compare-ema`, also the script's in-loop EMA (`exp_avgs`, computed but never saved)
against our `trainer.ema_decay`, for information.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

VARIANTS = {"gkl": ("DKLv2", "cifar10_gkl"), "ikl": ("DKLv1", "cifar10_ikl")}
SCRIPT = "train_dkl_cifar10.py"
# The official module's own top-level imports that share generic names (cleared between the two versions).
_OFFICIAL_MODULE_NAMES = (
    "models",
    "utils",
    "utils_awp",
    "utils_awp_kl",
    "autoaug",
    "dataset",
    "progress",
)
TARGET = 1e-5
OFFICIAL_EMA_TAU = 0.9996  # the script's tau_list


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


@dataclass
class Setting:
    epochs: int = 4
    steps: int = 4
    batch: int = 32
    depth: int = 10
    width: int = 1
    awp_warmup: int = 2
    seed: int = 0
    dtype: str = "float64"
    data: str = "auto"
    keep_float64_logits: bool = False
    compare_ema: bool = False
    ours_overrides: list[str] = field(default_factory=list)
    official_args: list[str] = field(default_factory=list)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float64": torch.float64, "float32": torch.float32}[self.dtype]

    @property
    def ema_start(self) -> int:
        """The official loop's in-loop EMA start epoch, `start_wa = (150 * epochs) // 200` (tau 0.9996)."""
        return (150 * self.epochs) // 200


def official_argv(variant: str, s: Setting, model_dir: Path) -> list[str]:
    """The official shell script's arguments (sh/train_dkl_cifar10.sh, run 1) at the harness's size."""
    argv = [
        SCRIPT,
        "--arch", "EquivWideResNet",
        "--data", "CIFAR10",
        "--train_budget", "high",
        "--mark", "equivalence",
        "--epsilon", "8",
        "--lr", "0.2",
        "--beta", "20.0",
        "--alpha", "4.0",
        "--T", "4.0",
        "--seed", "0",
        "--epochs", str(s.epochs),
        "--batch-size", str(s.batch),
        "--awp-warmup", str(s.awp_warmup),
        "--no-cuda",
        "--model-dir", str(model_dir),
    ]  # fmt: skip
    if variant == "gkl":
        argv += ["--gamma", "1.0"]  # GKL's weight power; in DKLv1 --gamma is the autoaug weight
    return argv + list(s.official_args)


def ours_overrides(variant: str, s: Setting, run_dir: Path) -> list[str]:
    """`+exp=cifar10_gkl` at the harness's size; the other keys switch off what the comparison cannot use."""
    return [
        f"+exp={VARIANTS[variant][1]}",
        f"model.depth={s.depth}",
        f"model.widen_factor={s.width}",
        f"trainer.epochs={s.epochs}",
        f"data.batch_size={s.batch}",
        f"trainer.awp_warmup_epochs={s.awp_warmup}",
        f"seed={s.seed}",
        "device=cpu",
        "data.augment=false",  # both loops are fed the same fixed batches
        "data.val_size=0",  # no held-out split (deliberate difference 3 of the exp header)
        "trainer.test_examples=0",
        f"trainer.eval_every={s.epochs}",
        "trainer.progress=false",
        "trainer.channels_last=false",
        "trainer.autocast=false",
        "trainer.compile=false",
        *(
            # --compare-ema: our iteration EMA, blending from the epoch after the official start_wa (see compare()).
            [f"trainer.ema_decay={OFFICIAL_EMA_TAU}", f"trainer.ema_start_epoch={s.ema_start + 1}"]
            if s.compare_ema
            else []
        ),
        f"run_dir={run_dir}",
        *s.ours_overrides,
    ]


# --------------------------------------------------------------------------------------------------
# data and noise, shared by both loops
# --------------------------------------------------------------------------------------------------


def make_batches(s: Setting) -> tuple[list[list[tuple[torch.Tensor, torch.Tensor]]], str]:
    """Per epoch, the `steps` batches of our TrainLoader (no augmentation) over steps * batch images.

    CIFAR-10 training images when `$ADVTRAIN_DATA_DIR` (or ./data) has them, else seeded random images.
    Batches are converted once to the run's dtype and handed to both loops as the very same tensors.
    """
    from advtrain.data import TrainLoader
    from advtrain.data.datasets import load_arrays

    n = s.steps * s.batch
    source = s.data
    images = labels = None
    if source in ("auto", "cifar10"):
        try:
            root = os.environ.get("ADVTRAIN_DATA_DIR", "./data")
            images, labels = load_arrays("cifar10", root, "train")
            images, labels = images[:n].clone(), labels[:n].clone()
            source = f"CIFAR-10 training images 0..{n - 1}"
        except Exception as exc:  # noqa: BLE001 - any failure to read CIFAR falls back (auto) or fails (cifar10)
            if s.data == "cifar10":
                raise SystemExit(
                    f"error: cannot read CIFAR-10 ({exc}); set ADVTRAIN_DATA_DIR"
                ) from None
    if images is None:
        gen = torch.Generator().manual_seed(1234 + s.seed)
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        labels = (torch.arange(n) % 10)[torch.randperm(n, generator=gen)]  # every class, if n >= 10
        source = f"{n} seeded random uint8 images (CIFAR-10 not found)"
    missing = sorted(set(range(10)) - set(labels.tolist()))
    if missing:
        print(
            f"warning: classes {missing} have no image in the {n} used; the official class matrix gets 0/0 (NaN) "
            "rows for them (ours keeps the previous row): use more steps or a larger batch",
            file=sys.stderr,
        )
    loader = TrainLoader(images, labels, batch_size=s.batch, augment=False, seed=s.seed)
    epochs = []
    for epoch in range(1, s.epochs + 1):
        loader.set_epoch(epoch)
        epochs.append([(x.to(s.torch_dtype), y.clone()) for x, y in loader])
    return epochs, source


def make_noise(s: Setting) -> list[torch.Tensor]:
    """One N(0, 1) draw per step (shape of a batch), the start of both attacks: x + 0.001 * noise."""
    gen = torch.Generator().manual_seed(10_000 + s.seed)
    return [
        torch.randn((s.batch, 3, 32, 32), generator=gen, dtype=torch.float64)
        for _ in range(s.epochs * s.steps)
    ]


class NoiseReplay:
    """`torch.randn` that returns the harness's draw for calls shaped like a batch, the real one otherwise.

    Both the official `perturb_input` (`torch.randn(x_natural.shape)`) and our PGD start
    (`torch.randn(shape, generator=..., dtype=...)`) call `torch.randn`; each step must take exactly one draw.
    """

    def __init__(self, noise: Sequence[torch.Tensor]) -> None:
        self.noise = list(noise)
        self.used = 0
        self._real: Callable[..., torch.Tensor] | None = None

    def _randn(self, *size: Any, **kwargs: Any) -> torch.Tensor:
        assert self._real is not None
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], Sequence) else tuple(size)
        if self.used < len(self.noise) and shape == tuple(self.noise[0].shape):
            draw = self.noise[self.used]
            self.used += 1
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            return draw.to(dtype=dtype, device=kwargs.get("device") or "cpu").clone()
        return self._real(*size, **kwargs)

    @contextlib.contextmanager
    def active(self) -> Iterator[NoiseReplay]:
        self._real = torch.randn
        torch.randn = self._randn  # type: ignore[assignment]
        try:
            yield self
        finally:
            torch.randn = self._real  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """What one loop did: per step and per epoch."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    initial_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0


def plain_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy without DataParallel's `module.` prefix."""
    return {k.removeprefix("module."): v.detach().clone() for k, v in sd.items()}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
    if not torch.equal(nan_a, nan_b):
        return float(
            "inf"
        )  # NaN on one side only (e.g. the official 0/0 row of a class without samples)
    a64, b64 = a64.nan_to_num(0.0), b64.nan_to_num(0.0)
    num = (a64 - b64).abs().max().item() if a64.numel() else 0.0
    den = b64.abs().max().item() if b64.numel() else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _scalar_rel(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else float("inf")
    return abs(a - b) / abs(b) if b else abs(a - b)


def state_diff(
    ours: dict[str, torch.Tensor], official: dict[str, torch.Tensor]
) -> tuple[float, str]:
    """Max relative difference over the floating-point tensors (weights and BN statistics), and its tensor."""
    if set(ours) != set(official):
        raise ValueError(f"state keys differ: {sorted(set(ours) ^ set(official))}")
    worst, name = 0.0, ""
    for key, ref in official.items():
        if "num_batches_tracked" in key:
            continue
        d = rel_diff(ours[key], ref)
        if d > worst or not name:
            worst, name = d, key
    return worst, name


# --------------------------------------------------------------------------------------------------
# the official loop
# --------------------------------------------------------------------------------------------------


def find_script_dir(official_dir: Path, variant: str) -> Path:
    folder = official_dir / VARIANTS[variant][0] / "Adv-training-dkl"
    if (folder / SCRIPT).is_file():
        return folder
    if variant == "gkl" and (official_dir / SCRIPT).is_file():
        return official_dir
    raise SystemExit(
        f"error: {folder / SCRIPT} not found; OFFICIAL_DIR must be a checkout of github.com/jiequancui/DKL "
        f"(with {VARIANTS[variant][0]}/)"
    )


def official_commit(official_dir: Path) -> str:
    for base in (official_dir, *official_dir.parents):
        f = base / "COMMIT"
        if f.is_file():
            return f.read_text().strip()
        if (base / ".git").exists():
            out = subprocess.run(
                ["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True, text=True
            )
            return out.stdout.strip() or "unknown"
    return "unknown"


class _InertBar:
    """Stand-in for `progress.bar.Bar` (only needed when the `progress` package is not installed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.suffix = ""
        self.elapsed_td = self.eta_td = ""

    def next(self) -> None:
        pass

    def finish(self) -> None:
        pass


class _StandInCIFAR(torch.utils.data.Dataset):
    """What `datasets.CIFAR10(...)` returns at import: one blank image (the loaders are replaced after)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 32, 32), 0


@contextlib.contextmanager
def _official_import_context(script_dir: Path, argv: list[str]) -> Iterator[None]:
    import numpy as np
    import torchvision

    saved_modules = {
        k: v for k, v in sys.modules.items() if k.split(".")[0] in _OFFICIAL_MODULE_NAMES
    }
    for k in saved_modules:
        del sys.modules[k]
    if importlib.util.find_spec("progress") is None:
        stub = types.ModuleType("progress")
        bar = types.ModuleType("progress.bar")
        bar.Bar = _InertBar  # type: ignore[attr-defined]
        stub.bar = bar  # type: ignore[attr-defined]
        sys.modules["progress"], sys.modules["progress.bar"] = stub, bar
    # NumPy 2 removed the aliases the 2023 code still uses (autoaug.py: np.int; --awp-gamma 0: np.infty).
    aliases = {k: v for k, v in (("int", int), ("infty", np.inf)) if not hasattr(np, k)}
    for k, v in aliases.items():
        setattr(np, k, v)
    saved_argv, saved_cifar = sys.argv, torchvision.datasets.CIFAR10
    sys.argv = argv
    torchvision.datasets.CIFAR10 = _StandInCIFAR  # type: ignore[misc]
    sys.path.insert(0, str(script_dir))
    try:
        yield
    finally:
        sys.path.remove(str(script_dir))
        sys.argv = saved_argv
        torchvision.datasets.CIFAR10 = saved_cifar  # type: ignore[misc]
        for k in aliases:
            delattr(np, k)
        for k in [k for k in sys.modules if k.split(".")[0] in _OFFICIAL_MODULE_NAMES]:
            del sys.modules[k]
        sys.modules.update(saved_modules)


@contextlib.contextmanager
def _official_run_context(dtype: torch.dtype) -> Iterator[None]:
    """`Tensor.cuda()` -> the tensor itself; in float64, `Tensor.float()` -> float64."""
    saved_cuda, saved_float = torch.Tensor.cuda, torch.Tensor.float
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    if dtype == torch.float64:
        torch.Tensor.float = lambda self, *a, **k: self.to(torch.float64)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.float = saved_cuda, saved_float  # type: ignore[method-assign]


class _EpochBatches:
    """The official `train_loader`: iterates the batches of the epoch the `train` wrapper announced."""

    def __init__(self, batches: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.batches = batches
        self.epoch = 1

    def __len__(self) -> int:
        return len(self.batches[self.epoch - 1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches[self.epoch - 1])


def run_official(
    script_dir: Path,
    variant: str,
    s: Setting,
    batches: list[list[tuple[torch.Tensor, torch.Tensor]]],
    noise: list[torch.Tensor],
    workdir: Path,
    log: io.StringIO,
) -> Trace:
    trace = Trace()
    model_dir = workdir / "official"
    argv = official_argv(variant, s, model_dir)
    name = f"official_{variant}_{os.getpid()}_{id(trace)}"
    spec = importlib.util.spec_from_file_location(name, script_dir / SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    with _official_import_context(script_dir, argv), contextlib.redirect_stdout(log):
        spec.loader.exec_module(
            mod
        )  # parses argv, makes the model dir, seeds; its main() does not run
        # The official network class at the harness's size, under the name --arch asks for.
        mod.models.EquivWideResNet = functools.partial(
            mod.models.WideResNet, depth=s.depth, widen_factor=s.width
        )
        loader = _EpochBatches(batches)
        mod.train_loader = loader
        mod.test_loader = []  # the per-epoch test accuracy on the test set is only logged
        replay = NoiseReplay(noise)
        meters: list[Any] = []
        current: dict[str, Any] = {}

        class RecordingMeter(mod.AverageMeter):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                super().__init__()
                meters.append(self)

        class RecordingBar(_InertBar):
            """The official loop calls `bar.next()` once per batch, after the step, AWP restore and EMA."""

            def next(self) -> None:
                if "model" not in current:  # test() also draws a bar
                    return
                model, optimizer = current["model"], current["optimizer"]
                trace.steps.append(
                    {
                        "epoch": current["epoch"],
                        "loss": float(meters[1].val),
                        "adv_acc": float(meters[2].val) / 100.0,
                        "lr": float(optimizer.param_groups[0]["lr"]),
                        "x_adv": current.pop("x_adv"),
                        "budget": current.pop("budget"),
                        "class_weights": current["weights_in_use"],
                        "state": plain_state(model.state_dict()),
                        "noise_used": replay.used,
                        # The in-loop EMA (`exp_avgs`): meaningful from its start epoch on (before, model_tau's init).
                        "ema": plain_state(dict(current["exp_avgs"][0]))
                        if s.compare_ema and current["epoch"] >= current["start_wa"][0]
                        else None,
                    }
                )

        original_train, original_perturb = mod.train, mod.perturb_input
        original_lr = mod.adjust_learning_rate_cosine
        train_sig = inspect.signature(original_train)
        perturb_sig = inspect.signature(original_perturb)

        def train(*args: Any, **kwargs: Any) -> Any:
            bound = train_sig.bind(*args, **kwargs)
            epoch = int(bound.arguments["epoch"])
            model = bound.arguments["model"]
            if trace.initial_state is None:
                trace.initial_state = plain_state(model.state_dict())
            weight = bound.arguments.get("weight")
            c = int(mod.NUM_CLASSES)
            in_use = torch.ones(c, c, dtype=s.torch_dtype) / c if weight is None else weight
            loader.epoch = epoch
            meters.clear()
            current.clear()
            current.update(
                epoch=epoch,
                model=model,
                optimizer=bound.arguments["optimizer"],
                weights_in_use=in_use.detach().clone(),
                exp_avgs=bound.arguments["exp_avgs"],
                start_wa=list(bound.arguments["start_wa"]),
            )
            if s.compare_ema and current["start_wa"] != [s.ema_start]:
                raise RuntimeError(
                    f"official start_wa {current['start_wa']}, expected [{s.ema_start}]"
                )
            out = original_train(*args, **kwargs)
            current.clear()
            trace.epochs[-1]["class_weights_new"] = out[2].detach().clone()
            return out

        def perturb_input(*args: Any, **kwargs: Any) -> Any:
            bound = perturb_sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            current["budget"] = (
                float(a["epsilon"]),
                float(a["step_size"]),
                int(a["perturb_steps"]),
            )
            x_adv = original_perturb(*args, **kwargs)
            current["x_adv"] = x_adv.detach().clone()
            return x_adv

        def adjust_learning_rate_cosine(optimizer: Any, epoch: int) -> float:
            lr = original_lr(optimizer, epoch)
            trace.epochs.append({"epoch": int(epoch), "lr": float(lr)})
            return lr

        mod.Bar, mod.AverageMeter = RecordingBar, RecordingMeter
        mod.train, mod.perturb_input = train, perturb_input
        mod.adjust_learning_rate_cosine = adjust_learning_rate_cosine

        t0 = time.perf_counter()
        with _official_run_context(s.torch_dtype), replay.active():
            mod.main()
        # The average the recipe uses: the official swa.py over the per-epoch checkpoints, for each epoch end.
        swa = script_dir / "swa.py"
        saved_argv = sys.argv
        try:
            for epoch in range(1, s.epochs + 1):
                sys.argv = [str(swa), str(model_dir / "equivalence"), "0.9", "1", str(epoch)]
                runpy.run_path(str(swa), run_name="__main__")
                path = model_dir / "equivalence" / f"ours-model-epoch-SWA0.91{epoch}.pt"
                trace.epochs[epoch - 1]["average"] = plain_state(
                    torch.load(path, map_location="cpu")
                )
        finally:
            sys.argv = saved_argv
        trace.seconds = time.perf_counter() - t0
    if replay.used != len(trace.steps):
        raise RuntimeError(
            f"official loop took {replay.used} noise draws in {len(trace.steps)} steps"
        )
    return trace


# --------------------------------------------------------------------------------------------------
# our loop
# --------------------------------------------------------------------------------------------------


class _FixedBatches:
    """A TrainLoader-shaped source of the precomputed batches (len, iter, set_epoch, state_dict)."""

    def __init__(self, batches: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.batches = batches
        self._epoch = 0
        self._index = 0

    def __len__(self) -> int:
        return len(self.batches[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._index = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batch_index": self._index, "seed": 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch, self._index = int(state["epoch"]), int(state["batch_index"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        for i in range(self._index, len(self)):
            self._index = i + 1
            yield self.batches[epoch - 1][i]
        self._epoch, self._index = epoch + 1, 0


@contextlib.contextmanager
def _keep_float64(enabled: bool) -> Iterator[None]:
    """`Tensor.float()` leaves float64 tensors in float64 (our trainer's logits cast, `--keep-float64-logits`)."""
    if not enabled:
        yield
        return
    saved = torch.Tensor.float

    def as_float(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        return self if self.dtype == torch.float64 else saved(self, *a, **k)

    torch.Tensor.float = as_float  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = saved  # type: ignore[method-assign]


def compose_ours(overrides: list[str]) -> dict[str, Any]:
    """The resolved training config, composed as `python -m advtrain train` composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from advtrain.config import register_resolvers
    from advtrain.resources import config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    out.pop("hydra", None)
    return {str(k): v for k, v in out.items()}


def run_ours(
    variant: str,
    s: Setting,
    batches: list[list[tuple[torch.Tensor, torch.Tensor]]],
    noise: list[torch.Tensor],
    initial_state: dict[str, torch.Tensor],
    workdir: Path,
) -> tuple[Trace, dict[str, Any]]:
    from advtrain.config import validate_config
    from advtrain.engine.build import assemble_trainer, build_attack, build_loss
    from advtrain.engine.hooks import Callback
    from advtrain.models.loading import model_from_config

    run_dir = workdir / f"ours_{variant}"
    cfg = validate_config(compose_ours(ours_overrides(variant, s, run_dir)), 1)
    trace = Trace()
    model = model_from_config(cfg).to(s.torch_dtype)
    model.load_state_dict(initial_state, strict=True)
    loss = build_loss(cfg).to(s.torch_dtype)
    attack, schedule = build_attack(cfg)
    trainer = assemble_trainer(
        cfg,
        model=model,
        loss=loss,
        attack=attack,
        schedule=schedule,
        device=torch.device("cpu"),
        steps_per_epoch=s.steps,
        run_dir=run_dir,
        train_loader=_FixedBatches(batches),
    )
    replay = NoiseReplay(noise)
    current: dict[str, Any] = {}

    class Recorder(Callback):
        name = "equivalence_recorder"

        def before_update(self, loop: Any, batch: Any) -> None:
            current["x_adv"] = batch.x_adv.detach().clone()
            current["budget"] = (
                float(loop.attack.eps),
                float(loop.attack.step_size),
                int(loop.attack.steps),
            )

        def on_epoch_start(self, loop: Any, epoch: int) -> None:
            trace.epochs.append({"epoch": epoch, "lr": float(trainer.lr_schedule(epoch, 0))})

        def on_epoch_end(self, loop: Any, epoch: int) -> None:
            # After the loss published the new class matrix and the epoch average took this epoch.
            trace.epochs[-1]["class_weights_new"] = loop.loss.tracker.weights.detach().clone()
            avg = trainer._averaged_model()
            trace.epochs[-1]["average"] = None if avg is None else plain_state(avg.state_dict())

    trainer.callbacks.append(Recorder())
    ema = [cb for cb in trainer.callbacks if cb.name == "ema"]
    step = trainer.train_step

    def recorded_step(x: torch.Tensor, y: torch.Tensor, iteration: int) -> Any:
        weights_in_use = trainer.loss.tracker.weights.detach().clone()
        metrics = step(x, y, iteration)
        trace.steps.append(
            {
                "epoch": trainer.epoch,
                "loss": float(metrics["loss"]),
                "adv_acc": float(metrics["adv_acc"]),
                "lr": float(trainer.optimizer.param_groups[0]["lr"]),
                "x_adv": current.pop("x_adv"),
                "budget": current.pop("budget"),
                "class_weights": weights_in_use,
                "state": plain_state(trainer.unwrapped_model.state_dict()),
                "noise_used": replay.used,
                "ema": plain_state(ema[0].module.state_dict()) if ema else None,
            }
        )
        return metrics

    trainer.train_step = recorded_step  # type: ignore[method-assign]
    t0 = time.perf_counter()
    with replay.active(), _keep_float64(s.keep_float64_logits):
        trainer.fit()
    trace.seconds = time.perf_counter() - t0
    if replay.used != len(trace.steps):
        raise RuntimeError(f"our loop took {replay.used} noise draws in {len(trace.steps)} steps")
    info = {
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks if cb.name != Recorder.name],
        "loss": repr(trainer.loss),
        "schedule": repr(schedule),
    }
    return trace, info


# --------------------------------------------------------------------------------------------------
# comparison and output
# --------------------------------------------------------------------------------------------------


def compare(ours: Trace, official: Trace) -> dict[str, Any]:
    if len(ours.steps) != len(official.steps):
        raise RuntimeError(
            f"step counts differ: ours {len(ours.steps)}, official {len(official.steps)}"
        )
    steps = []
    for i, (a, b) in enumerate(zip(ours.steps, official.steps, strict=True)):
        w, where = state_diff(a["state"], b["state"])
        steps.append(
            {
                "step": i + 1,
                "epoch": b["epoch"],
                "lr_official": b["lr"],
                "lr_rel_diff": abs(a["lr"] - b["lr"]) / abs(b["lr"]),
                "eps_official": b["budget"][0],
                "attack_official": f"{b['budget'][2]} x {b['budget'][1]:.6g}",
                "budget_rel_diff": max(
                    abs(a["budget"][0] - b["budget"][0]) / b["budget"][0],
                    abs(a["budget"][1] - b["budget"][1]) / b["budget"][1],
                    float(a["budget"][2] != b["budget"][2]),
                ),
                "loss_official": b["loss"],
                "loss_ours": a["loss"],
                "loss_rel_diff": _scalar_rel(a["loss"], b["loss"]),
                "adv_acc_official": b["adv_acc"],
                "adv_acc_ours": a["adv_acc"],
                "x_adv_rel_diff": rel_diff(a["x_adv"], b["x_adv"]),
                # Pixels that moved to another point (a flipped gradient sign), not a rounding difference.
                "x_adv_moved_fraction": float(
                    ((a["x_adv"] - b["x_adv"]).abs() > 1e-9).double().mean()
                ),
                "class_weights_rel_diff": rel_diff(a["class_weights"], b["class_weights"]),
                "weights_rel_diff": w,
                "weights_worst_tensor": where,
            }
        )
        if a.get("ema") is not None and b.get("ema") is not None:
            steps[-1]["ema_rel_diff"] = state_diff(a["ema"], b["ema"])[0]
    epochs = []
    for a, b in zip(ours.epochs, official.epochs, strict=True):
        row = {
            "epoch": b["epoch"],
            "lr_official": b["lr"],
            "lr_rel_diff": abs(a["lr"] - b["lr"]) / abs(b["lr"]),
            "class_weights_new_rel_diff": rel_diff(a["class_weights_new"], b["class_weights_new"]),
            # How far the official matrix is from uniform: the class weights really act from the next epoch.
            "class_weights_new_from_uniform": float(
                (b["class_weights_new"] - 1.0 / b["class_weights_new"].shape[0]).abs().max()
            ),
        }
        if a.get("average") is None:
            row["average_rel_diff"], row["average_worst_tensor"] = (
                float("inf"),
                "(ours has no average)",
            )
        else:
            row["average_rel_diff"], row["average_worst_tensor"] = state_diff(
                a["average"], b["average"]
            )
        epochs.append(row)
    worst = max(r["weights_rel_diff"] for r in steps)
    nonfinite = sum(
        not (math.isfinite(r["loss_official"]) and math.isfinite(r["loss_ours"])) for r in steps
    )
    return {
        "steps": steps,
        "epochs": epochs,
        "max": {
            "weights_rel_diff": worst,
            "x_adv_rel_diff": max(r["x_adv_rel_diff"] for r in steps),
            "class_weights_rel_diff": max(
                [r["class_weights_rel_diff"] for r in steps]
                + [r["class_weights_new_rel_diff"] for r in epochs]
            ),
            "loss_rel_diff": max(r["loss_rel_diff"] for r in steps),
            "average_rel_diff": max(r["average_rel_diff"] for r in epochs),
            "lr_rel_diff": max(r["lr_rel_diff"] for r in steps + epochs),
            "budget_rel_diff": max(r["budget_rel_diff"] for r in steps),
            "adv_acc_mismatches": sum(r["adv_acc_official"] != r["adv_acc_ours"] for r in steps),
            "nonfinite_loss_steps": nonfinite,
            # Informational (--compare-ema): the script's unsaved in-loop EMA against our trainer.ema_decay.
            "ema_rel_diff": max(
                (r["ema_rel_diff"] for r in steps if "ema_rel_diff" in r), default=None
            ),
        },
        "first_step_above_target": next(
            (r["step"] for r in steps if r["weights_rel_diff"] >= TARGET), None
        ),
        "within_target": worst < TARGET and nonfinite == 0,
    }


def _md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = []
    for r in rows:
        body.append(
            "| "
            + " | ".join(
                "-" if c[0] not in r else format(r[c[0]], c[2]) if c[2] else str(r[c[0]])
                for c in cols
            )
            + " |"
        )
    return "\n".join([head, sep, *body])


STEP_COLS = [
    ("step", "step", ""),
    ("epoch", "epoch", ""),
    ("lr_official", "lr", ".5g"),
    ("eps_official", "eps_t", ".5g"),
    ("attack_official", "attack steps x size", ""),
    ("loss_official", "loss official", ".10g"),
    ("loss_ours", "loss ours", ".10g"),
    ("adv_acc_official", "adv acc official", ".4f"),
    ("adv_acc_ours", "adv acc ours", ".4f"),
    ("x_adv_rel_diff", "x_adv rel diff", ".2e"),
    ("x_adv_moved_fraction", "x_adv moved", ".2e"),
    ("class_weights_rel_diff", "W rel diff", ".2e"),
    ("weights_rel_diff", "weights rel diff", ".2e"),
    ("weights_worst_tensor", "worst tensor", ""),
]
EPOCH_COLS = [
    ("epoch", "epoch", ""),
    ("lr_official", "lr", ".6g"),
    ("lr_rel_diff", "lr rel diff", ".1e"),
    ("class_weights_new_from_uniform", "new W: max abs from 1/C", ".3f"),
    ("class_weights_new_rel_diff", "new W rel diff", ".2e"),
    ("average_rel_diff", "swa.py average rel diff", ".2e"),
    ("average_worst_tensor", "worst tensor", ""),
]


def write_results(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "equivalence.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [
        "# Official loop vs `+exp=cifar10_gkl`: step-by-step comparison (generated)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Official commit: `{report['official_commit']}`; advtrain commit: `{report['advtrain_commit']}`; machine: {report['machine']['cpu']} "
        f"({report['machine']['threads']} thread(s)), torch {report['machine']['torch']}, "
        f"python {report['machine']['python']}.",
        "",
        f"Setting: {report['setting_text']}",
        "",
        "Relative difference of a tensor: max |ours - official| / max |official|; for weights the maximum over the "
        "model's floating-point tensors (parameters and BatchNorm statistics). Target after every step: "
        f"< {TARGET:g}.",
        "",
    ]
    for run in report["runs"]:
        cmp = run["comparison"]
        m = cmp["max"]
        lines += [
            f"## {run['label']}",
            "",
            f"Official `{run['official_script']}` vs `{run['ours_exp']}` ({run['ours_mode']}). Wall time: official "
            f"{run['official_seconds']:.1f} s, ours {run['ours_seconds']:.1f} s.",
            "",
            f"**Max over all steps: weights {m['weights_rel_diff']:.2e}, x_adv {m['x_adv_rel_diff']:.2e}, class "
            f"weights {m['class_weights_rel_diff']:.2e}, loss {m['loss_rel_diff']:.2e}, swa.py average "
            f"{m['average_rel_diff']:.2e}, lr {m['lr_rel_diff']:.1e}, attack budget {m['budget_rel_diff']:.1e}; "
            f"adversarial-accuracy mismatches {m['adv_acc_mismatches']}. "
            + (
                ""
                if m.get("ema_rel_diff") is None
                else f"Informational, not part of the target: the script's unsaved in-loop EMA against our "
                f"trainer.ema_decay={OFFICIAL_EMA_TAU} differs by up to {m['ema_rel_diff']:.2e}. "
            )
            + f"{'Within' if cmp['within_target'] else 'NOT within'} the target.**",
            "",
            _md_table(
                cmp["steps"],
                STEP_COLS
                + (
                    [("ema_rel_diff", "in-loop EMA rel diff", ".2e")]
                    if m.get("ema_rel_diff") is not None
                    else []
                ),
            ),
            "",
            _md_table(cmp["epochs"], EPOCH_COLS),
            "",
        ]
    (out / "table.md").write_text("\n".join(lines))
    _plot(out / "rel_weight_diff.png", report)


def _plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = 1e-18
    for run in report["runs"]:
        steps = run["comparison"]["steps"]
        ax.semilogy(
            [r["step"] for r in steps],
            [max(r["weights_rel_diff"], floor) for r in steps],
            marker="o",
            label=run["label"],
        )
    steps = report["runs"][0]["comparison"]["steps"]
    for r in steps[1:]:
        if r["epoch"] != steps[r["step"] - 2]["epoch"]:
            ax.axvline(r["step"] - 0.5, color="grey", lw=0.5, ls=":")
    ax.axhline(TARGET, color="red", lw=1, ls="--", label=f"target {TARGET:g}")
    ax.set_xlabel("optimiser step (dotted lines: epoch boundaries)")
    ax.set_ylabel("max relative weight difference")
    ax.set_title("ours vs official, after every step", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def our_commit() -> str:
    """This repository's commit, with `+dirty` when the working tree has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def run_variant(
    official_dir: Path, variant: str, s: Setting, workdir: Path, log: io.StringIO, modes: list[bool]
) -> list[dict[str, Any]]:
    script_dir = find_script_dir(official_dir, variant)
    batches, source = make_batches(s)
    noise = make_noise(s)
    saved_dtype = torch.get_default_dtype()
    torch.set_default_dtype(s.torch_dtype)
    try:
        official = run_official(script_dir, variant, s, batches, noise, workdir / variant, log)
        assert official.initial_state is not None
        runs = []
        for keep in modes:
            ours_s = copy.copy(s)
            ours_s.keep_float64_logits = keep
            ours, info = run_ours(
                variant, ours_s, batches, noise, official.initial_state, workdir / variant
            )
            mode = (
                "logits kept in float64 (--keep-float64-logits)"
                if keep
                else "as shipped (the trainer casts logits with .float())"
            )
            runs.append(
                {
                    "label": f"{variant.upper()}, ours {'logits float64' if keep else 'as shipped'}",
                    "variant": variant,
                    "official_script": str(script_dir.relative_to(official_dir) / SCRIPT)
                    if script_dir != official_dir
                    else SCRIPT,
                    "ours_exp": f"+exp={VARIANTS[variant][1]}",
                    "ours_mode": mode,
                    "ours_overrides": ours_overrides(variant, s, Path("<tmp>")),
                    "official_argv": official_argv(variant, s, Path("<tmp>")),
                    "ours_objects": info,
                    "data": source,
                    "official_seconds": official.seconds,
                    "ours_seconds": ours.seconds,
                    "comparison": compare(ours, official),
                }
            )
        return runs
    finally:
        torch.set_default_dtype(saved_dtype)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("official_dir", type=Path, help="checkout of github.com/jiequancui/DKL")
    p.add_argument("--variant", choices=["gkl", "ikl", "both"], default="both")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=4)
    p.add_argument(
        "--batch", type=int, default=32, help="a power of two keeps the batch-mean scale exact"
    )
    p.add_argument("--depth", type=int, default=10, help="WideResNet depth (6n + 4)")
    p.add_argument("--width", type=int, default=1, help="WideResNet widen factor")
    p.add_argument("--awp-warmup", type=int, default=2, help="first AWP epoch, on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--data", choices=["auto", "cifar10", "random"], default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--ours-mode",
        choices=["both", "shipped", "float64-logits"],
        default="both",
        help="our trainer as shipped (it casts logits with .float(), i.e. to float32), with float64 logits kept, "
        "or both",
    )
    p.add_argument(
        "--ours-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for our side (e.g. to inject a deliberate difference)",
    )
    p.add_argument(
        "--official-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the official script (e.g. --official-arg=--awp-gamma=0.01)",
    )
    p.add_argument(
        "--compare-ema",
        action="store_true",
        help="also compare the script's in-loop EMA (exp_avgs, never saved) with our trainer.ema_decay "
        "(not part of +exp=cifar10_gkl)",
    )
    p.add_argument("--out", type=Path, default=Path("results/official_equivalence"))
    p.add_argument("--no-write", action="store_true", help="print the summary only")
    return p.parse_args(argv)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Setting(
        epochs=args.epochs,
        steps=args.steps_per_epoch,
        batch=args.batch,
        depth=args.depth,
        width=args.width,
        awp_warmup=args.awp_warmup,
        seed=args.seed,
        dtype=args.dtype,
        data=args.data,
        compare_ema=bool(args.compare_ema),
        ours_overrides=list(args.ours_override),
        official_args=list(args.official_arg),
    )
    modes = {"both": [False, True], "shipped": [False], "float64-logits": [True]}[args.ours_mode]
    if args.dtype == "float32":
        modes = [False]  # .float() is a no-op in float32
    official_dir = args.official_dir.resolve()
    variants = ["gkl", "ikl"] if args.variant == "both" else [args.variant]
    log = io.StringIO()
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="official_equivalence_") as tmp:
        for variant in variants:
            runs += run_variant(official_dir, variant, s, Path(tmp), log, modes)
    command = "python scripts/official_equivalence.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else list(argv))
    )
    report = {
        "command": command,
        "official_commit": official_commit(official_dir),
        "advtrain_commit": our_commit(),
        "machine": machine(),
        "seconds": time.perf_counter() - t0,
        "setting": s.__dict__,
        "setting_text": (
            f"{s.epochs} epochs x {s.steps} steps, batch {s.batch}, WideResNet-{s.depth}-{s.width}, AWP from epoch "
            f"{s.awp_warmup}, seed {s.seed}, {s.dtype}, data: {runs[0]['data'] if runs else '?'}"
        ),
        "runs": runs,
    }
    for run in runs:
        m, first = run["comparison"]["max"], run["comparison"]["first_step_above_target"]
        print(
            f"{run['label']}: max rel diff weights {m['weights_rel_diff']:.2e}, x_adv {m['x_adv_rel_diff']:.2e}, "
            f"class weights {m['class_weights_rel_diff']:.2e}, loss {m['loss_rel_diff']:.2e}, average "
            f"{m['average_rel_diff']:.2e}, lr {m['lr_rel_diff']:.1e}"
            + ("" if first is None else f"; first step >= {TARGET:g}: {first}")
            + (
                ""
                if m.get("ema_rel_diff") is None
                else f"; in-loop EMA (informational) {m['ema_rel_diff']:.2e}"
            )
        )
    print(f"total {report['seconds']:.1f} s")
    if not args.no_write:
        write_results(args.out, report)
        print(f"wrote {args.out}/table.md, equivalence.json, rel_weight_diff.png")
    return report


if __name__ == "__main__":
    main()
