"""Tests of the RobustBench export (advtrain.export): zoo checkpoints, model_info JSON, refusals.

The references are RobustBench's own architecture classes (strict loading, logits on real CIFAR-10
test images) and the curated leaderboard entries quoted in docs/robustbench_format.md §2.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from advtrain.errors import ConfigError
from advtrain.export.robustbench import (
    MODEL_INFO_KEYS,
    ExportError,
    compare_logits,
    export_state_dict,
    robustbench_constructor,
    validate_model_info,
)
from advtrain.models.loading import ModelSource, load_model, model_from_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import compose_plain  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
META = [
    "model_info.link=https://arxiv.org/abs/2503.08556",
    "model_info.name='Tiny test model'",
    "model_info.authors='Ada Lovelace, Alan Turing'",
    "model_info.venue='N/A'",
]


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine terms, so a wrong layer mapping changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _images(data_dir: Path, n: int = 16) -> torch.Tensor:
    from advtrain.data import load_arrays

    return load_arrays("cifar10", data_dir, "test")[0][:n].float() / 255


@pytest.mark.parametrize(
    ("cfg", "identical"),
    [
        ({"name": "wrn28_10_swish", "normalize": True, "depth": 10, "width": 1}, True),
        ({"name": "wrn28_10_swish", "normalize": False, "depth": 10, "width": 2}, True),
        ({"name": "wrn34_10", "normalize": False, "depth": 10, "widen_factor": 1}, True),
        (
            {
                "name": "wrn34_10",
                "normalize": False,
                "depth": 10,
                "widen_factor": 1,
                "sub_block1": True,
            },
            True,
        ),
        ({"name": "preact_resnet18", "normalize": False, "width": 64}, False),
    ],
    ids=["dmwrn-norm", "dmwrn-nonorm", "trades-wrn", "trades-wrn-subblock", "preact18"],
)
def test_exported_weights_load_strictly_into_robustbench(
    cfg: dict, identical: bool, data_dir: Path
) -> None:
    torch.manual_seed(0)
    ours = _randomise_bn(model_from_config({"model": dict(cfg), "data": {"name": "cifar10"}}))
    build, note = robustbench_constructor(cfg, 10, CIFAR10_MEAN, CIFAR10_STD)
    assert build is not None, note
    theirs = build()
    theirs.load_state_dict(export_state_dict(ours.state_dict()), strict=True)
    x = _images(data_dir, 8)
    max_diff, same = compare_logits(ours, theirs.eval(), x)
    with torch.no_grad():
        assert torch.equal(ours(x).argmax(1), theirs(x).argmax(1))
    if identical:  # same ops in the same order: bit for bit
        assert same and max_diff == 0.0
    else:  # adaptive vs fixed 4x4 average pooling: equal up to float rounding
        assert max_diff < 1e-5
    # a wrong mapping is caught: another model's weights give different logits
    other = _randomise_bn(
        model_from_config({"model": dict(cfg), "data": {"name": "cifar10"}}), seed=1
    )
    theirs.load_state_dict(export_state_dict(other.state_dict()), strict=True)
    assert compare_logits(ours, theirs, x)[0] > 1e-3


def test_architectures_without_a_robustbench_class() -> None:
    build, why = robustbench_constructor(
        {"name": "wrn34_10", "normalize": True}, 10, CIFAR10_MEAN, CIFAR10_STD
    )
    assert build is None and "normalize=false" in why
    build, why = robustbench_constructor(
        {"name": "small_cnn", "width": 8}, 10, CIFAR10_MEAN, CIFAR10_STD
    )
    assert build is None and "architecture added" in why
    build, why = robustbench_constructor(
        {"name": "preact_resnet18", "normalize": False, "width": 16}, 10, (0,) * 3, (1,) * 3
    )
    assert build is None and "width 64" in why
    with pytest.raises(ExportError, match="cut the first"):
        export_state_dict({"model.conv.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------
# model_info format
# --------------------------------------------------------------------------------------------

# Curated entries, values quoted in docs/robustbench_format.md §2.1 (cifar10/Linf/Cui2023Decoupled_WRN-28-10.json).
DKL_WRN28 = {
    "link": "https://arxiv.org/abs/2305.13948",
    "name": "Decoupled Kullback-Leibler Divergence Loss",
    "authors": "Jiequan Cui, Zhuotao Tian, Zhisheng Zhong, Xiaojuan Qi, Bei Yu, Hanwang Zhang",
    "additional_data": False,
    "number_forward_passes": 1,
    "dataset": "cifar10",
    "venue": "NeurIPS 2024",
    "architecture": "WideResNet-28-10",
    "eps": "8/255",
    "clean_acc": "92.16",
    "reported": "67.73",
    "footnote": "It uses additional 20M synthetic images in training.",
    "autoattack_acc": "67.73",
    "unreliable": False,
}


def test_validate_accepts_curated_entries() -> None:
    assert validate_model_info(DKL_WRN28, threat_model="Linf") == []
    assert validate_model_info(DKL_WRN28, threat_model="Linf", strict=True) == []
    # legacy irregularities present upstream: 1-decimal numbers, "" reported, no unreliable, eps "0.031",
    # and `external` (best known accuracy) below autoattack_acc
    legacy = {k: v for k, v in DKL_WRN28.items() if k not in ("unreliable", "footnote")}
    legacy.update(
        clean_acc="76.9", reported="", eps="0.031", autoattack_acc="52.4", external="51.1"
    )
    assert validate_model_info(legacy, threat_model="Linf") == []
    assert (
        validate_model_info(
            {**legacy, "eps": None, "corruptions_acc": "70.10"}, threat_model="corruptions"
        )
        == []
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eps": 8 / 255}, "eps must be a string"),
        ({"clean_acc": 92.16}, "clean_acc must be"),
        ({"autoattack_acc": "93.00"}, "exceeds clean_acc"),
        ({"link": "arxiv 2305.13948"}, "link must be an http"),
        ({"additional_data": "false"}, "additional_data must be true or false"),
        ({"number_forward_passes": 0}, "number_forward_passes"),
        ({"dataset": "cifar-10"}, "dataset must be one of"),
        ({"autoacttack_acc": "1.00"}, "unknown key"),
        ({"external": "70.00"}, "external 70.00 exceeds"),
        ({"unreliable": "no"}, "unreliable must be"),
    ],
)
def test_validate_rejects_broken_entries(change: dict, message: str) -> None:
    errs = validate_model_info({**DKL_WRN28, **change}, threat_model="Linf")
    assert any(message in e for e in errs), errs


def test_validate_strict_rules_and_benchmark_output() -> None:
    missing = {k: v for k, v in DKL_WRN28.items() if k != "venue"}
    assert any("missing key 'venue'" in e for e in validate_model_info(missing))
    reordered = dict(reversed(list(DKL_WRN28.items())))
    assert validate_model_info(reordered) == []
    assert any("conventional order" in e for e in validate_model_info(reordered, strict=True))
    assert any(
        "two decimals" in e
        for e in validate_model_info({**DKL_WRN28, "clean_acc": "92.2"}, strict=True)
    )
    assert any(
        "leaderboard eps" in e
        for e in validate_model_info(
            {**DKL_WRN28, "eps": "4/255"}, threat_model="Linf", strict=True
        )
    )
    # what robustbench's benchmark(to_disk=True) writes for a new model (docs/robustbench_format.md §2.2) is not an entry
    raw = {k: None for k in MODEL_INFO_KEYS if k != "unreliable"}
    raw.update(dataset="cifar10", eps=0.03137254901960784, clean_acc="85.0", autoattack_acc="57.1")
    errs = validate_model_info(raw, threat_model="Linf")
    assert any("link" in e for e in errs) and any("eps must be a string" in e for e in errs)


# --------------------------------------------------------------------------------------------
# the export command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A DMWideResNet-10-1 advtrain checkpoint and a real `advtrain eval` (aa_custom, 16 images) of it."""
    from advtrain.cli.eval import run_eval
    from advtrain.utils.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("export")
    cfg = compose_plain(
        [
            "+exp=smoke",
            "model=wrn28_10_swish",
            "model.depth=10",
            "model.width=1",
            f"data.root={data_dir}",
        ]
    )
    torch.manual_seed(0)
    model = _randomise_bn(model_from_config(cfg))
    ckpt = save_checkpoint(
        root / "last.pt", {"model": model.state_dict(), "ema": None, "config": cfg, "epoch": 1}
    )
    eval_cfg = compose_plain(
        [
            f"ckpt={ckpt}",
            "eval=aa_custom",
            "eval.attacks=[apgd-ce]",
            "eval.pgd_steps=0",
            "n_examples=16",
            "batch_size=16",
            f"data.root={data_dir}",
            "progress=false",
        ],
        config_name="eval",
        run_dir=root / "eval",
    )
    run_eval(eval_cfg)
    other = save_checkpoint(
        root / "other.pt", {"model": model.state_dict(), "ema": None, "config": cfg, "epoch": 2}
    )
    return {"ckpt": ckpt, "results": root / "eval", "other": other, "data_dir": data_dir}


