"""Fast paths: what `auto` resolves to, and that channels_last changes speed, not numbers.

The channels_last checks compare against a float64 reference: an fp32 fast path is correct when
its error is of the same size as plain NCHW fp32's own error (summation order may differ, the
math may not). No timing is asserted anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advtrain.engine import fastpath
from advtrain.engine.fastpath import (
    ProbeResult,
    configure_cudnn,
    fast_path_defaults,
    resolve_fast_paths,
    run_probe,
)
from advtrain.errors import ConfigError
from advtrain.models import build_model
from advtrain.utils.cpu import CpuInfo, cpu_info
from benchmarks.fast_paths import _correct, _errors, _reference, _Variant, parse_variant
from benchmarks.harness import build_trainer, train_config

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing runs on it


def _cpu(isa_class: str) -> CpuInfo:
    return CpuInfo(
        model="Test CPU",
        machine="x86_64",
        flags=("avx2",),
        aten_capability="AVX2",
        isa_cap=None,
        hardware_class=isa_class,
        isa_class=isa_class,
    )


@pytest.mark.parametrize(
    "isa_class,probe_ok,expected",
    [
        ("avx512_amx", True, True),
        ("avx512", True, True),
        ("avx512", False, False),  # measured class, but this machine fails the self-check
        ("avx2", True, False),  # the broken oneDNN kernel: off whatever a probe says
        ("other", True, False),  # not measured: the safe layout
    ],
)
def test_cpu_auto_channels_last_is_decided_per_cpu_class(
    monkeypatch: pytest.MonkeyPatch, isa_class: str, probe_ok: bool, expected: bool
) -> None:
    calls = []

    def fake_probe(info=None, **kw):
        calls.append(info)
        return ProbeResult(probe_ok, "self-check passed 40 cases" if probe_ok else "died")

    monkeypatch.setattr(fastpath, "cpu_info", lambda: _cpu(isa_class))
    monkeypatch.setattr(fastpath, "run_probe", fake_probe)
    fp = resolve_fast_paths({}, CPU)
    assert fp.channels_last is expected
    assert (fp.autocast_dtype, fp.compile, fp.cudnn_benchmark) == (None, False, False)
    # the probe only runs where the table would switch the layout on
    assert len(calls) == (1 if fastpath.CPU_CHANNELS_LAST.get(isa_class, (False,))[0] else 0)
    line = fp.describe()
    assert line.startswith(f"fast paths: channels_last={'on' if expected else 'off'}")
    assert f"Test CPU (oneDNN class {isa_class})" in line
    if isa_class == "avx2":
        assert "docs/cpu_fast_paths.md" in line
    # an explicit value is never second-guessed
    assert resolve_fast_paths({"channels_last": True}, CPU).channels_last
    assert len(calls) == (1 if fastpath.CPU_CHANNELS_LAST.get(isa_class, (False,))[0] else 0)


def test_auto_on_this_machine_agrees_with_its_class_and_self_check(
    channels_last_safe: bool,
) -> None:
    info = cpu_info()
    listed_on = fastpath.CPU_CHANNELS_LAST.get(info.isa_class, (False, ""))[0]
    fp = resolve_fast_paths({}, CPU)
    assert fp.channels_last == (listed_on and channels_last_safe)
    assert info.model in fp.why
    cuda = resolve_fast_paths({"channels_last": "auto", "autocast": "auto"}, CUDA)
    assert cuda.channels_last and cuda.autocast_dtype is torch.bfloat16
    assert cuda.cudnn_benchmark and not cuda.compile
    # the pre-existing two-value API agrees with the full resolution
    assert fast_path_defaults({}, CPU) == (fp.channels_last, None)
    assert fast_path_defaults({}, CUDA) == (True, torch.bfloat16)


@pytest.mark.parametrize(
    "cap,expected",
    [("AVX2", "avx2"), ("avx2", "avx2"), ("AVX512_CORE", "avx512"), ("ALL", None)],
)
def test_onednn_isa_cap_lowers_the_class(
    monkeypatch: pytest.MonkeyPatch, cap: str, expected: str | None
) -> None:
    hw = cpu_info().hardware_class
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    info = cpu_info()
    assert info.isa_cap == cap and info.hardware_class == hw
    rank = ["other", "sse", "avx", "avx2", "avx512", "avx512_amx"]
    if expected is None or rank.index(expected) >= rank.index(hw):
        assert info.isa_class == hw  # a cap above the hardware changes nothing
    else:
        assert info.isa_class == expected
    assert cap in info.describe()


def test_probe_treats_a_crash_or_a_wrong_answer_as_unsafe() -> None:
    crash = run_probe(command=[sys.executable, "-c", "import os; os.abort()"])
    assert not crash.ok and "exit code" in crash.detail and not crash.cached
    wrong = json.dumps(
        {"ok": False, "cases": 3, "failed": [{"case": "conv1x1", "threads": 1, "errors": {}}]}
    )
    bad = run_probe(command=[sys.executable, "-c", f"print({wrong!r})"])
    assert not bad.ok and "failed 1 of 3 cases, e.g. conv1x1" in bad.detail
    silent = run_probe(command=[sys.executable, "-c", "print('hello')"])
    assert not silent.ok and "no result" in silent.detail
    good = json.dumps({"ok": True, "cases": 3, "failed": []})
    assert run_probe(command=[sys.executable, "-c", f"print({good!r})"]).ok


def test_probe_result_is_cached_per_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channels_last_safe: bool
) -> None:
    monkeypatch.setenv("ADVTRAIN_CACHE_DIR", str(tmp_path))
    first = run_probe()
    assert first.ok == channels_last_safe and not first.cached
    again = run_probe()
    assert again.cached and again.ok == first.ok and again.detail == first.detail
    stored = json.loads((tmp_path / "fastpath_probe.json").read_text())
    (entry,) = stored.values()
    assert entry["cpu"] == cpu_info().describe()


@pytest.mark.slow  # two child interpreters with torch
@pytest.mark.skipif(
    not torch.__version__.startswith("2.14.1")
    or cpu_info().hardware_class not in ("avx2", "avx512", "avx512_amx"),
    reason="documents the defect of torch 2.14.1's oneDNN on x86 CPUs with AVX2",
)
def test_probe_catches_the_avx2_defect_and_auto_turns_channels_last_off(tmp_path: Path) -> None:
    """On any AVX2-capable x86 CPU, capping oneDNN at AVX2 takes the broken kernel: the probe
    (and so `auto`) must say no, in a child process, without harm to this one."""
    code = (
        "import json, torch; from advtrain.engine.fastpath import resolve_fast_paths, run_probe; "
        "fp = resolve_fast_paths({}, torch.device('cpu')); "
        "print(json.dumps({'cl': fp.channels_last, 'why': fp.why}))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ADVTRAIN_CACHE_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cl"] is False and "oneDNN class avx2" in out["why"]
    # the class table alone switches it off; the probe itself must fail there as well
    code = "from advtrain.engine.fastpath import run_probe; r = run_probe(); print(r.ok); print(r.detail)"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "False", r.stdout


def test_explicit_values_win_over_auto() -> None:
    fp = resolve_fast_paths({"channels_last": False, "autocast": "bf16", "compile": True}, CPU)
    assert (fp.channels_last, fp.autocast_dtype, fp.compile) == (False, torch.bfloat16, True)
    fp = resolve_fast_paths({"channels_last": "true", "autocast": "false", "compile": "off"}, CUDA)
    assert (fp.channels_last, fp.autocast_dtype, fp.compile) == (True, None, False)
    # deterministic runs keep cuDNN's autotuner off (it may pick different kernels per run)
    assert not resolve_fast_paths({"deterministic": True}, CUDA).cudnn_benchmark


@pytest.mark.parametrize(
    "key,value", [("channels_last", "maybe"), ("autocast", "fp16"), ("compile", "sometimes")]
)
def test_bad_values_are_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"trainer.{key}"):
        resolve_fast_paths({key: value}, CPU)


def test_configure_cudnn_is_a_noop_off_cuda() -> None:
    before = torch.backends.cudnn.benchmark
    assert configure_cudnn(resolve_fast_paths({}, CPU), CPU) is False
    assert torch.backends.cudnn.benchmark == before


def test_parse_variant_names() -> None:
    assert parse_variant("cl_bf16") == {"compile": False, "channels_last": True, "dtype": "bf16"}
    assert parse_variant("compile_nchw_fp32") == {
        "compile": True,
        "channels_last": False,
        "dtype": "fp32",
    }
    with pytest.raises(ConfigError, match="variant"):
        parse_variant("nhwc_fp16")


def test_correctness_rule_separates_roundoff_from_real_differences() -> None:
    # fp32: roundoff and a ReLU-kink flip pass; a wrong layout (order-1 error) does not
    assert _correct(
        "fp32", {"loss_rel_err": 5e-7, "grad_rel_err": 2e-3, "grad_sign_agreement": 1.0}
    )
    assert not _correct(
        "fp32", {"loss_rel_err": 1e-7, "grad_rel_err": 0.3, "grad_sign_agreement": 0.9}
    )
    assert not _correct(
        "fp32", {"loss_rel_err": 1e-3, "grad_rel_err": 1e-6, "grad_sign_agreement": 1.0}
    )
    # bf16: mixed-precision errors pass, a loss off by 10% does not
    assert _correct("bf16", {"loss_rel_err": 1e-3, "grad_rel_err": 0.2, "grad_sign_agreement": 0.9})
    assert not _correct(
        "bf16", {"loss_rel_err": 0.1, "grad_rel_err": 0.2, "grad_sign_agreement": 0.9}
    )


def test_errors_against_reference() -> None:
    g = torch.tensor([1.0, -2.0, 0.0, 4.0])
    e = _errors((torch.tensor(2.0), g), (torch.tensor(2.002), torch.tensor([1.0, 2.0, 0.5, 4.0])))
    assert e["loss_rel_err"] == pytest.approx(1e-3, rel=1e-3)
    assert e["grad_rel_err"] == pytest.approx(
        float(torch.tensor([0.0, 4.0, 0.5, 0.0]).norm() / g.norm()), rel=1e-6
    )
    assert e["grad_sign_agreement"] == pytest.approx(2 / 3)  # zeros of the reference ignored


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), width=4)
    with torch.no_grad():  # non-trivial BN running statistics
        model.train()
        model(torch.rand(16, 3, 32, 32))
    return model


@pytest.mark.parametrize(
    "name", ["small_cnn", pytest.param("preact_resnet18", marks=pytest.mark.slow)]
)
def test_channels_last_matches_nchw_losses_and_gradients(
    name: str, channels_last_safe: bool
) -> None:
    """Eval-mode input gradients (what the attack uses) and train-mode loss + weight gradients
    (what the optimiser uses): the layout `auto` picks on this CPU is as close to float64 as
    NCHW is. channels_last is checked wherever the self-check allows running it in-process
    (on the broken AVX2 kernel it would abort the session, docs/cpu_fast_paths.md)."""
    auto_variant = "cl_fp32" if resolve_fast_paths({}, CPU).channels_last else "nchw_fp32"
    variants = ("nchw_fp32", "cl_fp32") if channels_last_safe else ("nchw_fp32",)
    assert auto_variant in variants  # auto never picks a layout that failed the self-check
    base = _model(name)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    ref = _reference(base, x, y)
    errs = {}
    for v in variants:
        sv = _Variant(v, base, CPU)
        xv = sv.prep(x)
        assert xv.is_contiguous(memory_format=sv.fmt)
        got = {"attack": sv.attack_pass(xv, y), "train": sv.train_loss_and_grad(xv, y)}
        errs[v] = {p: _errors(ref[p], got[p]) for p in got}
    for v in variants:
        for p in ("attack", "train"):
            assert _correct("fp32", errs[v][p]), errs
        # eval mode has no BatchNorm coupling: the input gradient is accurate to roundoff
        assert errs[v]["attack"]["grad_rel_err"] < 1e-5, errs
        assert errs[v]["attack"]["loss_rel_err"] < 1e-6, errs


@pytest.mark.usefixtures("require_channels_last")
def test_channels_last_trainer_gives_the_nchw_training_loss() -> None:
    """The trainer with channels_last (the CPU auto default) computes the same loss and the same
    update as an NCHW trainer from the same weights, on the same adversarial batch."""
    cfg = train_config(
        model="small_cnn",
        loss="trades",
        model_kwargs={"width": 4},
        batch_size=8,
        attack_kwargs={"steps": 1},
    )
    base = _model("small_cnn")
    trainers = {}
    for cl in (True, False):
        c = copy.deepcopy(cfg)
        c["trainer"]["channels_last"] = cl
        trainers[cl] = build_trainer(c, CPU, model=copy.deepcopy(base))
    assert trainers[True].memory_format == torch.channels_last
    assert next(trainers[True].unwrapped_model.parameters()).dim() == 4
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 3, 32, 32, generator=gen)
    x_adv = (x + 0.01 * torch.rand(8, 3, 32, 32, generator=gen)).clamp(0, 1)
    y = torch.randint(0, 10, (8,), generator=gen)
    losses, grads = {}, {}
    for cl, tr in trainers.items():
        fmt = tr.memory_format
        tr.unwrapped_model.train()
        out = tr.loss(
            tr.unwrapped_model(x_adv.contiguous(memory_format=fmt)),
            tr.unwrapped_model(x.contiguous(memory_format=fmt)),
            y,
        )
        out.loss.backward()
        losses[cl] = float(out.loss.detach())
        grads[cl] = torch.cat([p.grad.reshape(-1) for p in tr.unwrapped_model.parameters()])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert torch.allclose(grads[True], grads[False], rtol=1e-3, atol=1e-6)


@pytest.mark.usefixtures("require_channels_last")
def test_channels_last_attack_pass_keeps_format_and_values() -> None:
    from advtrain.attacks import pgd

    base = _model("small_cnn").eval()
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    a = pgd(base, x, y, eps=8 / 255, step_size=2 / 255, steps=3, random_start=False)
    b = pgd(
        cl,
        x.contiguous(memory_format=torch.channels_last),
        y,
        eps=8 / 255,
        step_size=2 / 255,
        steps=3,
        random_start=False,
    )
    assert b.is_contiguous(memory_format=torch.channels_last)
    # sign steps: an element may differ only where a gradient is ~0 and its sign flips by roundoff
    assert (a - b).abs().le(1e-6).float().mean() > 0.999
    with torch.no_grad():
        la, lb = F.cross_entropy(base(a), y), F.cross_entropy(base(b), y)
    assert float(la) == pytest.approx(float(lb), rel=1e-3)
