"""Model zoo: shapes, built-in normalisation, RobustBench compatibility, checkpoint loading.

The WideResNets are checked against RobustBench's own architecture classes (the reference the
exporter targets): identical state-dict keys and shapes, strict loading both ways, and
bit-identical eval-mode logits on the same weights. Full-size models are only instantiated on
the meta device (no memory, no compute) to compare key sets and parameter counts.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from advtrain.errors import CheckpointError, ConfigError
from advtrain.models import MODEL_NAMES, Normalize, build_model, load_model_state, model_kwargs

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# Small variants so every test runs in well under a second on 2 CPU cores.
SMALL_KWARGS: dict[str, dict[str, int]] = {
    "small_cnn": {"width": 8},
    "preact_resnet18": {"width": 8},
    "resnet18": {"width": 8},
    "wrn34_10": {"depth": 10, "widen_factor": 1},
    "wrn28_10_swish": {"depth": 10, "width": 1},
}


def _small(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes, **{**SMALL_KWARGS[name], **kwargs})


def _randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics/affine parameters, so eval-mode comparisons exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _rb_module(name: str) -> ModuleType:
    """robustbench.model_zoo.architectures.<name>.

    `import robustbench` pulls in its evaluation code (AutoAttack, timm, pkg_resources); if that
    chain is broken in an environment, load the architecture file itself, which only needs torch:
    the classes under test are the same source either way.
    """
    full = f"robustbench.model_zoo.architectures.{name}"
    try:
        return importlib.import_module(full)
    except ImportError:
        pass
    spec = importlib.util.find_spec("robustbench")
    assert spec is not None and spec.submodule_search_locations, "robustbench is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "architectures"
    file_spec = importlib.util.spec_from_file_location(f"_rb_arch_{name}", path / f"{name}.py")
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[file_spec.name] = module
    file_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb_wrn() -> type[nn.Module]:
    return _rb_module("wide_resnet").WideResNet


@pytest.fixture(scope="module")
def rb_dm() -> type[nn.Module]:
    return _rb_module("dm_wide_resnet").DMWideResNet


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_for_cifar(name: str, num_classes: int) -> None:
    model = _small(name, num_classes).eval()
    x = torch.rand(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()
    # Different inputs give different logits: the network is actually wired to its input.
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_for_fashion_mnist(name: str) -> None:
    model = _small(name, 10, in_channels=1, mean=0.2860, std=0.3530).eval()
    logits = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    with pytest.raises(RuntimeError):  # a 3-channel input is rejected by the 1-channel stem
        model(torch.rand(4, 3, 28, 28))


def test_model_names() -> None:
    assert MODEL_NAMES == ("small_cnn", "preact_resnet18", "resnet18", "wrn34_10", "wrn28_10_swish")


def test_small_cnn_size_and_width_scaling() -> None:
    def count(width: int) -> int:
        return sum(p.numel() for p in build_model("small_cnn", width=width).parameters())

    assert 100_000 <= count(32) <= 1_000_000
    # Conv weights dominate and scale with width**2.
    assert 3.5 < count(64) / count(32) < 4.1


def test_default_widths_are_the_standard_models() -> None:
    """ResNet-18 / PreAct ResNet-18 at width 64 have their textbook ~11.2M parameters."""
    with torch.device("meta"):
        preact = build_model("preact_resnet18")
        resnet = build_model("resnet18")
    assert sum(p.numel() for p in preact.parameters()) == 11_172_170
    assert sum(p.numel() for p in resnet.parameters()) == 11_173_962


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("wrn70_16")
    msg = str(info.value)
    assert "wrn70_16" in msg
    assert all(n in msg for n in MODEL_NAMES)


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(ConfigError, match="'widen'"):
        build_model("wrn34_10", widen=1)
    with pytest.raises(ConfigError, match="'widen_factor'"):  # DMWideResNet calls it `width`
        build_model("wrn28_10_swish", widen_factor=1)
    # The activation defines the named variant; it is not a config option.
    with pytest.raises(ConfigError, match="'activation_fn'"):
        build_model("wrn28_10_swish", activation_fn=nn.ReLU)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("preact_resnet18", {"width": "16"}),
        ("resnet18", {"width": 0}),
        ("wrn34_10", {"depth": 33}),
        ("wrn28_10_swish", {"depth": 4}),
        ("wrn34_10", {"drop_rate": 1.5}),
        ("wrn28_10_swish", {"bn_momentum": 0.0}),
        ("small_cnn", {"in_channels": 0}),
        ("small_cnn", {"num_classes": 0}),
        ("small_cnn", {"mean": (0.5, 0.5)}),  # 2 values for 3 channels
        ("small_cnn", {"std": (0.2, 0.0, 0.2)}),
    ],
)
def test_bad_values_raise_config_error(name: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_model(name, **kwargs)


def test_model_kwargs_lists_options() -> None:
    assert set(model_kwargs("wrn34_10")) >= {"depth", "widen_factor", "sub_block1"}
    assert set(model_kwargs("wrn28_10_swish")) >= {"depth", "width"}
    assert "width" in model_kwargs("preact_resnet18")
    assert "activation_fn" not in model_kwargs("wrn28_10_swish")


# ------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalisation_is_inside_the_model(name: str) -> None:
    normed = _small(name, mean=CIFAR10_MEAN, std=CIFAR10_STD).eval()
    plain = _small(name).eval()
    _randomize_bn(normed)
    plain.load_state_dict(normed.state_dict(), strict=True)  # same weights, no normalisation
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = plain((x - mean) / std)
        got = normed(x)
        unnormalised = plain(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # ...and the normalisation really changes the result (the comparison above could fail).
    assert (got - unnormalised).abs().max() > 1e-3


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mean_std_not_in_state_dict(name: str) -> None:
    model = _small(name, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    keys = list(model.state_dict())
    assert not [k for k in keys if k.split(".")[-1] in ("mean", "std")]
    # They are still buffers, so .to() moves/casts them with the weights.
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["normalize.mean"].flatten(), torch.tensor(CIFAR10_MEAN))
    model = model.to(torch.float64)
    assert model.normalize.std.dtype == torch.float64


def test_normalize_identity_and_partial_stats() -> None:
    x = torch.rand(2, 3, 4, 4)
    identity = Normalize(None, None, channels=3)
    assert identity.is_identity and identity(x) is x
    only_std = Normalize(None, 0.5, channels=3)
    torch.testing.assert_close(only_std(x), x / 0.5)
    only_mean = Normalize((0.1, 0.2, 0.3), None, channels=3)
    torch.testing.assert_close(only_mean(x), x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
    with pytest.raises(ConfigError, match="channels"):
        Normalize((0.1, 0.2), 1.0, channels=3)
    with pytest.raises(ConfigError, match="> 0"):
        Normalize(0.0, -1.0, channels=1)


# ------------------------------------------------------------------------------------------
# RobustBench compatibility
# ------------------------------------------------------------------------------------------


def _assert_same_state_layout(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)  # same names in the same order
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}


@pytest.mark.parametrize("sub_block1", [False, True])
def test_wrn_matches_robustbench_wideresnet(rb_wrn, sub_block1: bool) -> None:
    ours = _small("wrn34_10", 10, sub_block1=sub_block1)
    _randomize_bn(ours)
    ours.eval()
    theirs = rb_wrn(depth=10, num_classes=10, widen_factor=1, sub_block1=sub_block1).eval()
    _assert_same_state_layout(ours, theirs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    # And the other way round: RobustBench's weights into ours.
    fresh = _small("wrn34_10", 10, sub_block1=sub_block1).eval()
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), theirs(x))


def test_wrn_with_normalisation_matches_robustbench_on_normalised_input(rb_wrn) -> None:
    """RobustBench's TRADES WRN has no normalisation: ours with stats == theirs on (x-m)/s."""
    ours = _small("wrn34_10", 100, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    _randomize_bn(ours)
    ours.eval()
    theirs = rb_wrn(depth=10, num_classes=100, widen_factor=1).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs((x - mean) / std))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_dm_wrn_matches_robustbench_dmwideresnet(rb_dm, num_classes: int) -> None:
    ours = _small("wrn28_10_swish", num_classes, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    _randomize_bn(ours)
    ours.eval()
    theirs = rb_dm(
        num_classes=num_classes,
        depth=10,
        width=1,
        activation_fn=nn.SiLU,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ).eval()
    _assert_same_state_layout(ours, theirs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    fresh = _small("wrn28_10_swish", num_classes, mean=CIFAR10_MEAN, std=CIFAR10_STD).eval()
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), theirs(x))


