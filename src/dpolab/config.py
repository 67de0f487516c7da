"""Run configuration: YAML plus `section.key=value` overrides, checked before any model loads.

Unknown keys, wrong types and conflicting options stop the run at start-up with one line that
names the key and says what to write instead. The `training` section is handed to
`transformers.TrainingArguments`, so every one of its fields is accepted there, and only those.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpolab.errors import DpolabError


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    # "all-linear" (peft: every linear layer but the output head) or a list of module names
    target_modules: list[str] | str = "all-linear"


@dataclass
class ModelSection:
    name_or_path: str = ""  # local path or hub id (required)
    ref_name_or_path: str | None = None  # default: the policy's starting weights
    tokenizer_name_or_path: str | None = None  # default: name_or_path
    dtype: str = "float32"  # float32 | bfloat16
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"  # sdpa | eager (the packed pair rows need a 4-D mask)
    lora: LoraSettings | None = None


@dataclass
class DataSection:
    # a .json/.jsonl/.parquet file or hub dataset id, or a list of {path, split, weight, builder}
    train: str | list[dict[str, Any]] | None = None
    split: str | None = None  # split of a hub dataset for `train` (default "train")
    eval: str | list[dict[str, Any]] | None = None
    eval_split: str | None = None  # split of a hub dataset for `eval` (default "test")
    # hold out this fraction (<1) or number of the distinct training pairs for eval, by source row:
    # a row a weighted mixture repeats is wholly in train or in eval (once) (dpolab.data.prepare.hold_out)
    eval_size: float | int | None = None
    mix_strategy: str = "sum"  # weighted mixtures: sum | interleave_under | interleave_over
    builder: str | None = None  # metamath | arc | hellaswag: build pairs from `source`
    source: str | None = None  # raw dataset for `builder`
    format: str = "auto"  # auto | standard | conversational | implicit
    max_length: int | None = 1024  # prompt + completion tokens
    max_prompt_length: int | None = 512  # the prompt keeps its last tokens
    on_bad_rows: str = "error"  # error | skip
    limit: int | None = None  # train on the first N usable pairs only (of the mixture, for several sources)


@dataclass
class LossSection:
    method: str = "dpo"  # dpo | ipo | dpop
    beta: float = 0.1
    dpop_lambda: float = 50.0
    intermediate_layers: list[int] = field(default_factory=list)
    gamma: float = 0.9
    final_norm: bool = True


@dataclass
class ReferenceSection:
    precompute: bool = False  # compute reference log-probs once, cache them, free the reference model
    cache_dir: str | None = None  # default: $DPOLAB_CACHE or ~/.cache/dpolab
    batch_size: int | None = None  # default: per_device_eval_batch_size


@dataclass
class EarlyStoppingSection:
    patience: int | None = None  # evaluations without a new peak before stopping
    # an eval metric the run logs (loss, rewards/margins, layers/8/rewards/accuracies, ...); the
    # losses and dpop/penalty are better lower, the others higher. `dpolab sft` logs no rewards: it
    # watches eval loss (lower is better) unless this names logps/per_token
    metric: str = "rewards/accuracies"
    threshold: float = 0.0


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    reference: ReferenceSection = field(default_factory=ReferenceSection)
    training: dict[str, Any] = field(default_factory=dict)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    # keys the user wrote (dotted), for conflict checks: a default is not a choice
    explicit: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("explicit")
        return out


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "explicit"}
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.attn_implementation": ("sdpa", "eager"),
    "data.format": ("auto", "standard", "conversational", "implicit"),
    "data.on_bad_rows": ("error", "skip"),
    "data.builder": (None, "metamath", "arc", "hellaswag"),
    "data.mix_strategy": ("sum", "interleave_under", "interleave_over"),
    "loss.method": ("dpo", "ipo", "dpop"),
}
# Defaults dpolab gives TrainingArguments unless the config says otherwise.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/dpolab",
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "logging_nan_inf_filter": False,  # a non-finite loss must be seen, not filtered out
}
# TrainingArguments fields dpolab sets itself.
TRAINING_RESERVED = {
    "remove_unused_columns": "dpolab keeps its own columns",
    "label_names": "dpolab computes its own loss",
}


def _suggest(name: str, options: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _coerce(key, value, option)  # its own message names the inner key
            try:
                return _coerce(key, value, option)
            except DpolabError:
                continue
        raise DpolabError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DpolabError(
                f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
            )
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise DpolabError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DpolabError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise DpolabError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DpolabError(f"{key}: expected an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise DpolabError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls, values: dict[str, Any], prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "explicit"]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise DpolabError(
                f"unknown key '{dotted}'{_suggest(key, names, f'{prefix}.' if prefix else '')} (known: {', '.join(names)})"
            )
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _explicit_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys.add(dotted)
        if isinstance(value, dict) and key != "training":
            keys |= _explicit_keys(value, dotted)
    return keys


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` is a string (a float needs a dot: `1.0e-3`); this loader
    also reads exponent-only numbers as floats, as YAML 1.2 and every other config reader do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise DpolabError(f"override '{text}' is not of the form section.key=value (e.g. loss.beta=0.3)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise DpolabError(f"override '{text}': name a section and a key, e.g. loss.beta=0.3")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise DpolabError(f"override '{text}': the value is not valid YAML ({err})") from None
    return path, value


def merge_overrides(values: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise DpolabError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DpolabError(f"{path}: no such config file")
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise DpolabError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise DpolabError(f"{path}: expected a mapping of sections (model, data, loss, ...)")
    return values


def load_config(
    path: str | Path | None, overrides: typing.Sequence[str] = (), *, sft: bool = False
) -> RunConfig:
    """Read, override, type-check and validate a run config. Raises `DpolabError` on any problem."""
    values = read_yaml(path) if path is not None else {}
    values = merge_overrides(values, overrides)
    return config_from_dict(values, sft=sft)


def config_from_dict(values: dict[str, Any], *, sft: bool = False) -> RunConfig:
    for section in values:
        if section not in SECTIONS:
            raise DpolabError(
                f"unknown section '{section}'{_suggest(section, SECTIONS)} (known: {', '.join(SECTIONS)})"
            )
    config = _build(RunConfig, values, "")
    config.explicit = _explicit_keys(values)
    validate(config, sft=sft)
    return config


def _training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


_SCALARS = {float: "a number", int: "an integer", bool: "true or false"}


def _check_training_type(key: str, value: Any) -> None:
    """TrainingArguments does not check its arguments' types: a string learning rate would reach
    the optimiser. Check the plain number and flag fields (alone or `| None`) here."""
    from transformers import TrainingArguments

    tp = typing.get_type_hints(TrainingArguments).get(key)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_args(tp) else [tp]
    if len(args) != 1 or args[0] not in _SCALARS or value is None:
        return
    kind = args[0]
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int | float)
        and not isinstance(value, bool)
        and (kind is float or isinstance(value, int))
    )
    if not ok:
        raise DpolabError(f"training.{key}: expected {_SCALARS[kind]}, got {value!r}")


def early_stopping_metric(config: RunConfig, *, sft: bool = False) -> str:
    """The eval metric early stopping watches: `early_stopping.metric`, except that `dpolab sft`,
    which logs no rewards, watches eval loss unless the config names a metric itself."""
    if sft and "early_stopping.metric" not in config.explicit:
        return "loss"
    return config.early_stopping.metric


def eval_metric_names(config: RunConfig, *, sft: bool = False) -> tuple[str, ...]:
    """The metrics a run logs at each evaluation (as `eval_<name>`)."""
    from dpolab.objective import SFT_METRICS, preference_metric_names

    if sft:
        return ("loss", *SFT_METRICS)
    return ("loss", *preference_metric_names(config.loss.method, config.loss.intermediate_layers))


def _check_early_stopping_metric(config: RunConfig, *, sft: bool) -> None:
    if config.early_stopping.patience is None and "early_stopping.metric" not in config.explicit:
        return
    metric = early_stopping_metric(config, sft=sft)
    names = eval_metric_names(config, sft=sft)
    if metric not in names:
        what = "dpolab sft (no rewards; by default it stops on eval loss)" if sft else "this run"
        hint = _suggest(metric, names)
        if not sft and metric.startswith("layers/"):
            hint = "; a layers/<k>/ metric needs k in loss.intermediate_layers"
        raise DpolabError(
            f"early_stopping.metric: {metric!r} is not logged at evaluation by {what}; use one of "
            f"{', '.join(names)}{hint}"
        )


def validate(config: RunConfig, *, sft: bool = False) -> None:
    """Conflicts and missing values that can be found without loading a model."""
    explicit = config.explicit
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in options:
            shown = ", ".join(str(o) for o in options if o is not None)
            raise DpolabError(f"{key}: {value!r} is not one of {shown}")
    if not config.model.name_or_path:
        raise DpolabError("model.name_or_path is required: a local model folder or a hub id")
    data = config.data
    if data.builder and data.train:
        raise DpolabError(
            "data.train and data.builder are both set: use data.train for a pairs file, or "
            "data.builder with data.source to build pairs from a raw dataset"
        )
    if data.builder and not data.source:
        raise DpolabError(
            f"data.builder: {data.builder} needs data.source (the raw {data.builder} file or hub id)"
        )
    if data.source and not data.builder:
        raise DpolabError("data.source is only read with data.builder (metamath, arc or hellaswag)")
    if not data.train and not data.builder:
        raise DpolabError("data.train is required: a .jsonl/.json/.parquet file or a hub dataset id")
    if data.max_length is not None and data.max_length < 2:
        raise DpolabError(f"data.max_length: {data.max_length} is too small")
    if (
        data.max_length is not None
        and data.max_prompt_length is not None
        and data.max_prompt_length >= data.max_length
    ):
        raise DpolabError(
            f"data.max_prompt_length ({data.max_prompt_length}) must be below data.max_length ({data.max_length}), "
            f"or no completion token survives; lower it or raise max_length"
        )
    if data.eval and data.eval_size is not None:
        raise DpolabError(
            "data.eval and data.eval_size are both set: give an eval file, or hold out eval_size "
            "of the training pairs, not both"
        )
    if data.eval_size is not None and not data.eval_size > 0:
        raise DpolabError(
            f"data.eval_size: {data.eval_size} must be a fraction in (0, 1) or a number of pairs"
        )

    training = config.training
    fields = _training_fields()
    for key in training:
        if key in TRAINING_RESERVED:
            raise DpolabError(f"training.{key} is set by dpolab ({TRAINING_RESERVED[key]}); remove it")
        if key not in fields:
            raise DpolabError(
                f"unknown key 'training.{key}'{_suggest(key, fields, 'training.')} "
                f"(the training section takes transformers.TrainingArguments fields)"
            )
        _check_training_type(key, training[key])

    if config.model.dtype == "bfloat16" and training.get("fp16"):
        raise DpolabError("model.dtype bfloat16 with training.fp16 true: use training.bf16 (or neither)")

    es = config.early_stopping
    has_eval = bool(data.eval) or data.eval_size is not None
    if es.patience is not None:
        if es.patience < 1:
            raise DpolabError(
                f"early_stopping.patience: {es.patience} must be at least 1 (or null to disable)"
            )
        if not has_eval:
            raise DpolabError(
                "early_stopping.patience needs evaluation data: set data.eval or data.eval_size"
            )
        if training.get("eval_strategy", "steps") == "no":
            raise DpolabError(
                "early_stopping.patience with training.eval_strategy 'no': early stopping needs "
                "evaluations; set training.eval_strategy to steps or epoch"
            )
        for key in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better"):
            if key in training:
                raise DpolabError(
                    f"training.{key} is set by early_stopping; remove it (the best checkpoint by "
                    f"eval {early_stopping_metric(config, sft=sft)} is kept)"
                )

    if sft:
        _check_early_stopping_metric(config, sft=True)
        return  # the loss and reference sections play no part in SFT
    loss = config.loss
    if loss.beta <= 0:
        raise DpolabError(f"loss.beta: {loss.beta} must be positive (the papers use 0.1 to 0.5)")
    if "loss.dpop_lambda" in explicit and loss.method != "dpop":
        raise DpolabError(
            f"loss.dpop_lambda is only used by loss.method dpop (this config says {loss.method}); "
            f"remove it, or set loss.method=dpop"
        )
    if loss.dpop_lambda < 0:
        raise DpolabError(f"loss.dpop_lambda: {loss.dpop_lambda} must be ≥ 0")
    if not loss.intermediate_layers:
        for key in ("loss.gamma", "loss.final_norm"):
            if key in explicit:
                raise DpolabError(
                    f"{key} only matters with loss.intermediate_layers; remove it, or list the "
                    f"layers, e.g. loss.intermediate_layers=[8,16]"
                )
    if not 0.0 <= loss.gamma <= 1.0:
        raise DpolabError(f"loss.gamma: {loss.gamma} must be in [0, 1] (the paper uses 0.9)")
    if len(set(loss.intermediate_layers)) != len(loss.intermediate_layers):
        raise DpolabError(f"loss.intermediate_layers: {loss.intermediate_layers} lists a layer twice")
    _check_early_stopping_metric(config, sft=False)


def check_layers_against_model(config: RunConfig, num_layers: int) -> None:
    """Intermediate layers must lie in 1..L−1 (L, the final layer, is always trained)."""
    for k in config.loss.intermediate_layers:
        if not 1 <= k <= num_layers - 1:
            raise DpolabError(
                f"loss.intermediate_layers: layer {k} is outside 1..{num_layers - 1} for "
                f"{config.model.name_or_path} ({num_layers} layers; the final layer {num_layers} is always trained)"
            )


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
