"""One typed schema per config group: which keys a group may hold, their types, and the check of each value.

Why dataclasses read by OmegaConf instead of key lists: a key list says nothing about types and drifts from the
YAML files; a dataclass is one declaration per key (name, type, check) from which OmegaConf gives the type
conversion and errors for free, and which Hydra's ConfigStore holds (:func:`register_schemas`).

Groups whose options take different keys are schemas per option, derived from the code the option names, so
an option's valid keys have one home:

* ``model``: the keyword arguments of the architecture class (``advtrain.models.registry.model_kwargs``), plus
  ``name`` and ``normalize``;
* ``loss``: the constructor of ``advtrain.losses.LOSSES[name]`` (the class count comes from the dataset);
* ``logger``: one dataclass per logger; ``eval`` presets: one dataclass per ``kind``.

Every check raises :class:`~advtrain.errors.ConfigError` with one line that names the key and the fix, and
returns the value normalised (``"8/255"`` -> 0.0313..., YAML integers as Python ints, ...). Each rule lives
in :mod:`advtrain.values`; this module only says which rule applies to which key.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advtrain import values as V
from advtrain.errors import ConfigError

__all__ = [
    "AttackConfig",
    "AutoAttackPreset",
    "BenchConfig",
    "CleanPreset",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "ExportConfig",
    "JsonlLogger",
    "ModelInfoConfig",
    "OptimConfig",
    "PGDPreset",
    "RobustBenchConfig",
    "TrainConfig",
    "TrainerConfig",
    "WandbLogger",
    "check_group",
    "check_node",
    "option_schema",
    "register_schemas",
    "unknown_keys_message",
]

Check = Callable[[str, Any], Any]


# --------------------------------------------------------------------------------------------------------------
# field helpers: `key: type = spec(check)` keeps the type, the default and the check of a key on one line
# --------------------------------------------------------------------------------------------------------------


def spec(check: Check | None = None, default: Any = MISSING, **more: Any) -> Any:
    """A dataclass field whose value goes through ``check(full_key, value)`` after the type conversion.

    ``None`` values skip the check (a field typed ``X | None`` allows null; OmegaConf refuses null for the
    others). Mutable defaults are copied per instance.
    """
    meta = {"check": check, **more}
    if isinstance(default, list | dict):
        return field(default_factory=functools.partial(_copy, default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return type(value)(value)


def group(cls: type, *, default: str = "required") -> Any:
    """A nested config group: ``required``, ``none`` (None when absent) or ``schema`` (the schema's defaults)."""
    if default == "schema":
        return field(default_factory=cls, metadata={"group": cls})
    return field(default=None if default == "none" else MISSING, metadata={"group": cls})


def options(name: str, default: Any = MISSING) -> Any:
    """A group whose keys depend on the option chosen (`model`, `loss`, `logger`, `eval`): see check_group."""
    if isinstance(default, dict):
        return field(default_factory=functools.partial(_copy, default), metadata={"options": name})
    return field(default=default, metadata={"options": name})


def at_least(minimum: int) -> Check:
    return lambda key, v: V.int_at_least(key, v, minimum)


def at_least_or_null(minimum: int) -> Check:
    return lambda key, v: V.int_at_least(key, v, minimum, allow_none=True)


def _at_least_hint(key: str, value: Any, minimum: int, hint: str) -> int:
    try:
        result = V.int_at_least(key, value, minimum)
    except ConfigError as e:
        raise ConfigError(f"{e}{hint}") from None
    assert result is not None
    return result


def positive_number(key: str, value: Any) -> float:
    return V.positive(key, value)


def non_negative(key: str, value: Any) -> float:
    return V.non_negative(key, value)


def share(key: str, value: Any) -> float:
    return V.probability(key, value)


def one_of(*allowed: str, hint: str = "") -> Check:
    return lambda key, v: V.choice(key, v, allowed, hint=hint)


# --------------------------------------------------------------------------------------------------------------
# training: configs/train.yaml and its groups
# --------------------------------------------------------------------------------------------------------------


def _pad_mode(key: str, value: Any) -> Any:
    from advtrain.data.transforms import PAD_MODES  # the crop's own list of modes

    return V.choice(
        key,
        value,
        PAD_MODES,
        hint=" (zeros: torchvision's RandomCrop padding, reflect: Rice et al.'s train_cifar.py)",
    )


@dataclass
class DataConfig:
    """The ``data`` group (configs/data/*.yaml): which images, how many, and how each batch is made."""

    name: str = MISSING
    root: str | None = MISSING
    download: bool = MISSING
    val_size: int = spec(at_least(0))
    train_subset: int | None = spec(at_least(1))
    batch_size: int = spec(at_least(1))
    eval_batch_size: int = spec(at_least(1))
    augment: bool = MISSING
    pad_mode: str = spec(_pad_mode)
    aux_path: str | None = spec(
        unset="this experiment needs auxiliary data: add data.aux_path=/path/to/generated.npz "
        "(keys image uint8 NHWC, label)"
    )
    aux_fraction: float = spec(
        lambda key, v: V.probability(
            key,
            v,
            below_one=True,
            hint="the share of each batch drawn from data.aux_path (0.7 in the synthetic-data recipes)",
        )
    )
    two_view: bool = MISSING
    cutout: int = spec(at_least(0))
    augment_on: str = spec(one_of("auto", "cpu", "device"))  # where batches are augmented (#15)

    @staticmethod
    def check_together(out: dict[str, Any], path: str) -> None:
        if out["aux_fraction"] > 0 and not out["aux_path"]:
            raise ConfigError(
                f"{path}aux_fraction={out['aux_fraction']} needs auxiliary images: set "
                f"{path}aux_path=/path/to/aux.npz (keys image, label) or {path}aux_fraction=0"
            )


@dataclass
class OptimConfig:
    """The ``optim`` group: optimiser and learning-rate schedule (the schedule checks its own milestones)."""

    name: str = MISSING
    lr: float = spec(positive_number)
    momentum: float = spec(
        lambda key, v: V.probability(
            key, v, below_one=True, hint="SGD momentum, 0.9 in every recipe"
        )
    )
    nesterov: bool = MISSING
    weight_decay: float = spec(non_negative)
    schedule: str = MISSING
    milestones: list[Any] = spec(lambda key, v: _numbers(key, v))
    decay: float = spec(positive_number)
    warmup_epochs: float = spec(non_negative)
    per_iteration: bool = MISSING


def _numbers(key: str, value: list[Any]) -> list[Any]:
    """Each element a number; kept as written (an epoch 75 stays an int, a fraction 0.75 a float)."""
    for i, item in enumerate(value):
        V.number(f"{key}[{i}]", item)
    return value


def _grad_clip(key: str, value: Any) -> float:
    if value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0 or null (no clipping)")
    return value


@dataclass
class TrainerConfig:
    """The ``trainer`` group (configs/trainer/default.yaml: the meaning of each key is documented there)."""

    epochs: int = spec(at_least(1))
    grad_clip: float | None = spec(_grad_clip)
    ema_decay: float | None = spec(share)
    ema_start_epoch: int = spec(at_least(0))
    weight_average_tau: float | None = spec(share)
    awp_gamma: float | None = spec(non_negative)
    awp_warmup_epochs: int = spec(at_least(0))
    eval_every: int = spec(at_least(1))
    val_examples: int = spec(
        lambda key, v: _at_least_hint(
            key, v, 1, " (to train without validation, hold out no images: data.val_size=0)"
        )
    )
    val_pgd_steps: int = spec(at_least(1))
    test_examples: int = spec(at_least(0))
    test_pgd_steps: int = spec(at_least(1))
    checkpoint_every_steps: int | None = spec(at_least_or_null(1))
    keep_last: int = spec(at_least(1))
    nonfinite: str = spec(one_of("stop", "skip"))
    max_skipped_batches: int = spec(at_least(0))
    deterministic: bool = MISSING
    # auto | true | false (channels_last, compile), auto | bf16 | false (autocast), false | bf16
    # (autocast_attack): checked where the fast paths are resolved (engine/fastpath.py)
    channels_last: Any = MISSING
    autocast: Any = MISSING
    autocast_attack: Any = MISSING
    compile: Any = MISSING
    sync_bn: bool = MISSING
    progress: bool = MISSING
    log_every_steps: int = spec(at_least(0))


def _budget(key: str, value: Any) -> float:
    return V.number(key, value, fractions=True)


@dataclass
class AttackConfig:
    """The ``attack`` group: the training attack and its per-epoch budget schedule.

    ``eps`` and ``step_size`` may be written ``${frac:8/255}`` or plainly ``8/255``; the eps must fit its
    norm (:func:`advtrain.values.check_eps` with the typical ranges). The step-size rule and the start
    modes are checked by the attack itself (advtrain/attacks/pgd.py), which library callers reach without a
    config.
    """

    norm: str = MISSING
    eps: Any = spec(_budget)
    step_size: Any = spec(_budget)
    steps: int = spec(V.count)
    random_start: Any = MISSING  # uniform | normal | false (checked by attacks.pgd.start_mode)
    restarts: int = spec(V.count)
    objective: str | None = MISSING
    eval_mode: bool = MISSING
    schedule: str = spec(one_of("constant", "linear_ramp", "phased"))
    step_ratio: float = spec(positive_number)

    @staticmethod
    def check_together(out: dict[str, Any], path: str) -> None:
        norm = V.choice(
            f"{path}norm", V.NORMS.get(str(out["norm"]).strip().lower()), ("Linf", "L2")
        )
        other = {"Linf": "attack=pgd_l2", "L2": "attack=pgd_linf"}.get(norm)
        V.check_eps(norm, out["eps"], name=f"{path}eps", typical=True, other_norm=other)


@dataclass
class DistributedConfig:
    """Multi-process training (torchrun / Slurm); the backend is checked where the process group starts."""

    backend: str = "auto"
    timeout_minutes: float = spec(positive_number, default=30.0)


def _resume(key: str, value: str) -> str:
    if not value.strip():
        raise ConfigError(f"{key}={value!r}: use null, auto, or the path of a checkpoint")
    return value


@dataclass
class JsonlLogger:
    """``logger=jsonl``: metrics.jsonl in the run directory only."""

    name: str = "jsonl"


@dataclass
class WandbLogger:
    """``logger=wandb``: metrics.jsonl plus a wandb run (``mode=offline`` works without network)."""

    name: str = "wandb"
    project: str = MISSING
    entity: str | None = None
    group: str | None = None
    mode: str = MISSING


LOGGERS: dict[str, type] = {"jsonl": JsonlLogger, "wandb": WandbLogger}


@dataclass
class TrainConfig:
    """``python -m advtrain train``: configs/train.yaml with its groups, fully resolved."""

    data: DataConfig = group(DataConfig)
    model: dict[str, Any] = options("model")
    attack: AttackConfig = group(AttackConfig)
    loss: dict[str, Any] = options("loss")
    optim: OptimConfig = group(OptimConfig)
    trainer: TrainerConfig = group(TrainerConfig)
    logger: dict[str, Any] = options("logger", default={"name": "jsonl"})
    name: str = MISSING
    seed: int = MISSING
    device: str = "auto"
    resume: str | None = spec(_resume, default=None)
    run_dir: str = MISSING
    distributed: DistributedConfig = group(DistributedConfig, default="schema")


# --------------------------------------------------------------------------------------------------------------
# evaluation, export, benchmarks
# --------------------------------------------------------------------------------------------------------------


def _eval_norm(key: str, value: Any) -> str:
    canonical = V.NORMS.get(str(value).strip().lower())
    if canonical is None:
        raise ConfigError(f"{key}={value!r}: use Linf, L2 or L1")
    return canonical


def _check_preset(out: dict[str, Any], path: str) -> None:
    other = {"Linf": f"{path}norm=L2", "L2": f"{path}norm=Linf"}.get(out["norm"])
    V.check_eps(out["norm"], out["eps"], name=f"{path}eps", typical=True, other_norm=other)


@dataclass
class CleanPreset:
    """``eval.kind=clean``: clean accuracy only (norm and eps are recorded). The other kinds extend it."""

    name: str = MISSING
    kind: str = MISSING
    norm: str = spec(_eval_norm)
    eps: Any = spec(_budget)

    check_together = staticmethod(_check_preset)


@dataclass
class PGDPreset(CleanPreset):
    """``eval.kind=pgd``: PGD / CW robust accuracy (``step_size`` null = eps / 4)."""

    steps: int = spec(V.count)
    step_size: Any = spec(_budget, default=None)
    restarts: int = spec(V.count)
    objective: str = MISSING

    @staticmethod
    def check_together(out: dict[str, Any], path: str) -> None:
        if out["norm"] == "L1":
            raise ConfigError(
                "PGD supports Linf and L2; use eval=aa_custom with eval.norm=L1 for L1"
            )
        _check_preset(out, path)


@dataclass
class AutoAttackPreset(CleanPreset):
    """``eval.kind=autoattack``: AutoAttack (standard, plus, rand or a custom list) and optional PGD."""

    version: str = MISSING
    attacks: list[str] | None = None
    n_restarts: int | None = spec(at_least_or_null(1), default=None)
    pgd_steps: int = spec(at_least(0))


PRESETS: dict[str, type] = {"clean": CleanPreset, "pgd": PGDPreset, "autoattack": AutoAttackPreset}


@dataclass
class RobustBenchConfig:
    """``robustbench.*`` of the eval command: a RobustBench zoo model whose weights are already on disk."""

    name: str | None = None
    model_dir: str = MISSING
    threat_model: str | None = None


@dataclass
class EvalConfig:
    """``python -m advtrain eval``: configs/eval.yaml, fully resolved."""

    data: DataConfig = group(DataConfig)
    model: dict[str, Any] | None = options("model", default=None)
    eval: dict[str, Any] = options("eval")
    ckpt: str | None = None
    use_ema: bool | None = None
    robustbench: RobustBenchConfig = group(RobustBenchConfig)
    n_examples: int | None = spec(at_least_or_null(1), default=None)
    seed: int = MISSING
    batch_size: int = spec(at_least(1))
    shard_size: int | None = spec(at_least_or_null(1), default=None)
    device: str = "auto"
    state_dir: str | None = None
    save_x_adv: bool = False
    progress: bool = True
    run_dir: str | None = None


@dataclass
class ModelInfoConfig:
    """``model_info.*`` of the export command: the RobustBench leaderboard metadata (checked by export)."""

    link: str | None = None
    name: str | None = None
    authors: str | None = None
    additional_data: bool = MISSING
    number_forward_passes: int = spec(at_least(1))
    venue: str | None = None
    architecture: str | None = None
    reported: str = MISSING
    footnote: str | None = None
    unreliable: bool | None = None


@dataclass
class ExportConfig:
    """``python -m advtrain export``: configs/export.yaml, fully resolved."""

    data: DataConfig = group(DataConfig)
    model: dict[str, Any] | None = options("model", default=None)
    ckpt: str | None = None
    use_ema: bool | None = None
    results: str | None = None
    model_id: str | None = None
    out_dir: str | None = None
    allow_partial: bool = MISSING
    checkpoint_url: str | None = None
    verify_n_examples: int = spec(at_least(1))
    check: bool = MISSING
    check_n_examples: int = spec(at_least(1))
    check_tolerance_pp: float = spec(non_negative)
    batch_size: int = spec(at_least(1))
    seed: int = MISSING
    device: str = "auto"
    model_info: ModelInfoConfig = group(ModelInfoConfig)
    run_dir: str | None = None


@dataclass
class BenchConfig:
    """``python -m advtrain bench``: configs/bench.yaml. Each benchmark checks its own settings under
    ``bench.<name>`` against its DEFAULTS; the defaults here let a library caller pass only ``bench``."""

    bench: dict[str, Any] = MISSING
    out_dir: str = "results/bench"
    device: str = "cpu"
    threads: int | None = None  # null or 0: all cores (run_bench checks the value)
    seed: int = 0
    data_root: str | None = None
    dry_run: bool = False
    only: list[str] | None = None
    run_dir: str | None = None


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore (group ``schema``), so a Hydra app or a user's own primary
    config can extend them (``defaults: [/schema/train]``). Idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in (
        ("train", TrainConfig),
        ("eval", EvalConfig),
        ("export", ExportConfig),
        ("bench", BenchConfig),
        ("data", DataConfig),
        ("attack", AttackConfig),
        ("optim", OptimConfig),
        ("trainer", TrainerConfig),
        ("distributed", DistributedConfig),
    ):
        store.store(group="schema", name=name, node=node)


# --------------------------------------------------------------------------------------------------------------
# checking a mapping against a schema
# --------------------------------------------------------------------------------------------------------------


def unknown_keys_message(label: str, unknown: list[str], valid: list[str]) -> str:
    """The one wording of an unknown-key error (tests and the README match it)."""
    return f"unknown key(s) {sorted(unknown)} in the '{label}' config; valid keys: {sorted(valid)}"


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    origin = typing.get_origin(base) or base
    word = _TYPE_WORDS.get(origin) or {list: "a list", dict: "a mapping"}.get(origin, "valid")
    return word + (" or null" if optional else "")


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return f.default


def _missing_message(key: str, f: dataclasses.Field[Any]) -> str:
    if "group" in f.metadata or "options" in f.metadata:
        name = key.rsplit(".", 1)[-1]
        return f"the '{key}' config group is missing; add {name}=NAME (see configs/{name}/)"
    return f"{key} is missing; add {key}=VALUE"


def check_node(
    schema: type, given: Any, *, path: str = "", label: str = "top level", partial: bool = False
) -> dict[str, Any]:
    """``given`` checked against the dataclass ``schema``; returns the normalised plain dict.

    Unknown keys (all of them, in one message), missing keys (unless ``partial``: then absent keys stay absent
    and keep their defaults in the code that reads them), a ``???`` left unset, the type of each value (by
    OmegaConf), each value's own check, and the schema's ``check_together`` for rules between its keys.
    """
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"the '{label}' config must be a mapping of keys to values, got {given!r}"
        )
    fields_ = {f.name: f for f in dataclasses.fields(schema)}
    unknown = [str(k) for k in given if k not in fields_]
    if unknown:
        raise ConfigError(unknown_keys_message(label, unknown, list(fields_)))
    hints = _hints(schema)
    node = OmegaConf.structured(schema)
    out: dict[str, Any] = {}
    for name, f in fields_.items():
        key = f"{path}{name}"
        if name not in given:
            if partial:
                continue
            if _required(f):
                raise ConfigError(_missing_message(key, f))
            value = _default(f)
        else:
            value = given[name]
        if isinstance(value, str) and value == "???":
            raise ConfigError(f.metadata.get("unset") or f"{key} is not set (???); add {key}=VALUE")
        if "group" in f.metadata:
            out[name] = (
                None
                if value is None and not _required(f)
                else check_node(f.metadata["group"], value, path=f"{key}.", label=key)
            )
            continue
        if "options" in f.metadata:
            out[name] = (
                None if value is None else check_group(f.metadata["options"], value, prefix=key)
            )
            continue
        try:
            node[name] = value
            converted = node[name]
        except OmegaConfBaseException:
            raise ConfigError(f"{key}={value!r} must be {_describe(hints[name])}") from None
        if OmegaConf.is_config(converted):
            converted = OmegaConf.to_container(converted)
        check = f.metadata.get("check")
        out[name] = converted if check is None or converted is None else check(key, converted)
    together = getattr(schema, "check_together", None)
    if together is not None and not partial:
        together(out, path)
    return out


