"""Self-check of the CPU channels_last path, run in a child process: `python -m advtrain.engine.fastpath_probe`.

A native kernel defect can abort the interpreter (heap corruption) or return wrong numbers, so the
check runs in its own process: the parent reads one JSON line from stdout, and a crash is a "no".
It compares, against a float64 NCHW reference, the weight and input gradients of

* single convolutions in the shapes that broke on AVX2 with torch 2.14.1 / oneDNN 3.12 (stride-2
  1x1 convolutions with 1-4 input channels on 32x32 maps, the shortcut of a narrow ResNet stage)
  and their neighbours (3x3, stride 1, 28x28 Fashion-MNIST maps), and
* a train-mode step of two narrow models of the zoo (BatchNorm couples the batch, ReLU kinks),

at one thread and at two. See docs/cpu_fast_paths.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
import torch.nn.functional as F

# (in_channels, out_channels, kernel, stride, spatial size)
CONV_CASES = (
    (1, 4, 1, 2, 28),
    (2, 4, 1, 2, 32),
    (3, 8, 1, 2, 32),
    (4, 8, 1, 2, 32),
    (4, 8, 3, 2, 32),
    (4, 8, 1, 1, 32),
    (8, 16, 1, 2, 16),
    (3, 4, 3, 1, 32),
)
# Relative L2 error bounds against float64. Single convolutions have no kinks: roundoff only.
CONV_TOL = 1e-4
# A model step crosses ReLU kinks, where fp32 roundoff may flip a unit (see bench/fast_paths.py):
# a real layout error is of order 1 (1.13 was measured on AVX2), roundoff stays under 1e-2.
MODEL_TOL = {"loss": 1e-5, "grad": 1e-2}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _conv_case(cin: int, cout: int, k: int, s: int, hw: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, cin, hw, hw, generator=gen)
    w = torch.randn(cout, cin, k, k, generator=gen)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    wc = w.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = F.conv2d(xc, wc, stride=s, padding=k // 2)
    go = torch.randn(out.shape, generator=gen)
    gx, gw = torch.autograd.grad(out, (xc, wc), go)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.conv2d(xd, wd, stride=s, padding=k // 2)
    rx, rw = torch.autograd.grad(ref, (xd, wd), go.double())
    errs = {"out": _rel(out, ref), "grad_input": _rel(gx, rx), "grad_weight": _rel(gw, rw)}
    return {
        "case": f"conv{k}x{k} stride {s}, {cin}->{cout} channels, {hw}x{hw}",
        "errors": errs,
        "ok": max(errs.values()) < CONV_TOL,
    }


def _model_case(name: str) -> dict[str, Any]:
    from advtrain.models import build_model

    torch.manual_seed(0)
    model = build_model(name, 10, width=4).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    ref_model = build_model(name, 10, width=4).double().train()
    ref_model.load_state_dict(model.state_dict())
    ref_loss = F.cross_entropy(ref_model(x.double()), y)
    ref_grads = torch.autograd.grad(ref_loss, list(ref_model.parameters()))
    cl = model.to(memory_format=torch.channels_last)
    loss = F.cross_entropy(cl(x.contiguous(memory_format=torch.channels_last)), y)
    grads = torch.autograd.grad(loss, list(cl.parameters()))
    flat = torch.cat([g.reshape(-1) for g in grads])
    ref_flat = torch.cat([g.reshape(-1) for g in ref_grads])
    errs = {"loss": _rel(loss.detach(), ref_loss.detach()), "grad": _rel(flat, ref_flat)}
    return {
        "case": f"{name} width 4, train mode, batch 4",
        "errors": errs,
        "ok": errs["loss"] < MODEL_TOL["loss"] and errs["grad"] < MODEL_TOL["grad"],
    }


def probe(threads: tuple[int, ...] = (1, 2), announce: bool = False) -> dict[str, Any]:
    """Run every case at each thread count; `ok` only if all pass.

    With `announce`, a `running: ...` line goes to stdout (flushed) before each case, so that
    if the process dies the parent can name the case that killed it.
    """
    runs: list[tuple[str, Any]] = [("conv", c) for c in CONV_CASES]
    runs += [("model", name) for name in ("preact_resnet18", "small_cnn")]
    cases = []
    for n in threads:
        torch.set_num_threads(n)
        for kind, arg in runs:
            if announce:
                print(f"running: {kind} {arg} at {n} thread(s)", flush=True)
            res = _conv_case(*arg) if kind == "conv" else _model_case(arg)
            cases.append({**res, "threads": n})
    failed = [c for c in cases if not c["ok"]]
    return {"ok": not failed, "cases": len(cases), "failed": failed}


def main() -> int:
    print(json.dumps(probe(announce=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
