"""Build OUR training step exactly as `train` does, and the plain-torch bare bound it is measured against.

`build_trainer` calls the one trainer assembly of `advtrain.train` (`engine/build.assemble_trainer`:
fast-path defaults, optimiser, learning-rate schedule, callbacks) on a config made from the same
YAML files in `configs/`, and hands back a `Trainer` whose `train_step` is the code a real run
executes. Only the data loader, logger and evaluation sets are left out: `train_step` does not
touch them.

`BareStep` is the *bare bound*: the same passes written as the shortest plain-torch loop (no
validation, no callbacks, no per-step objects, no metrics), i.e. what any hand-written script
would have to compute at least. Our step divided by it is the framework's overhead.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from advtrain.config import register_resolvers
from advtrain.engine.build import assemble_trainer, build_attack, build_loss
from advtrain.engine.trainer import Trainer
from advtrain.errors import ConfigError
from advtrain.models.loading import model_from_config
from advtrain.resources import config_dir

log = logging.getLogger(__name__)

__all__ = [
    "BareStep",
    "bench_data",
    "build_trainer",
    "load_group",
    "train_config",
]

#: The attack config each loss is normally trained with (configs/attack/*.yaml).
DEFAULT_ATTACK = {
    "pgdat": "pgd_linf",
    "trades": "trades",
    "gkl": "gkl",
    "ikl": "gkl",
    "mart": "pgd_linf",
}


def load_group(group: str, option: str) -> dict[str, Any]:
    """`configs/<group>/<option>.yaml` resolved to a plain dict (`${frac:..}` included).

    Read directly rather than through Hydra's compose API, which cannot be re-initialised inside
    the running `bench` Hydra app; these group files are plain YAML, so the result is identical.
    """
    register_resolvers()
    path = config_dir() / group / f"{option}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        raise ConfigError(f"{group}={option!r} does not exist; choose one of {options}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(cfg, dict)
    return cfg


def train_config(
    *,
    model: str,
    loss: str,
    dataset: str = "cifar10",
    model_kwargs: dict[str, Any] | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    attack: str | None = None,
    attack_kwargs: dict[str, Any] | None = None,
    batch_size: int = 128,
    trainer_kwargs: dict[str, Any] | None = None,
    lr: float = 0.1,
) -> dict[str, Any]:
    """A plain training config like `python -m advtrain train` composes, from the YAML groups.

    `*_kwargs` override keys of the group (and are checked by the builders like CLI overrides).
    The attack schedule defaults to `constant`, so every benchmark step runs the full budget.
    """
    model_cfg = {**load_group("model", model), **(model_kwargs or {})}
    loss_cfg = {**load_group("loss", loss), **(loss_kwargs or {})}
    attack_cfg = {
        **load_group("attack", attack or DEFAULT_ATTACK.get(loss, "pgd_linf")),
        "schedule": "constant",
        **(attack_kwargs or {}),
    }
    data_cfg = {**load_group("data", dataset), "batch_size": batch_size}
    optim_cfg = {**load_group("optim", "sgd"), "lr": lr}
    trainer_cfg = {**load_group("trainer", "default"), "progress": False, **(trainer_kwargs or {})}
    return {
        "data": data_cfg,
        "model": model_cfg,
        "attack": attack_cfg,
        "loss": loss_cfg,
        "optim": optim_cfg,
        "trainer": trainer_cfg,
        "seed": 0,
        "device": "cpu",
        "name": f"bench_{loss}_{model}",
    }


def build_trainer(
    cfg: dict[str, Any],
    device: torch.device,
    *,
    model: nn.Module | None = None,
    run_dir: Path | None = None,
) -> Trainer:
    """The `Trainer` `advtrain.train(cfg)` would build, minus data, logger and evaluation sets.

    The same assembly (`advtrain.engine.build.assemble_trainer`), so the timed step is the trained
    one. `model` (optional) is used instead of a freshly built one, so several sides of a benchmark
    can start from identical weights. The first epoch is begun (attack budget, loss state), as
    `Trainer.fit` does before its first batch.
    """
    attack, schedule = build_attack(cfg)
    trainer = assemble_trainer(
        cfg,
        model=model if model is not None else model_from_config(cfg),
        loss=build_loss(cfg),
        attack=attack,
        schedule=schedule,
        device=device,
        steps_per_epoch=1000,
        run_dir=run_dir or Path(tempfile.gettempdir()) / "advtrain-bench",
    )
    trainer.begin_epoch()
    return trainer


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Endless batches: iterate `batches` (a loader) again and again."""
    while True:
        yield from batches