# --------------------------------------------------------------------------------------------------------------
# groups whose keys depend on the option chosen
# --------------------------------------------------------------------------------------------------------------

#: Model keys the dataset decides (advtrain/models/loading.py compares them); accepted, never listed as options.
DATASET_KEYS = ("num_classes", "in_channels")


def _annotation(tp: Any) -> Any:
    """A constructor annotation OmegaConf can check (int, float, bool, str, optional thereof), else Any."""
    simple = (int, float, bool, str)
    if tp in simple:
        return tp
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in simple:
            return rest[0] | None
    return Any


def _schema_from_signature(
    name: str, fn: Callable[..., Any], keys: tuple[str, ...], head: list[tuple[str, Any]]
) -> type:
    """A dataclass whose fields are ``head`` plus the parameters ``keys`` of ``fn``, typed as ``fn`` says."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that cannot be evaluated: check names only
        hints = {}
    params = inspect.signature(fn).parameters
    rows: list[tuple[str, Any, Any]] = [(k, tp, field(default=MISSING)) for k, tp in head]
    rows += [
        (k, _annotation(hints.get(k, Any)), field(default=MISSING)) for k in keys if k in params
    ]
    return dataclasses.make_dataclass(name, rows)


@functools.cache
def option_schema(group_name: str, option: str) -> type:
    """The schema of one option of a per-option group (cached: it is derived once per process)."""
    if group_name == "model":
        from advtrain.models.registry import model_class, model_kwargs

        keys = model_kwargs(option)  # an unknown model name fails here, naming the valid ones
        cls = model_class(option)
        head = [("name", str), ("normalize", bool)]
        return _schema_from_signature(f"{cls.__name__}Options", cls.__init__, keys, head)
    if group_name == "loss":
        from advtrain.losses import LOSSES

        if option not in LOSSES:
            raise ConfigError(f"loss={option!r} is unknown; choose one of {sorted(LOSSES)}")
        cls = LOSSES[option]
        params = inspect.signature(cls.__init__).parameters
        keys = tuple(k for k in params if k not in ("self", "num_classes"))
        return _schema_from_signature(f"{cls.__name__}Options", cls.__init__, keys, [("name", str)])
    if group_name == "logger":
        if option not in LOGGERS:
            raise ConfigError(f"logger={option!r}: use {' or '.join(LOGGERS)}")
        return LOGGERS[option]
    if group_name == "eval":
        if option not in PRESETS:
            raise ConfigError(
                f"eval.kind={option!r}: use clean, pgd or autoattack (presets in configs/eval/)"
            )
        return PRESETS[option]
    raise KeyError(group_name)


_SELECTOR = {"model": "name", "loss": "name", "logger": "name", "eval": "kind"}
_FIXED_GROUPS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "attack": AttackConfig,
    "distributed": DistributedConfig,
    "robustbench": RobustBenchConfig,
    "model_info": ModelInfoConfig,
}


def check_group(
    group_name: str, given: Any, *, prefix: str | None = None, partial: bool = False
) -> dict[str, Any]:
    """One config group checked against its schema; returns the normalised dict.

    The builders call this for the group they read, so a library caller who skips
    :func:`advtrain.config.validate_config` gets the same errors. Per-option groups keep only the keys that
    were given (the constructor's own defaults apply to the rest, and a stored config stays as written);
    ``partial`` does the same for any group (a library caller passing a subset, e.g. export's metadata).
    """
    prefix = prefix or group_name
    if group_name in _FIXED_GROUPS:
        schema = _FIXED_GROUPS[group_name]
        return check_node(schema, given, path=f"{prefix}.", label=prefix, partial=partial)
    selector = _SELECTOR[group_name]
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"the '{prefix}' config must be a mapping of keys to values, got {given!r}"
        )
    if selector not in given or given[selector] is None:
        if group_name == "eval":
            raise ConfigError(
                f"{prefix}.kind is missing: use clean, pgd or autoattack (presets in configs/eval/)"
            )
        raise ConfigError(
            f"{prefix}.{selector} is missing; choose one with {group_name}=NAME (see configs/{group_name}/)"
        )
    schema = option_schema(group_name, str(given[selector]))
    if (
        group_name == "model"
    ):  # the dataset's keys: compared with the dataset, not options of the model
        fixed = {k: given[k] for k in DATASET_KEYS if k in given}
        rest = {k: v for k, v in given.items() if k not in DATASET_KEYS}
        for key, value in fixed.items():
            V.int_at_least(f"{prefix}.{key}", value, 1)
        return {**check_node(schema, rest, path=f"{prefix}.", label=prefix, partial=True), **fixed}
    partial = partial or group_name in ("model", "loss")
    return check_node(schema, given, path=f"{prefix}.", label=prefix, partial=partial)