def _export(
    evaluated: dict[str, Path], out: Path, *extra: str, results: Path | None = None
) -> dict:
    from advtrain.cli.export import run_export

    cfg = compose_plain(
        [
            f"ckpt={evaluated['ckpt']}",
            f"results={results or evaluated['results']}",
            "model_id=Tiny2026Bright",
            f"out_dir={out}",
            "verify_n_examples=16",
            f"data.root={evaluated['data_dir']}",
            *META,
            *extra,
        ],
        config_name="export",
        run_dir=out,
    )
    return run_export(cfg)


def test_export_refuses_partial_evaluation(evaluated: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="refusing to write a leaderboard entry") as err:
        _export(evaluated, tmp_path)
    assert "only 16 of 10000 test images" in str(err.value) and "not the standard version" in str(
        err.value
    )
    assert not (tmp_path / "model_info").exists() and not (tmp_path / "models").exists()


def test_export_partial_demo(evaluated: dict[str, Path], tmp_path: Path) -> None:
    summary = _export(evaluated, tmp_path, "allow_partial=true")
    assert summary["partial"] and summary["zoo_ready"]
    info_path = tmp_path / "model_info" / "cifar10" / "Linf" / "Tiny2026Bright.partial.json"
    assert not (tmp_path / "model_info" / "cifar10" / "Linf" / "Tiny2026Bright.json").exists()
    info = json.loads(info_path.read_text())
    assert (
        list(info) == list(MODEL_INFO_KEYS) and validate_model_info(info, threat_model="Linf") == []
    )
    results = json.loads((evaluated["results"] / "results.json").read_text())
    assert info["clean_acc"] == f"{100 * results['clean_acc']:.2f}" and info["eps"] == "8/255"
    assert info["architecture"] == "WideResNet-10-1"
    # the zoo file loads strictly into RobustBench's DMWideResNet and reproduces the logits bit for bit
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet

    theirs = DMWideResNet(
        num_classes=10,
        depth=10,
        width=1,
        activation_fn=torch.nn.SiLU,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
    blob = torch.load(
        tmp_path / "models" / "cifar10" / "Linf" / "Tiny2026Bright.pt", weights_only=True
    )
    assert set(blob) == {"state_dict"}
    theirs.load_state_dict(blob["state_dict"], strict=True)
    ours = load_model(ModelSource(ckpt=evaluated["ckpt"], dataset="cifar10")).model
    x = _images(evaluated["data_dir"], 16)
    assert compare_logits(ours, theirs.eval(), x) == (0.0, True)
    assert summary["verification"]["bit_identical"] is True
    sub = (tmp_path / "submission" / "Tiny2026Bright.partial.md").read_text()
    assert (
        sub.startswith("NOT FOR SUBMISSION") and "**Clean accuracy**: " + info["clean_acc"] in sub
    )
    log = tmp_path / "submission" / "Tiny2026Bright.partial_autoattack.log"
    assert log.read_text() == (evaluated["results"] / "autoattack.log").read_text()


def test_export_full_leaderboard_entry(evaluated: dict[str, Path], tmp_path: Path) -> None:
    """A results.json as a full standard run writes it (numbers edited in; the checks key on these fields)."""
    results = json.loads((evaluated["results"] / "results.json").read_text())
    results.update(
        n_examples=10000,
        test_set_size=10000,
        complete=True,
        version="standard",
        attacks=["apgd-ce", "apgd-t", "fab-t", "square"],
        clean_acc=0.8531,
        robust_acc=0.5709,
        unreliable=False,
    )
    full = tmp_path / "full_eval"
    full.mkdir()
    (full / "results.json").write_text(json.dumps(results))
    summary = _export(evaluated, tmp_path / "out", "model_info.reported=57.09", results=full)
    assert not summary["partial"]
    info = json.loads(
        (tmp_path / "out" / "model_info" / "cifar10" / "Linf" / "Tiny2026Bright.json").read_text()
    )
    assert validate_model_info(info, threat_model="Linf", strict=True) == []
    assert (info["clean_acc"], info["autoattack_acc"], info["reported"], info["unreliable"]) == (
        "85.31",
        "57.09",
        "57.09",
        False,
    )
    sub = (tmp_path / "out" / "submission" / "Tiny2026Bright.md").read_text()
    assert (
        "[New Model] Tiny2026Bright" in sub
        and "**Threat Model**: Linf" in sub
        and "**eps**: 8/255" in sub
    )
    # an L2 run at the wrong eps, or a custom one, is refused even with 10,000 images
    bad = tmp_path / "bad_eval"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({**results, "eps": 4 / 255, "eps_str": "4/255"}))
    with pytest.raises(ExportError, match="leaderboard uses eps=8/255"):
        _export(evaluated, tmp_path / "bad", results=bad)