def official_dataloader(
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    seed: int,
    workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """The official scripts' input pipeline (per-sample PIL crop/flip in a torch DataLoader), on `images`
    (uint8 N, C, H, W): the reference our batched loader is compared with."""
    from benchmarks import reference

    oracle = reference("official_loop")
    dataset = oracle.PILCifarDataset(
        images.permute(0, 2, 3, 1).contiguous().numpy(),
        labels.numpy(),
        oracle.official_train_transform(),
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


def bench_data(
    root: str | None, n: int, *, dataset: str = "cifar10", split: str = "train", seed: int = 0
) -> tuple[Tensor, Tensor, str]:
    """`n` uint8 (N, C, H, W) images and labels: the real split if found, else random pixels.

    Timing does not depend on pixel values, so a machine without the dataset still benchmarks;
    the third value says which one was used, and every result file records it.
    """
    from advtrain.data import get_info, load_arrays
    from advtrain.errors import DataError

    if root:
        try:
            images, labels = load_arrays(dataset, root, split)
            return images[:n].clone(), labels[:n].clone(), f"{dataset}:{split} from {root}"
        except (DataError, ConfigError, OSError) as e:
            log.warning("benchmarking on random images: %s", e)
    info = get_info(dataset)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (n, info.channels, info.size, info.size), dtype=torch.uint8, generator=gen
    )
    labels = torch.randint(0, info.num_classes, (n,), generator=gen)
    return images, labels, f"random uint8 images shaped like {dataset} (dataset not found)"


# --------------------------------------------------------------------------------------------
# the bare bound
# --------------------------------------------------------------------------------------------


@dataclass
class BareStep:
    """One adversarial training step in plain torch, the same passes and math as our trainer.

    Passes, per `kind`:
      * attack (eval mode): one natural forward under no_grad (TRADES/GKL only), then `steps` x
        (forward + input-gradient backward) with sign steps, projection and [0, 1] clamp;
      * training (train mode): forward on x_adv, forward on x (TRADES/GKL), loss, backward,
        SGD step.
    GKL keeps the class matrix W and its accumulator like `ClassWeightTracker` (index W[y],
    index_add of softmax(nat / T)). No validation, callbacks, metrics or host syncs.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    kind: str
    eps: float
    step_size: float
    steps: int
    random_start: str = "uniform"  # uniform | normal | none
    beta: float = 6.0
    alpha: float = 4.0
    gkl_beta: float = 20.0
    weight_temperature: float = 4.0
    autocast_dtype: torch.dtype | None = None
    attack_autocast_dtype: torch.dtype | None = None
    generator: torch.Generator | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ("pgdat", "trades", "gkl"):
            raise ConfigError(f"bare bound kind={self.kind!r}: use pgdat, trades or gkl")
        dev = next(self.model.parameters()).device
        c = self.num_classes
        self.weights = torch.full((c, c), 1.0 / c, device=dev)
        self.accumulator = torch.zeros(c, c, device=dev)

    @classmethod
    def like(cls, trainer: Trainer, model: nn.Module | None = None) -> BareStep:
        """A bare step with the trainer's loss kind, attack budget and hyper-parameters.

        `model` (default: a deep copy of the trainer's) gets a fresh SGD optimiser with the
        trainer's settings, so both sides start from the same weights.
        """
        from advtrain.attacks.pgd import start_mode
        from advtrain.losses import GKLLoss, PGDATLoss, TRADESLoss

        loss = trainer.loss
        if isinstance(loss, GKLLoss):
            kind = "gkl"
        elif isinstance(loss, TRADESLoss):
            kind = "trades"
        elif isinstance(loss, PGDATLoss):
            kind = "pgdat"
        else:
            raise ConfigError(f"no bare bound for {type(loss).__name__}; use pgdat, trades or gkl")
        net = model if model is not None else copy.deepcopy(trainer.unwrapped_model)
        group = trainer.optimizer.param_groups[0]
        opt = torch.optim.SGD(
            net.parameters(),
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
        )
        a = trainer.attack
        extra: dict[str, Any] = {}
        if kind == "trades":
            extra["beta"] = loss.beta
        if kind == "gkl":
            assert isinstance(loss, GKLLoss)
            if loss.attack_beta != 0.0 or loss.gamma != 1.0 or loss.aug_weight is not None:
                raise ConfigError(
                    "the GKL bare bound covers the official CIFAR-10 setting only "
                    "(attack_beta 0, gamma 1, one view)"
                )
            extra.update(
                alpha=loss.alpha,
                gkl_beta=loss.beta,
                weight_temperature=loss.weight_temperature,
                num_classes=loss.num_classes,
            )
        dev = next(net.parameters()).device
        return cls(
            model=net,
            optimizer=opt,
            kind=kind,
            eps=float(a.eps),
            step_size=float(a.step_size),
            steps=int(a.steps),
            random_start=start_mode(a.random_start),
            autocast_dtype=trainer.autocast_dtype,
            attack_autocast_dtype=trainer.attack_autocast_dtype,
            generator=torch.Generator(device=dev).manual_seed(1),
            **extra,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The natural pass's precision (trainer.autocast)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        dev = next(self.model.parameters()).device
        return torch.autocast(dev.type, dtype=self.autocast_dtype)

    def _attack_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The attack's and the adversarial forward's precision: the trainer's policy (fp32 unless
        trainer.autocast_attack opts in), so both sides compute the same thing."""
        dev = next(self.model.parameters()).device
        if self.attack_autocast_dtype is not None:
            return torch.autocast(dev.type, dtype=self.attack_autocast_dtype)
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, enabled=False)

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The attack passes alone (eval mode)."""
        model = self.model
        model.eval()
        nat = None
        with self._attack_autocast():
            if self.kind != "pgdat":
                with torch.no_grad():
                    nat = model(x).float()
                log_p_nat = F.log_softmax(nat, dim=1)
                p_nat = F.softmax(nat, dim=1)
            # The same draws as our threat models (same generator, same calls), so a test can
            # give both sides the same start.
            if self.random_start == "normal":
                noise = torch.randn(x.shape, generator=self.generator, device=x.device)
                x_adv = x + 0.001 * noise.contiguous(memory_format=_format(x))
            elif self.random_start == "none":
                x_adv = x.clone()
            else:
                noise = torch.rand(x.shape, generator=self.generator, device=x.device)
                noise = noise.contiguous(memory_format=_format(x)).mul_(2 * self.eps).sub_(self.eps)
                x_adv = (x + noise).clamp_(0, 1)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                out = model(x_adv).float()
                if self.kind == "pgdat":
                    obj = F.cross_entropy(out, y, reduction="sum")
                elif self.kind == "trades":
                    obj = F.kl_div(
                        F.log_softmax(out, dim=1), log_p_nat, reduction="sum", log_target=True
                    )
                else:
                    obj = -(p_nat * F.log_softmax(out, dim=1)).sum()
                (g,) = torch.autograd.grad(obj, x_adv)
                with torch.no_grad():
                    x_adv = x_adv.detach().add_(g.sign(), alpha=self.step_size).sub_(x)
                    x_adv = x_adv.clamp_(-self.eps, self.eps).add_(x).clamp_(0, 1)
        return x_adv.detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One full training step; returns the (detached) loss."""
        model = self.model
        x_adv = self.attack(x, y)
        model.train()
        with self._attack_autocast():
            la = model(x_adv).float()
        with self._autocast():
            if self.kind == "pgdat":
                loss = F.cross_entropy(la, y)
            else:
                ln = model(x).float()
                ce = F.cross_entropy(ln, y)
                if self.kind == "trades":
                    kl = F.kl_div(
                        F.log_softmax(la, dim=1),
                        F.log_softmax(ln, dim=1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    loss = ce + self.beta * kl
                else:
                    v = self.weights[y]
                    d = ln - la
                    s = v.sum(1)
                    dbar = (v * d).sum(1, keepdim=True) / s[:, None]
                    pairs = 0.5 * s * (v * (d - dbar).square()).sum(1)
                    wmse = pairs.sum() / s.square().sum()
                    target = F.softmax(ln.detach(), dim=1)
                    sce = -(target * F.log_softmax(la, dim=1)).sum(1).mean()
                    loss = ce + self.gkl_beta * wmse + self.alpha * sce
                    with torch.no_grad():
                        self.accumulator.index_add_(
                            0, y, F.softmax(ln.detach() / self.weight_temperature, dim=1)
                        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _format(x: Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format