def test_dm_wrn_matches_robustbench_in_train_mode(rb_dm) -> None:
    """Batch-statistics BN and the SAME padding agree too, not only the eval-mode path."""
    ours = _small("wrn28_10_swish", mean=CIFAR10_MEAN, std=CIFAR10_STD).train()
    theirs = rb_dm(depth=10, width=1, activation_fn=nn.SiLU, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.train()
    x = torch.rand(6, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_full_size_wrns_match_robustbench_keys_and_parameter_counts(rb_wrn, rb_dm) -> None:
    with torch.device("meta"):
        ours_wrn = build_model("wrn34_10", 10)
        theirs_wrn = rb_wrn(depth=34, num_classes=10, widen_factor=10)
        ours_dm = build_model("wrn28_10_swish", 10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        theirs_dm = rb_dm(num_classes=10, depth=28, width=10, activation_fn=nn.SiLU)
    _assert_same_state_layout(ours_wrn, theirs_wrn)
    _assert_same_state_layout(ours_dm, theirs_dm)

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(ours_wrn) == count(theirs_wrn) == 46_160_474  # "46.16M"
    assert count(ours_dm) == count(theirs_dm) == 36_479_194  # "36.48M"


def test_wrn_initialisation(rb_wrn) -> None:
    model = _small("wrn34_10")
    conv = model.block3.layer[0].conv2  # 64 x 64 x 3 x 3 = 36,864 weights
    expected_std = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.03
    assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)
    dm = _small("wrn28_10_swish")
    assert torch.all(dm.logits.bias == 0)
    assert abs(dm.layer[2].block[0].conv_1.weight.std().item() / expected_std - 1) < 0.03


# ------------------------------------------------------------------------------------------
# load_model_state
# ------------------------------------------------------------------------------------------


def _prefixed(state: dict, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_load_model_state_strips_wrapper_prefixes(prefix: str) -> None:
    source = _small("resnet18")
    _randomize_bn(source)
    target = _small("resnet18", mean=CIFAR10_MEAN, std=CIFAR10_STD)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    load_model_state(target, _prefixed(source.state_dict(), prefix))
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_model_state_from_data_parallel_state_dict() -> None:
    """A state dict saved from an nn.DataParallel wrapper (real `module.` keys) loads."""
    source = _small("small_cnn")
    wrapped_state = nn.DataParallel(source).state_dict()
    assert next(iter(wrapped_state)).startswith("module.")
    target = _small("small_cnn")
    with torch.no_grad():
        target.classifier.weight.zero_()
    load_model_state(target, wrapped_state)
    assert torch.equal(target.classifier.weight, source.classifier.weight)


def test_load_model_state_into_wrapped_model() -> None:
    source = _small("small_cnn")
    target = nn.DataParallel(_small("small_cnn"))
    with torch.no_grad():
        target.module.classifier.weight.zero_()
    load_model_state(target, source.state_dict())
    assert torch.equal(target.module.classifier.weight, source.classifier.weight)


def test_load_model_state_other_architecture_raises() -> None:
    target = _small("wrn34_10")
    with pytest.raises(CheckpointError) as info:
        load_model_state(target, _small("wrn28_10_swish").state_dict())
    msg = str(info.value)
    assert msg.startswith("checkpoint does not match model WideResNet: missing [")
    assert "unexpected [" in msg and "init_conv.weight" in msg and "conv1.weight" in msg
    assert "more" in msg  # dozens of keys differ; only 5 of each are listed
    assert msg.count("\n") == 0
    # Nothing was loaded: the model still has its own weights.
    assert torch.equal(target.conv1.weight, _small("wrn34_10").conv1.weight)


def test_load_model_state_reports_shape_mismatch() -> None:
    with pytest.raises(CheckpointError, match=r"shape mismatch \[linear.weight: checkpoint"):
        load_model_state(_small("resnet18", 100), _small("resnet18", 10).state_dict())


def test_load_model_state_rejects_non_mapping_and_whole_checkpoint() -> None:
    model = _small("small_cnn")
    with pytest.raises(CheckpointError, match="state dict"):
        load_model_state(model, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"checkpoint\['model'\]"):
        load_model_state(model, {"format": "advtrain-checkpoint", "model": model.state_dict()})


def test_load_model_state_keeps_a_real_module_prefix() -> None:
    """A model whose own keys start with `module.` is not mangled by the prefix stripping."""

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    source, target = Holder(), Holder()
    load_model_state(target, source.state_dict())
    assert torch.equal(target.module.weight, source.module.weight)


# ------------------------------------------------------------------------------------------
# memory format and gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_gives_same_logits(name: str) -> None:
    model = _small(name, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    _randomize_bn(model)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_input_gradient_matches_finite_differences(name: str) -> None:
    """Attacks differentiate w.r.t. the input through Normalize and in-place activations."""
    model = _small(name, mean=CIFAR10_MEAN, std=CIFAR10_STD).double()
    _randomize_bn(model)
    model.eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    direction = torch.randn_like(x)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    h = 1e-6
    with torch.no_grad():
        fd = (model(x + h * direction)[:, 0].sum() - model(x - h * direction)[:, 0].sum()) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-4, atol=1e-7)