def test_export_refuses_other_checkpoint_and_bad_metadata(
    evaluated: dict[str, Path], tmp_path: Path
) -> None:
    from advtrain.cli.export import run_export

    with pytest.raises(ExportError, match="is not the checkpoint evaluated"):
        cfg = compose_plain(
            [
                f"ckpt={evaluated['other']}",
                f"results={evaluated['results']}",
                "model_id=Tiny2026Bright",
                f"out_dir={tmp_path}",
                "allow_partial=true",
                f"data.root={evaluated['data_dir']}",
                *META,
            ],
            config_name="export",
            run_dir=tmp_path,
        )
        run_export(cfg)
    with pytest.raises(ConfigError, match="model_info.link"):
        _export(evaluated, tmp_path, "allow_partial=true", "model_info.link=null")
    with pytest.raises(ExportError, match="model_id"):
        _export(evaluated, tmp_path, "allow_partial=true", "model_id=my_model")
    with pytest.raises(ExportError, match="invalid.*link"):
        _export(evaluated, tmp_path, "allow_partial=true", "model_info.link=arxiv")
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_export_check_mode_runs_robustbench_protocol(
    evaluated: dict[str, Path], tmp_path: Path
) -> None:
    """check=true: without torchvision's CIFAR files, benchmark()'s steps run on our test-set copy."""
    summary = _export(
        evaluated,
        tmp_path,
        "allow_partial=true",
        "check=true",
        "check_n_examples=16",
        "batch_size=16",
    )
    check = summary["check"]
    assert check["passed"], check["problems"]
    assert "autoattack.AutoAttack" in check["method"]
    # identical model, identical images: the same number of correct predictions
    assert round(16 * check["clean_acc"]) == round(16 * check["ours_clean_acc"])
    assert check["robust_acc"] <= check["clean_acc"]
    assert "robust accuracy:" in Path(check["log"]).read_text()
