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
