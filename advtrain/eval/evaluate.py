"""Clean and PGD accuracy with per-example results, used for validation during training and by `eval`.

Inputs are uint8 or float image tensors on the CPU; batches are moved to the model's device one at a time so a
whole test set never has to sit on the accelerator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from advtrain.attacks import pgd
from advtrain.attacks.pgd import model_mode
from advtrain.utils.distributed import module_device


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels for all images (model in eval mode, restored afterwards)."""
    device = module_device(model)
    out = []
    with model_mode(model, training=False):
        for i in range(0, len(images), batch_size):
            x = _to_float(images[i : i + batch_size]).to(device, non_blocking=True)
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_correct(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """Per-example bool: is the clean image classified correctly."""
    return predict(model, images, batch_size=batch_size) == labels.cpu()


def pgd_correct(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "Linf",
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    objective: str | Callable = "ce",
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    random_start: bool | str = True,
) -> torch.Tensor:
    """Per-example bool: still correct under PGD (eval mode; step size eps/4 unless given)."""
    device = module_device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    step_size = eps / 4 if step_size is None else step_size
    out = []
    with model_mode(model, training=False):
        for i in range(0, len(images), batch_size):
            x = _to_float(images[i : i + batch_size]).to(device, non_blocking=True)
            y = labels[i : i + batch_size].to(device, non_blocking=True)
            x_adv = pgd(
                model,
                x,
                y,
                norm=norm,
                eps=eps,
                step_size=step_size,
                steps=steps,
                objective=objective,
                random_start=random_start,
                restarts=restarts,
                generator=gen,
            )
            with torch.no_grad():
                out.append((model(x_adv).argmax(1) == y).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.bool)


def per_class_accuracy(
    correct: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[float]:
    """Accuracy per class (NaN for a class with no examples)."""
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes).float()
    hits = torch.bincount(labels[correct.cpu()], minlength=num_classes).float()
    return (hits / counts).tolist()
