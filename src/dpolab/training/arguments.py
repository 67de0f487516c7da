"""`transformers.TrainingArguments` from the config's `training` section, dpolab's defaults, the
stage's defaults and early stopping."""

from __future__ import annotations

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
