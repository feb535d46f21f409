"""Every config option composes and instantiates; experiments state the settings they claim."""

from __future__ import annotations

import ast
import math

import pytest
import torch
from helpers import compose_plain, group_options

from advtrain.attacks import PGDAttack
from advtrain.config import (
    check_group,
    register_schemas,
    validate_bench,
    validate_config,
    validate_eval,
    validate_export,
)
from advtrain.engine.build import build_attack, build_callbacks, build_loss
from advtrain.engine.optim import LRSchedule, build_optimizer
from advtrain.errors import ConfigError
from advtrain.losses import LOSSES, RobustLoss
from advtrain.models.loading import model_from_config as build_model

SMALL = ["model=small_cnn", "model.width=4"]


@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_option_builds(option: str) -> None:
    cfg = compose_plain([f"model={option}"])
    if option.startswith("wrn"):  # full-size WRNs: build on the meta device (no memory, no time)
        with torch.device("meta"):
            model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 30e6
    else:
        model = build_model(cfg)
        out = model(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 10)


@pytest.mark.parametrize("option", group_options("loss"))
def test_every_loss_option_builds(option: str) -> None:
    cfg = compose_plain([f"loss={option}"])
    loss = build_loss(cfg)
    logits_adv = torch.randn(8, 10, requires_grad=True)
    logits_nat = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    out = loss(logits_adv, logits_nat, y)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert logits_adv.grad is not None and logits_adv.grad.abs().sum() > 0
    obj = loss.attack_objective()
    assert obj(logits_adv.detach(), y, logits_nat.detach()).shape == (8,)


@pytest.mark.parametrize("option", group_options("attack"))
def test_every_attack_option_builds(option: str) -> None:
    cfg = compose_plain([f"attack={option}"])
    attack, schedule = build_attack(cfg)
    budget = schedule(10, 10)
    assert budget.eps == pytest.approx(cfg["attack"]["eps"])
    assert budget.steps >= 1 and 0 < budget.step_size <= budget.eps + 1e-12
    if attack.norm == "Linf":
        assert attack.eps == pytest.approx(8 / 255)


@pytest.mark.parametrize("option", group_options("optim"))
def test_every_optim_option_builds(option: str) -> None:
    cfg = compose_plain([f"optim={option}", *SMALL])
    model = build_model(cfg)
    o = cfg["optim"]
    opt = build_optimizer(
        model.parameters(),
        name=o["name"],
        lr=o["lr"],
        momentum=o["momentum"],
        nesterov=o["nesterov"],
        weight_decay=o["weight_decay"],
    )
    assert opt.param_groups[0]["lr"] == o["lr"]


@pytest.mark.parametrize("option", group_options("trainer"))
def test_every_trainer_option_builds_callbacks(option: str) -> None:
    cfg = compose_plain([f"trainer={option}", *SMALL])
    model = build_model(cfg)
    _, schedule = build_attack(cfg)
    cbs = build_callbacks(cfg, model, schedule)
    assert cbs[0].name == "attack_schedule"


@pytest.mark.parametrize("option", group_options("data"))
def test_every_data_option_composes(option: str) -> None:
    cfg = compose_plain([f"data={option}"])
    assert cfg["data"]["name"] == option
    assert cfg["data"]["val_size"] > 0


@pytest.mark.parametrize("option", group_options("logger"))
def test_every_logger_option_composes(option: str) -> None:
    cfg = compose_plain([f"logger={option}"])
    assert cfg["logger"]["name"] == option


