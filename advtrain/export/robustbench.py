"""RobustBench export: zoo checkpoint, leaderboard JSON (`model_info`), submission text, checks.

What RobustBench needs (docs/robustbench_format.md §2-§4) and why each rule is enforced here:

* Weights: `models/<dataset>/<threat_model>/<ModelId>.pt` holding `{'state_dict': sd}` that loads
  with `strict=True` into RobustBench's own architecture class. Keys must be flat: its loader strips
  `module.`/`model.` by cutting the first characters of any key that merely *contains* them, so such
  a key would be mangled. We do not trust names alone: export builds the RobustBench class, loads
  the weights and compares logits with our model on real test images, refusing on any mismatch.
* Leaderboard entry: `model_info/<dataset>/<threat_model>/<ModelId>.json` with the fields of the
  236 curated files, in their conventional order, eps as a string ("8/255"), accuracies as
  two-decimal percentage strings. No schema exists upstream; `validate_model_info` is modelled on
  the curated files (it accepts their known irregularities unless `strict`).
* Numbers: only from a full standard AutoAttack run on all 10,000 test images at the leaderboard
  eps. Anything else (partial, custom attacks, another eps) is refused, or with `allow_partial`
  written to a `*.partial.json` that cannot be mistaken for an entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from advtrain.errors import AdvtrainError

__all__ = [
    "LEADERBOARD_EPS",
    "MODEL_INFO_KEYS",
    "ExportError",
    "architecture_name",
    "build_model_info",
    "compare_logits",
    "export_state_dict",
    "leaderboard_problems",
    "robustbench_constructor",
    "submission_text",
    "validate_model_id",
    "validate_model_info",
]

#: Key order of the curated files (footnote before autoattack_acc, as in most of them).
MODEL_INFO_KEYS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "footnote",
    "autoattack_acc",
    "unreliable",
)
_OPTIONAL_KEYS = frozenset(
    {
        "external",
        "footnote",
        "unreliable",
        "autoattack_acc",
        "corruptions_acc",
        "corruptions_acc_3d",
        "corruptions_mce",
        "corruptions_mce_3d",
    }
)
_REQUIRED_KEYS = tuple(k for k in MODEL_INFO_KEYS if k not in _OPTIONAL_KEYS)
_DATASETS = ("cifar10", "cifar100", "imagenet")
#: The eps each leaderboard evaluates at (RobustBench README / curated files).
LEADERBOARD_EPS: dict[tuple[str, str], str] = {
    ("cifar10", "Linf"): "8/255",
    ("cifar10", "L2"): "0.5",
    ("cifar100", "Linf"): "8/255",
    ("imagenet", "Linf"): "4/255",
}
_STANDARD_ATTACKS = ["apgd-ce", "apgd-t", "fab-t", "square"]
#: A percentage string as found upstream: "57.09", "76.9", "58", "0.0", "100.0".
_PCT = re.compile(r"^\d{1,3}(\.\d{1,2})?$")
_PCT_STRICT = re.compile(r"^\d{1,3}\.\d{2}$")
_EPS_STR = re.compile(r"^(\d+/\d+|\d+(\.\d+)?)$")
#: <Surname><Year><FirstWordOfTitle>[_variant], e.g. Cui2023Decoupled_WRN-34-10.
_MODEL_ID = re.compile(r"^[A-Z][A-Za-z\-]*\d{4}[A-Z][A-Za-z0-9]*(?:_[A-Za-z0-9.\-]+)*$")
_MANGLED_SUBSTRINGS = ("module.", "model.")


class ExportError(AdvtrainError):
    """The export would produce something RobustBench would reject or that misreports the model."""


# --------------------------------------------------------------------------------------------
# architectures
# --------------------------------------------------------------------------------------------


def architecture_name(model_config: Mapping[str, Any]) -> str:
    """The leaderboard's architecture string, e.g. "WideResNet-28-10", "PreActResNet-18"."""
    name = model_config.get("name")
    if name == "wrn28_10_swish":
        return f"WideResNet-{model_config.get('depth', 28)}-{model_config.get('width', 10)}"
    if name == "wrn34_10":
        return f"WideResNet-{model_config.get('depth', 34)}-{model_config.get('widen_factor', 10)}"
    if name == "preact_resnet18":
        w = model_config.get("width", 64)
        return "PreActResNet-18" if w == 64 else f"PreActResNet-18 (width {w})"
    if name == "resnet18":
        w = model_config.get("width", 64)
        return "ResNet-18" if w == 64 else f"ResNet-18 (width {w})"
    if name == "small_cnn":
        return f"SmallCNN (width {model_config.get('width', 32)})"
    return str(name)


