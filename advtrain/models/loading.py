"""A model from a config or from a file: the one place that turns "what to load" into a ready `nn.Module`.

Why here and not in the training engine or the evaluation: training builds its model from the config,
evaluation and export rebuild the same model from a checkpoint's stored config. Keeping both next to the
architectures means evaluation never imports the training engine, and a checkpoint written by training is
read back by exactly the code that built it.

Three sources (`ModelSource`), as the `eval` and `export` commands name them:

* an advtrain checkpoint (`ckpt=PATH`): architecture and dataset from the config stored in it; the EMA
  weights when it has them unless `use_ema=false`;
* a plain state dict for a zoo architecture (`model=NAME ckpt=PATH`), dataset from `data`;
* a RobustBench zoo model whose weights are already on disk (`robustbench.name=ID`): advtrain never
  downloads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from advtrain.errors import CheckpointError, ConfigError

__all__ = [
    "ROBUSTBENCH_DATASETS",
    "LoadedModel",
    "ModelSource",
    "load_model",
    "model_from_config",
]

#: Datasets with a RobustBench model zoo that advtrain can evaluate.
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")


def model_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """The model of `cfg['model']` for the dataset of `cfg['data']` (normalisation inside).

    Class count, input channels and normalisation statistics come from the dataset, never from the
    model group: a `model.num_classes` that disagrees with the dataset is a ConfigError.
    """
    from advtrain.data import get_info
    from advtrain.models.registry import build_model

    mcfg = dict(cfg["model"])
    name = mcfg.pop("name")
    normalize = mcfg.pop("normalize", True)
    info = get_info(cfg["data"]["name"])
    for key, want in (("num_classes", info.num_classes), ("in_channels", info.channels)):
        given = mcfg.pop(key, want)
        if given != want:
            raise ConfigError(
                f"model.{key}={given} disagrees with data={info.name} ({want}); the model takes it from the "
                f"dataset, remove model.{key}"
            )
    return build_model(
        name,
        info.num_classes,
        in_channels=info.channels,
        mean=info.mean if normalize else None,
        std=info.std if normalize else None,
        **mcfg,
    )


@dataclass(frozen=True)
class ModelSource:
    """What to load: exactly one of an advtrain checkpoint, a plain state dict plus its architecture
    (`model`, a model config group such as `{"name": "wrn34_10"}`), or a RobustBench model id.

    `dataset` is the data set of a plain state dict or a RobustBench model (None: cifar10); an
    advtrain checkpoint brings its own, and a `dataset` given for one that disagrees is noted (the
    checkpoint's wins). `use_ema=None` means: the EMA weights when the checkpoint holds them.
    """

    ckpt: str | os.PathLike[str] | None = None
    model: Mapping[str, Any] | None = None
    dataset: str | None = None
    use_ema: bool | None = None
    robustbench_name: str | None = None
    robustbench_model_dir: str | os.PathLike[str] = "./models"
    robustbench_threat_model: str | None = None

    def __post_init__(self) -> None:
        if self.robustbench_name:
            if self.ckpt or self.model:
                raise ConfigError(
                    "give either robustbench.name=ID or ckpt=PATH (with model=NAME), not both"
                )
        elif not self.ckpt:
            raise ConfigError(
                "nothing to evaluate: set ckpt=PATH (advtrain checkpoint), model=NAME ckpt=PATH "
                "(plain state dict) or robustbench.name=ID"
            )

    @property
    def data_name(self) -> str:
        """The data set of a plain state dict or a RobustBench model (cifar10 unless given)."""
        return self.dataset or "cifar10"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ModelSource:
        """From the `ckpt`, `model`, `data`, `use_ema` and `robustbench` keys of an eval/export config."""
        rb = cfg.get("robustbench") or {}
        mcfg = cfg.get("model")
        return cls(
            ckpt=cfg.get("ckpt"),
            model=dict(mcfg) if mcfg else None,
            dataset=str((cfg.get("data") or {}).get("name", "cifar10")),
            use_ema=cfg.get("use_ema"),
            robustbench_name=rb.get("name"),
            robustbench_model_dir=rb.get("model_dir") or "./models",
            robustbench_threat_model=rb.get("threat_model"),
        )


@dataclass
class LoadedModel:
    """A model ready for evaluation (CPU, eval mode) plus what it was built from (recorded in results.json)."""

    model: nn.Module
    dataset: str
    source: str  # advtrain | state_dict | robustbench
    name: str  # zoo architecture name or RobustBench id
    model_config: dict[str, Any] | None
    ckpt_path: str | None
    ckpt_sha256: str | None
    use_ema: bool | None
    notes: list[str] = field(default_factory=list)


def load_model(source: ModelSource, *, norm: str = "Linf") -> LoadedModel:
    """Build and load the model `source` names, on the CPU in eval mode.

    `norm` picks the RobustBench threat model when `source` does not name one.
    """
    if source.robustbench_name:
        return _robustbench_model(source, norm)
    path = Path(str(source.ckpt)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if source.model:
        return _state_dict_model(source, path)
    return _advtrain_model(source, path)


def _state_dict_model(source: ModelSource, path: Path) -> LoadedModel:
    from advtrain.models.registry import load_model_state
    from advtrain.utils.checkpoint import load_state_dict_file
    from advtrain.utils.hashing import file_sha256

    if source.use_ema:
        raise ConfigError(
            "use_ema=true needs an advtrain checkpoint; a plain state dict has one set of weights"
        )
    assert source.model is not None
    mcfg = dict(source.model)
    sha = file_sha256(path)
    model = model_from_config({"model": mcfg, "data": {"name": source.data_name}})
    load_model_state(model, load_state_dict_file(path))
    return LoadedModel(
        model=model.eval(),
        dataset=source.data_name,
        source="state_dict",
        name=str(mcfg["name"]),
        model_config=mcfg,
        ckpt_path=str(path.resolve()),
        ckpt_sha256=sha,
        use_ema=None,
    )


def _advtrain_model(source: ModelSource, path: Path) -> LoadedModel:
    from advtrain.models.registry import load_model_state
    from advtrain.utils.checkpoint import load_checkpoint
    from advtrain.utils.hashing import file_sha256

    sha = file_sha256(path)
    data = load_checkpoint(path)
    config = data.get("config") or {}
    if "model" not in config or "data" not in config:
        raise CheckpointError(
            f"{path} has no model/data config; evaluate it with model=NAME ckpt=PATH"
        )
    ema = data.get("ema")
    use_ema = ema is not None if source.use_ema is None else bool(source.use_ema)
    if use_ema and ema is None:
        raise ConfigError(f"use_ema=true but {path} holds no EMA weights; use use_ema=false")
    model = model_from_config(config)
    load_model_state(model, ema if use_ema else data["model"])
    dataset = config["data"]["name"]
    notes = []
    if source.dataset is not None and source.dataset != dataset:
        notes.append(
            f"evaluated on the checkpoint's dataset {dataset} (data={source.dataset} ignored)"
        )
    return LoadedModel(
        model=model.eval(),
        dataset=dataset,
        source="advtrain",
        name=str(config["model"]["name"]),
        model_config=dict(config["model"]),
        ckpt_path=str(path.resolve()),
        ckpt_sha256=sha,
        use_ema=use_ema,
        notes=notes,
    )


def _robustbench_files(source: ModelSource, dataset: str, threat: str) -> list[Path]:
    """Where robustbench.utils.load_model reads the weights of `source` (checked before loading,
    since load_model would otherwise download them)."""
    name = str(source.robustbench_name)
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ConfigError(f"RobustBench has no {dataset} models; use data=cifar10 or data=cifar100")
    if threat not in ("Linf", "L2", "corruptions"):
        raise ConfigError(f"robustbench.threat_model={threat!r}: use Linf, L2 or corruptions")
    try:
        from robustbench.model_zoo import model_dicts
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"robustbench cannot be imported ({e}); install robustbench==1.1.1"
        ) from None
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if name not in zoo:
        raise ConfigError(
            f"{name!r} is not a RobustBench {dataset}/{threat} model id (see robustbench.model_zoo); "
            "for your own weights use ckpt=PATH (advtrain checkpoint) or model=NAME ckpt=PATH"
        )
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    if timm.is_model(timm_name):  # load_model would fetch these from the Hugging Face hub
        raise CheckpointError(
            f"{name} is served through timm ({timm_name}) and would be downloaded from the Hugging "
            "Face hub; advtrain evaluates only zoo models whose weights are already on disk"
        )
    folder = Path(source.robustbench_model_dir) / dataset / threat
    gid = zoo[name].get("gdrive_id")
    files = (
        [folder / f"{name}.pt_m{i}.pt" for i in range(len(gid))]
        if isinstance(gid, list)
        else [folder / f"{name}.pt"]
    )
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"RobustBench weights for {name} are not on disk: put them at {', '.join(missing)} "
            "(advtrain never downloads; fetch them with robustbench.utils.load_model on a machine "
            "with internet and copy the models folder)"
        )
    return files


def _robustbench_model(source: ModelSource, norm: str) -> LoadedModel:
    from robustbench.utils import load_model as rb_load_model

    from advtrain.utils.hashing import files_sha256

    name, dataset = str(source.robustbench_name), source.data_name
    threat = source.robustbench_threat_model or norm
    files = _robustbench_files(source, dataset, threat)
    try:
        model = rb_load_model(
            name,
            model_dir=str(source.robustbench_model_dir),
            dataset=dataset,
            threat_model=threat,
        )
    except Exception as e:  # robustbench raises bare RuntimeError/KeyError for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"robustbench could not load {files[0]}: {first[:200]}") from None
    return LoadedModel(
        model=model.eval(),
        dataset=dataset,
        source="robustbench",
        name=name,
        model_config=None,
        ckpt_path=str(files[0].resolve()),
        ckpt_sha256=files_sha256(files),
        use_ema=None,
    )