@pytest.mark.parametrize("exp", group_options("exp"))
def test_every_experiment_composes_checks_and_instantiates(exp: str) -> None:
    aux = (
        ["data.aux_path=/data/aux.npz"] if exp == "cifar10_gkl_synthetic" else []
    )  # `???` in the file
    cfg = compose_plain([f"+exp={exp}", *aux])
    checked = validate_config(
        cfg
    )  # every key of every group the experiment touches is in the schema
    assert checked == cfg  # and checking changes no value
    with torch.device("meta"):
        model = build_model(cfg)
    loss = build_loss(cfg)
    attack, schedule = build_attack(cfg)
    build_callbacks(cfg, model, schedule)
    assert isinstance(loss, RobustLoss) and isinstance(attack, PGDAttack)
    assert type(loss) is LOSSES[cfg["loss"]["name"]]
    assert attack.norm == cfg["attack"]["norm"] and attack.eps == pytest.approx(
        cfg["attack"]["eps"]
    )
    if cfg["attack"]["norm"] == "Linf":
        assert cfg["attack"]["eps"] <= 0.3


@pytest.mark.parametrize("name", ["train", "eval", "export", "bench"])
def test_every_command_config_passes_its_schema(name: str) -> None:
    validate = {
        "train": validate_config,
        "eval": validate_eval,
        "export": validate_export,
        "bench": validate_bench,
    }[name]
    # out_dir is ${hydra:runtime.output_dir}, which only a running app resolves
    overrides = {"train": ["+exp=smoke"], "export": ["out_dir=/tmp/advtrain-test-run"]}
    cfg = compose_plain(overrides.get(name, []), config_name=name)
    checked = validate(cfg)
    assert set(cfg) <= set(checked)
    assert all(checked[k] == v for k, v in cfg.items() if k != "eval"), name  # eval: eps parsed


@pytest.mark.parametrize("preset", group_options("eval"))
def test_every_eval_preset_passes_its_schema(preset: str) -> None:
    cfg = validate_eval(_eval_config([f"eval={preset}"]))
    assert cfg["eval"]["norm"] in ("Linf", "L2", "L1") and isinstance(cfg["eval"]["eps"], float)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\] in the 'eval' config"):
        validate_eval(_eval_config([f"eval={preset}", "+eval.stepz=1"]))


def _eval_config(overrides: list[str]) -> dict:
    cfg = compose_plain(overrides, config_name="eval")
    return {**cfg, "run_dir": "/tmp/advtrain-test-run"}


@pytest.mark.parametrize("option", group_options("model"))
def test_model_keys_come_from_the_architecture(option: str) -> None:
    """One home for a model's keys: its constructor (what the registry builds), nothing hand-kept."""
    from advtrain.models import model_kwargs

    with pytest.raises(ConfigError) as err:
        check_group("model", {"name": option, "no_such_key": 1})
    listed = ast.literal_eval(str(err.value).split("valid keys: ")[1])
    assert sorted(listed) == sorted(["name", "normalize", *model_kwargs(option)])


def test_schemas_are_in_hydras_config_store() -> None:
    from hydra.core.config_store import ConfigStore

    register_schemas()
    stored = ConfigStore.instance().list("schema")
    assert {"train.yaml", "eval.yaml", "export.yaml", "bench.yaml", "trainer.yaml"} <= set(stored)


def test_trades_experiment_is_the_official_script() -> None:
    cfg = compose_plain(["+exp=cifar10_trades"])
    assert cfg["model"]["name"] == "wrn34_10" and cfg["model"]["depth"] == 34
    assert cfg["model"]["widen_factor"] == 10
    assert cfg["attack"]["eps"] == pytest.approx(8 / 255)
    assert cfg["attack"]["step_size"] == pytest.approx(2 / 255)
    assert cfg["attack"]["steps"] == 10 and cfg["loss"]["beta"] == 6.0
    assert cfg["optim"]["lr"] == 0.1 and cfg["optim"]["milestones"] == [75, 90, 100]
    assert cfg["trainer"]["epochs"] == 76  # train_trades_cifar10.py --epochs default


