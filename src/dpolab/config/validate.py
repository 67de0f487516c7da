"""The rules every run config follows, whatever its stage: choices, the model and data keys, the
`training` section (TrainingArguments fields, and only those, with their types), early stopping.

A stage adds its own rules (`dpolab.training.stages`): preference training its loss section,
each stage the metric early stopping may watch.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from dpolab.config.parse import suggest
from dpolab.config.schema import CHOICES, TRAINING_RESERVED, RunConfig
from dpolab.data.formats import check_columns
from dpolab.errors import DpolabError


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


def _check_choices(config: RunConfig) -> None:
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in options:
            shown = ", ".join(str(o) for o in options if o is not None)
            raise DpolabError(f"{key}: {value!r} is not one of {shown}")


def _check_data(config: RunConfig) -> None:
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
    if data.pack_tokens is not None and data.pack_tokens < 2:
        raise DpolabError(
            f"data.pack_tokens: {data.pack_tokens} is too small (the tokens of a row: a prompt and a "
            f"completion take two at least); null turns packing off"
        )
    if data.columns is not None:
        check_columns(data.columns)
    if data.eval and data.eval_size is not None:
        raise DpolabError(
            "data.eval and data.eval_size are both set: give an eval file, or hold out eval_size "
            "of the training pairs, not both"
        )
    if data.eval_size is not None and not data.eval_size > 0:
        raise DpolabError(
            f"data.eval_size: {data.eval_size} must be a fraction in (0, 1) or a number of pairs"
        )
    if data.num_proc is not None and data.num_proc < 1:
        raise DpolabError(f"data.num_proc: {data.num_proc} must be at least 1 (or null: the CPUs available)")


def _check_training(config: RunConfig) -> None:
    training = config.training
    fields = _training_fields()
    for key in training:
        if key in TRAINING_RESERVED:
            raise DpolabError(f"training.{key} is set by dpolab ({TRAINING_RESERVED[key]}); remove it")
        if key not in fields:
            raise DpolabError(
                f"unknown key 'training.{key}'{suggest(key, fields, 'training.')} "
                f"(the training section takes transformers.TrainingArguments fields)"
            )
        _check_training_type(key, training[key])
    if config.model.dtype == "bfloat16" and training.get("fp16"):
        raise DpolabError("model.dtype bfloat16 with training.fp16 true: use training.bf16 (or neither)")


def has_eval_data(config: RunConfig) -> bool:
    return bool(config.data.eval) or config.data.eval_size is not None


def _check_early_stopping(config: RunConfig, metric: str) -> None:
    es, training = config.early_stopping, config.training
    if es.patience is None:
        return
    if es.patience < 1:
        raise DpolabError(f"early_stopping.patience: {es.patience} must be at least 1 (or null to disable)")
    if not has_eval_data(config):
        raise DpolabError("early_stopping.patience needs evaluation data: set data.eval or data.eval_size")
    if training.get("eval_strategy", "steps") == "no":
        raise DpolabError(
            "early_stopping.patience with training.eval_strategy 'no': early stopping needs "
            "evaluations; set training.eval_strategy to steps or epoch"
        )
    for key in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better"):
        if key in training:
            raise DpolabError(
                f"training.{key} is set by early_stopping; remove it (the best checkpoint by "
                f"eval {metric} is kept)"
            )


def check_early_stopping_metric(
    config: RunConfig, metric: str, names: typing.Sequence[str], what: str, hint: str = ""
) -> None:
    """`metric` (the one early stopping watches) must be among the eval metrics `names` the run logs."""
    if config.early_stopping.patience is None and "early_stopping.metric" not in config.explicit:
        return
    if metric not in names:
        raise DpolabError(
            f"early_stopping.metric: {metric!r} is not logged at evaluation by {what}; use one of "
            f"{', '.join(names)}{hint or suggest(metric, names)}"
        )


def validate(config: RunConfig, *, early_stopping_metric: str) -> None:
    """The rules of every stage; `early_stopping_metric` is the metric the stage watches."""
    _check_choices(config)
    if not config.model.name_or_path:
        raise DpolabError("model.name_or_path is required: a local model folder or a hub id")
    coef = config.model.router_aux_loss_coef
    if coef is not None and (isinstance(coef, bool) or not isinstance(coef, int | float) or coef < 0):
        raise DpolabError(f"model.router_aux_loss_coef: {coef!r} must be a number ≥ 0 (0 turns it off)")
    _check_data(config)
    _check_training(config)
    _check_early_stopping(config, early_stopping_metric)