def robustbench_constructor(
    model_config: Mapping[str, Any],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[Callable[[], nn.Module] | None, str]:
    """A builder of RobustBench's architecture class for our model, or (None, why not).

    mean/std are the dataset statistics; they matter only when the model normalises inside
    (`normalize: true`). RobustBench's `WideResNet` and `PreActResNet` have no normalisation, so
    such a model only maps onto them when it was built without one (as the TRADES/GKL WRN-34-10).
    """
    name = model_config.get("name")
    normalize = bool(model_config.get("normalize", True))
    if name == "wrn28_10_swish":
        from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet

        m, s = (tuple(mean), tuple(std)) if normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        depth, width = int(model_config.get("depth", 28)), int(model_config.get("width", 10))

        def build_dm() -> nn.Module:
            return DMWideResNet(
                num_classes=num_classes,
                depth=depth,
                width=width,
                activation_fn=nn.SiLU,
                mean=m,
                std=s,
            )

        return (
            build_dm,
            f"robustbench DMWideResNet(num_classes={num_classes}, depth={depth}, width={width}, activation_fn=nn.SiLU, mean=..., std=...)",
        )
    if name == "wrn34_10":
        if normalize:
            return None, (
                "robustbench's WideResNet has no input normalisation but this model normalises "
                "inside (model.normalize=true); train with model.normalize=false (the TRADES/GKL "
                "recipe) to get a RobustBench-compatible WRN-34-10"
            )
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        kw = {
            "depth": int(model_config.get("depth", 34)),
            "widen_factor": int(model_config.get("widen_factor", 10)),
            "num_classes": num_classes,
            "sub_block1": bool(model_config.get("sub_block1", False)),
            "bias_last": bool(model_config.get("bias_last", True)),
        }

        def build_wrn() -> nn.Module:
            return WideResNet(**kw)

        return build_wrn, f"robustbench WideResNet({', '.join(f'{k}={v}' for k, v in kw.items())})"
    if name == "preact_resnet18":
        if int(model_config.get("width", 64)) != 64:
            return None, "robustbench's PreActResNet has fixed width 64"
        if normalize:
            return None, (
                "robustbench's PreActResNet has no input normalisation but this model normalises "
                "inside (model.normalize=true)"
            )
        from robustbench.model_zoo.architectures.resnet import PreActBlock, PreActResNet

        def build_preact() -> nn.Module:
            # Our block pre-activates the projection shortcut (out_shortcut=True) and has a final
            # BN-ReLU before the classifier (bn_before_fc=True); the parameter names then agree.
            return PreActResNet(
                PreActBlock,
                [2, 2, 2, 2],
                num_classes=num_classes,
                bn_before_fc=True,
                out_shortcut=True,
            )

        return (
            build_preact,
            "robustbench PreActResNet(PreActBlock, [2, 2, 2, 2], bn_before_fc=True, out_shortcut=True)",
        )
    return None, (
        f"RobustBench's model zoo has no architecture class for advtrain's {name!r}; a zoo entry "
        "needs that architecture added to robustbench/model_zoo/architectures"
    )


def export_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat, CPU, contiguous tensor-only copy; refuses keys RobustBench's loader would mangle."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ExportError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        bad = [s for s in _MANGLED_SUBSTRINGS if s in k]
        if bad:
            raise ExportError(
                f"state dict key {k!r} contains {bad[0]!r}: robustbench's loader would cut the first "
                f"{len(bad[0])} characters of it; rename the submodule"
            )
        out[k] = v.detach().to("cpu").clone().contiguous()
    return out


@torch.no_grad()
def compare_logits(
    ours: nn.Module, theirs: nn.Module, x: torch.Tensor, *, batch_size: int = 128
) -> tuple[float, bool]:
    """(max |difference| of logits, bit-identical?) of two models on images `x` in [0, 1]."""
    ours_training, theirs_training = ours.training, theirs.training
    ours.eval()
    theirs.eval()
    try:
        max_diff, identical = 0.0, True
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            a = ours(xb.to(next(ours.parameters()).device)).float().cpu()
            b = theirs(xb.to(next(theirs.parameters()).device)).float().cpu()
            if a.shape != b.shape:
                raise ExportError(
                    f"logit shapes differ: ours {tuple(a.shape)} vs robustbench {tuple(b.shape)}"
                )
            identical = identical and torch.equal(a, b)
            max_diff = max(max_diff, float((a - b).abs().max()))
        return max_diff, identical
    finally:
        ours.train(ours_training)
        theirs.train(theirs_training)


# --------------------------------------------------------------------------------------------
# leaderboard entry
# --------------------------------------------------------------------------------------------


def _pct(acc: float) -> str:
    """0.57094 -> "57.09" (two decimals, as the curated files)."""
    return f"{100.0 * float(acc):.2f}"


def leaderboard_problems(results: Mapping[str, Any], threat_model: str) -> list[str]:
    """Why a results.json cannot back a leaderboard entry (empty list: it can)."""
    problems = []
    if results.get("kind") != "autoattack":
        problems.append(
            f"the evaluation is '{results.get('preset')}' ({results.get('kind')}), not AutoAttack"
        )
    elif (
        results.get("version") != "standard"
        or list(results.get("attacks") or []) != _STANDARD_ATTACKS
    ):
        problems.append(
            f"AutoAttack version '{results.get('version')}' ({results.get('attacks')}) is not the standard version"
        )
    n, total = results.get("n_examples"), results.get("test_set_size")
    if not (isinstance(n, int) and n >= 10000 and n == total):
        problems.append(
            f"only {n} of {total} test images were evaluated (the leaderboard needs all 10000: n_examples=null)"
        )
    expected = LEADERBOARD_EPS.get((str(results.get("dataset")), threat_model))
    if expected is None:
        problems.append(f"RobustBench has no {results.get('dataset')}/{threat_model} leaderboard")
    elif results.get("eps_str") != expected:
        problems.append(
            f"eps={results.get('eps_str')} but the {results.get('dataset')}/{threat_model} leaderboard uses eps={expected}"
        )
    return problems


def build_model_info(
    results: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    dataset: str,
    architecture: str,
    unreliable: bool,
) -> dict[str, Any]:
    """The model_info dict in the curated key order, numbers from `results`, text from `metadata`."""
    clean = results.get("clean_acc")
    robust = results.get("robust_acc")
    if clean is None or robust is None:
        raise ExportError(
            "results.json has no clean_acc/robust_acc; evaluate with eval=aa_standard"
        )
    reported = metadata.get("reported")
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        reported = f"{float(reported):.2f}"
    info = {
        "link": metadata.get("link"),
        "name": metadata.get("name"),
        "authors": metadata.get("authors"),
        "additional_data": bool(metadata.get("additional_data", False)),
        "number_forward_passes": int(metadata.get("number_forward_passes", 1)),
        "dataset": dataset,
        "venue": metadata.get("venue"),
        "architecture": metadata.get("architecture") or architecture,
        "eps": results.get("eps_str"),
        "clean_acc": _pct(clean),
        "reported": "" if reported is None else str(reported),
        "footnote": metadata.get("footnote"),
        "autoattack_acc": _pct(robust),
        "unreliable": bool(unreliable),
    }
    return info


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_model_info(
    info: Mapping[str, Any], *, threat_model: str | None = None, strict: bool = False
) -> list[str]:
    """Problems of a model_info dict (empty list: valid), modelled on RobustBench's curated files.

    Accepts what curated files contain (1-decimal numbers, `reported` "" or null, `unreliable`
    absent, `external`, corruption fields, `eps` null for corruptions). `strict` (what our export
    promises) additionally requires the conventional key order, two-decimal accuracies, an eps
    string and the `unreliable` flag. `threat_model` (Linf, L2, corruptions) checks the eps and
    which accuracy field must be present.
    """
    errs: list[str] = []
    if not isinstance(info, Mapping):
        return [f"model info must be a JSON object, got {type(info).__name__}"]
    known = set(MODEL_INFO_KEYS) | _OPTIONAL_KEYS
    for k in info:
        if k not in known:
            errs.append(f"unknown key {k!r}")
    for k in _REQUIRED_KEYS:
        if k not in info:
            errs.append(f"missing key {k!r}")
    link = info.get("link")
    if "link" in info and not (isinstance(link, str) and link.startswith(("https://", "http://"))):
        errs.append(f"link must be an http(s) URL string, got {link!r}")
    for k in ("name", "venue", "architecture"):
        if k in info and not (isinstance(info[k], str) and (info[k].strip() or k == "venue")):
            errs.append(f"{k} must be a non-empty string, got {info[k]!r}")
    if "authors" in info and not isinstance(info["authors"], str):
        errs.append(f"authors must be a string 'First Last, First Last', got {info['authors']!r}")
    if "additional_data" in info and not isinstance(info["additional_data"], bool):
        errs.append(f"additional_data must be true or false, got {info['additional_data']!r}")
    nfp = info.get("number_forward_passes")
    if "number_forward_passes" in info and not (_is_int(nfp) and nfp >= 1):
        errs.append(f"number_forward_passes must be an integer >= 1, got {nfp!r}")
    if "dataset" in info and info["dataset"] not in _DATASETS:
        errs.append(f"dataset must be one of {list(_DATASETS)}, got {info['dataset']!r}")
    eps = info.get("eps")
    if "eps" in info:
        if isinstance(eps, int | float) and not isinstance(eps, bool):
            errs.append(f'eps must be a string such as "8/255", not the number {eps!r}')
        elif eps is None:
            if strict or threat_model in ("Linf", "L2"):
                errs.append('eps is null; Lp entries give it as a string such as "8/255"')
        elif not (isinstance(eps, str) and _EPS_STR.match(eps)):
            errs.append(f'eps must look like "8/255" or "0.5", got {eps!r}')
        elif threat_model == "Linf" and strict and "/" not in eps:
            errs.append(f'Linf eps is written as a fraction such as "8/255", got {eps!r}')
    pct_re = _PCT_STRICT if strict else _PCT
    values: dict[str, float] = {}
    for k in ("clean_acc", "autoattack_acc", "external", "corruptions_acc"):
        if k not in info:
            continue
        v = info[k]
        if not (isinstance(v, str) and pct_re.match(v)):
            want = 'two decimals, e.g. "57.09"' if strict else 'a percentage string such as "57.09"'
            errs.append(f"{k} must be {want}, got {v!r}")
            continue
        values[k] = float(v)
        if not 0.0 <= values[k] <= 100.0:
            errs.append(f"{k}={v} is not a percentage in [0, 100]")
    if "reported" in info:
        r = info["reported"]
        if r is not None and not (isinstance(r, str) and (r in ("", "null") or _PCT.match(r))):
            errs.append(f'reported must be a percentage string or "", got {r!r}')
        if strict and not isinstance(r, str):
            errs.append(f'reported must be a string ("" if the paper reports none), got {r!r}')
    if (
        "footnote" in info
        and info["footnote"] is not None
        and not isinstance(info["footnote"], str)
    ):
        errs.append(f"footnote must be a string or null, got {info['footnote']!r}")
    if "unreliable" in info and not isinstance(info["unreliable"], bool):
        errs.append(f"unreliable must be true or false, got {info['unreliable']!r}")
    if (
        threat_model in ("Linf", "L2", None)
        and "corruptions_acc" not in info
        and "autoattack_acc" not in info
    ):
        errs.append("missing key 'autoattack_acc' (the AutoAttack robust accuracy of an Lp entry)")
    if threat_model == "corruptions" and "corruptions_acc" not in info:
        errs.append("missing key 'corruptions_acc' for a corruptions entry")
    if (
        "clean_acc" in values
        and "autoattack_acc" in values
        and values["autoattack_acc"] > values["clean_acc"]
    ):
        errs.append(
            f"autoattack_acc {info['autoattack_acc']} exceeds clean_acc {info['clean_acc']}"
        )
    if (
        "external" in values
        and "autoattack_acc" in values
        and values["external"] > values["autoattack_acc"]
    ):
        errs.append(f"external {info['external']} exceeds autoattack_acc {info['autoattack_acc']}")
    if strict:
        if "unreliable" not in info:
            errs.append("missing key 'unreliable'")
        order = [k for k in info if k in MODEL_INFO_KEYS]
        expected = [k for k in MODEL_INFO_KEYS if k in info]
        if order != expected:
            errs.append(f"keys are not in the conventional order {expected}")
        if threat_model is not None and "dataset" in info:
            want = LEADERBOARD_EPS.get((str(info["dataset"]), threat_model))
            if want is not None and isinstance(eps, str) and eps != want:
                errs.append(
                    f"eps {eps!r} is not the {info['dataset']}/{threat_model} leaderboard eps {want!r}"
                )
    return errs


def validate_model_id(model_id: object) -> str:
    """The id if it follows `<Surname><Year><FirstWordOfTitle>[_variant]`, else ExportError."""
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise ExportError(
            f"model_id={model_id!r} must look like <Surname><Year><FirstWordOfTitle>[_variant], "
            "e.g. Cui2023Decoupled_WRN-34-10 (RobustBench's file-name convention)"
        )
    return model_id


def submission_text(
    info: Mapping[str, Any],
    *,
    model_id: str,
    threat_model: str,
    results: Mapping[str, Any],
    checkpoint_url: str | None,
    zoo_ready: bool,
    zoo_note: str,
) -> str:
    """The "New Model(s)" issue text (RobustBench .github/ISSUE_TEMPLATE/new-model.md), filled in."""
    versions = results.get("versions") or {}
    n = results.get("n_examples")
    method = (
        f"AutoAttack version '{results.get('version')}' ({', '.join(results.get('attacks') or [])}), "
        f"{threat_model} eps={results.get('eps_str')}, first {n} {results.get('dataset')} test images, "
        f"batch size {results.get('batch_size')}, seed {results.get('seed')} "
        f"(pyautoattack {versions.get('pyautoattack')}, torch {versions.get('torch')}); full log attached"
    )
    if results.get("warnings"):
        method += "; red flags: " + " | ".join(results["warnings"])
    tests = results.get("masking_tests") or []
    if tests:
        method += (
            "; gradient-masking tests (one-sided exact binomial, advtrain.eval.checks): "
            + ", ".join(
                f"{t['name']}: {t['k']} of {t['n']} images, p = {t['p_value']:.2g}"
                + (" (significant)" if t.get("significant") else "")
                for t in tests
            )
        )
    clean = info.get("clean_acc")
    robust = info.get("autoattack_acc")
    return "\n".join(
        [
            f"Title: [New Model] {model_id}",
            "",
            "# Paper Information",
            "",
            f"- **Paper Title**: {info.get('name')}",
            f"- **Paper URL**: {info.get('link')}",
            f"- **Paper authors**: {info.get('authors')}",
            "",
            "# Leaderboard Claim(s)",
            "",
            "## Model 1",
            "",
            f"- **Architecture**: {info.get('architecture')}",
            f"- **Threat Model**: {threat_model}",
            f"- **eps**: {info.get('eps')}",
            f"- **Clean accuracy**: {clean}%",
            f"- **Robust accuracy**: {robust}%",
            f"- **Additional data**: {'true' if info.get('additional_data') else 'false'}",
            f"- **Evaluation method**: {method}",
            f"- **Checkpoint and code**: {checkpoint_url or '(insert the URL of the checkpoint and the code)'}",
            "",
            "# Model Zoo:",
            "",
            f"- [{'x' if zoo_ready else ' '}] I want to add my models to the Model Zoo (check if true)",
            f"- [{' ' if zoo_ready else 'x'}] I use an architecture that is **not** included among those "
            "[here](https://github.com/RobustBench/robustbench/tree/master/robustbench/model_zoo/architectures) "
            "(check if true).",
            "- [ ] I agree to release my model(s) under MIT license (check if true) **OR**",
            "- [ ] I want my models to be released under a custom license, located here: (custom license URL here)",
            "",
            f"<!-- advtrain export: {zoo_note} -->",
            "",
        ]
    )
