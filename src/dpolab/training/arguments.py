"""`transformers.TrainingArguments` from the config's `training` section, dpolab's defaults, the
stage's defaults and early stopping."""

from __future__ import annotations

import os

from dpolab.config.schema import TRAINING_DEFAULTS, RunConfig
from dpolab.errors import DpolabError
from dpolab.objectives.metrics import lower_is_better


def training_arguments(config: RunConfig, stage, *, has_eval: bool):
    """`TrainingArguments` from the `training` section over dpolab's and the stage's defaults; with
    early stopping, the best checkpoint by the stage's early-stopping metric, in the direction that
    metric improves."""
    import torch
    from transformers import TrainingArguments

    values = {**TRAINING_DEFAULTS, **stage.training_defaults, **config.training}
    values.pop("resume_from_checkpoint", None)
    values.update(_deepspeed_mixed_precision(config.training))
    values["remove_unused_columns"] = False
    if config.data.pack_tokens is not None:  # packed rows waste least on pairs of similar length
        values.setdefault("train_sampling_strategy", "group_by_length")
    # every trainable parameter takes part in every step: spare DDP its search for unused ones
    values.setdefault("ddp_find_unused_parameters", False)
    # pinned host memory only helps copies to an accelerator; on a CPU torch warns at every loader
    values.setdefault("dataloader_pin_memory", torch.accelerator.is_available())
    if has_eval and "eval_strategy" not in config.training:
        values["eval_strategy"] = "steps"
        values.setdefault("eval_steps", values.get("logging_steps"))
    es = config.early_stopping
    if es.patience is not None:
        metric = stage.early_stopping_metric(config)
        values.update(
            load_best_model_at_end=True,
            metric_for_best_model=f"eval_{metric}",
            greater_is_better=not lower_is_better(metric),
        )
        if "save_strategy" not in config.training:
            values["save_strategy"] = values.get("eval_strategy", "steps")
        if "save_steps" not in config.training and values.get("eval_steps"):
            values["save_steps"] = values["eval_steps"]
    try:
        return TrainingArguments(**values)
    except (ValueError, TypeError) as err:
        raise DpolabError(f"training: {str(err).strip().splitlines()[0]}") from None


def _origin(config: RunConfig, stage, key: str) -> str:
    """Where a TrainingArguments value came from, in the words of the log."""
    if key in config.training:
        return f"training.{key}"
    if key in stage.training_defaults:
        return f"the default of dpolab {stage.name}; set training.{key}"
    if key in TRAINING_DEFAULTS:
        return f"dpolab's default; set training.{key}"
    return f"transformers' default; set training.{key}"


def _every(value: float) -> str:
    if value == 1:
        return "every step"
    return f"every {value:g} steps" if value >= 1 else f"every {value:.0%} of the training steps"


def settings_lines(args, config: RunConfig, stage, *, has_eval: bool) -> list[str]:
    """What the run's log says at start of the values that are easy to miss: the learning rate,
    when it evaluates and when it saves checkpoints, each with where it came from."""
    lines = [f"learning rate {args.learning_rate:g} ({_origin(config, stage, 'learning_rate')})"]
    if config.data.pack_tokens is not None:
        strategy = str(getattr(args.train_sampling_strategy, "value", args.train_sampling_strategy))
        origin = (
            "training.train_sampling_strategy"
            if "train_sampling_strategy" in config.training
            else "with data.pack_tokens; set training.train_sampling_strategy"
        )
        lines.append(
            f"rows: up to {config.data.pack_tokens} tokens a row; batches drawn {strategy} ({origin})"
        )
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "no":
        why = "training.eval_strategy no" if has_eval else "no eval data: set data.eval or data.eval_size"
        lines.append(f"evaluation: none ({why})")
    elif strategy == "epoch":
        lines.append("evaluation: at the end of each epoch (training.eval_strategy epoch)")
    else:
        origin = (
            "training.eval_steps"
            if "eval_steps" in config.training
            else "by default every training.logging_steps; set training.eval_steps"
        )
        lines.append(f"evaluation: {_every(args.eval_steps)} and at the last step ({origin})")
    save = str(getattr(args.save_strategy, "value", args.save_strategy))
    if save == "no":
        lines.append(
            "checkpoints: none (training.save_strategy no); training.resume_from_checkpoint will "
            "find nothing to resume from"
        )
        return lines
    when = {
        "steps": f"{_every(args.save_steps)} and at the last step",
        "epoch": "at the end of each epoch",
        "best": "at each new best eval metric",
    }.get(save, save)
    kept = f"the last {args.save_total_limit} kept" if args.save_total_limit else "all kept"
    keys = ["save_strategy", "save_steps", "save_total_limit"]
    if config.early_stopping.patience is not None:
        kept += ", and the best"
    chosen = [f"training.{k}" for k in keys if k in config.training]
    defaults = [f"training.{k}" for k in keys if k not in config.training]
    origin = ", ".join(chosen) if chosen else ""
    if defaults:
        origin += ("; " if origin else "") + "dpolab's defaults for " + ", ".join(defaults)
    if config.early_stopping.patience is not None and "save_steps" not in config.training:
        origin += "; early stopping saves at each evaluation"
    lines.append(f"checkpoints: {when} in {args.output_dir}/checkpoint-N, {kept} ({origin})")
    return lines


def _deepspeed_mixed_precision(training: dict) -> dict:
    """Under `accelerate launch` with DeepSpeed, the accelerate config's `mixed_precision` becomes
    the DeepSpeed config's `bf16` / `fp16`, which transformers then requires `training.bf16` /
    `fp16` to match (it stops with a traceback otherwise): follow the launcher where the training
    section says nothing, and say so in one line where it says otherwise."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true", "yes"):
        return {}
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    wanted = {"bf16": launcher == "bf16", "fp16": launcher == "fp16"}
    for key, on in wanted.items():
        if key in training and bool(training[key]) != on:
            raise DpolabError(
                f"training.{key} is {str(bool(training[key])).lower()} but the accelerate config's "
                f"mixed_precision is {launcher!r}, which DeepSpeed follows: write training.{key}="
                f"{str(on).lower()}, or change mixed_precision in the accelerate config"
            )
    return {key: on for key, on in wanted.items() if key not in training and on}