def test_multistep_milestone_is_the_epoch_where_the_lr_changes() -> None:
    """TRADES/MART adjust_learning_rate: x0.1 from epoch 75, x0.01 from 90, x0.001 from 100."""
    sched = LRSchedule(
        lr=0.1,
        epochs=120,
        steps_per_epoch=10,
        schedule="multistep",
        milestones=(75, 90, 100),
        per_iteration=False,
    )
    assert sched(74) == pytest.approx(0.1) and sched(75, 9) == pytest.approx(0.01)
    assert sched(89) == pytest.approx(0.01) and sched(90) == pytest.approx(0.001)
    assert sched(99) == pytest.approx(0.001) and sched(100) == pytest.approx(1e-4)
    # Fractions f in (0, 1] stand for epoch f * E; a non-integral one takes effect at the next epoch.
    frac = LRSchedule(1.0, 10, 1, "multistep", milestones=(0.75, 0.9, 1.0), per_iteration=False)
    assert [frac(e) for e in range(7, 11)] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    with pytest.raises(ConfigError, match="milestone"):
        LRSchedule(1.0, 10, 1, "multistep", milestones=(0,))


def test_official_cosine_schedule_values() -> None:
    """docs/gkl.md §8: lr_t = 0.2 * 0.5 (1 + cos(pi t / (E + 1))) at t = 1, 100, 150, 200."""
    s = LRSchedule(
        lr=0.2, epochs=200, steps_per_epoch=5, schedule="cosine_official", per_iteration=False
    )
    assert s(1) == pytest.approx(0.19999, abs=1e-5)
    assert s(100) == pytest.approx(0.1008, abs=1e-4)
    assert s(150) == pytest.approx(0.0301, abs=1e-4)
    assert s(200) == pytest.approx(1.2e-5, rel=0.05)


def test_per_epoch_warmup_shifts_the_cosine_as_the_official_script() -> None:
    """DKL adjust_learning_rate_cosine with --lr-warmup W: lr * t / W for t < W, then
    lr * 0.5 (1 + cos(pi (t - W) / (E - W + 1)))."""
    lr, e, w = 0.2, 20, 5
    s = LRSchedule(lr, e, 391, "cosine_official", warmup_epochs=w, per_iteration=False)
    for t in range(1, e + 1):
        want = lr / w * t if t < w else lr * 0.5 * (1 + math.cos(math.pi * (t - w) / (e - w + 1)))
        assert s(t) == pytest.approx(want, rel=1e-12), t
        assert s(t, 390) == s(t)  # set once per epoch
    assert s(1) == pytest.approx(lr / w)  # not lr / (steps * W)
    plain = LRSchedule(1.0, 10, 7, "cosine", warmup_epochs=3, per_iteration=False)
    assert plain(1) == pytest.approx(1 / 3) and plain(3) == pytest.approx(1.0)
    assert plain(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))
    with pytest.raises(ConfigError, match="per_iteration=false"):
        LRSchedule(0.2, 10, 5, "cosine_official", warmup_epochs=2, per_iteration=True)


def test_cosine_and_warmup() -> None:
    s = LRSchedule(lr=1.0, epochs=4, steps_per_epoch=10, schedule="cosine", warmup_epochs=1)
    assert s(1, 0) == pytest.approx(0.1)  # per iteration: first warm-up step gets lr / (steps * W)
    assert s(3, 0) == pytest.approx(0.5)
    assert s(4, 9) < 0.01


def test_eps_resolver_and_pixel_eps_error() -> None:
    cfg = compose_plain(["attack.eps=${frac:16/255}"])
    assert cfg["attack"]["eps"] == pytest.approx(16 / 255)
    cfg = compose_plain(["attack.eps=8"])
    with pytest.raises(ConfigError, match="8/255"):
        build_attack(cfg)


def test_unknown_keys_are_errors() -> None:
    cfg = compose_plain(["+loss.betta=3", "loss=trades"])
    with pytest.raises(ConfigError, match="betta"):
        build_loss(cfg)
    cfg = compose_plain(["+attack.stepz=3"])
    with pytest.raises(ConfigError, match="stepz"):
        build_attack(cfg)
    cfg = compose_plain(["+model.depthh=3", *SMALL])
    with pytest.raises(ConfigError, match="depthh"):
        build_model(cfg)
