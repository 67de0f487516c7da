"""`dpolab train` and `dpolab sft` from a validated config: data, models, reference, Trainer.

The order matters for the user: everything that can be checked without weights (config, model
config and layer numbers, tokenizer, every data row) is checked before a model loads.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from dpolab.config import RunConfig, check_layers_against_model, dump_config
from dpolab.data.io import write_json_atomic
from dpolab.data.prepare import prepare_data
from dpolab.errors import DpolabError

log = logging.getLogger("dpolab")

# Under OUTPUT_DIR: the merged start of a LoRA run that starts from an adapter (dpolab.models.load_policy).
MERGED_START = "merged-start"


def training_arguments(config: RunConfig, *, has_eval: bool, sft: bool = False):
    """`TrainingArguments` from the `training` section, dpolab's defaults and early stopping (on
    `early_stopping_metric`, in the direction that metric improves)."""
    from transformers import TrainingArguments

    from dpolab.config import TRAINING_DEFAULTS, early_stopping_metric
    from dpolab.objective import lower_is_better

    values = {**TRAINING_DEFAULTS, **config.training}
    values.pop("resume_from_checkpoint", None)
    values["remove_unused_columns"] = False
    # every trainable parameter takes part in every step: spare DDP its search for unused ones
    values.setdefault("ddp_find_unused_parameters", False)
    # pinned host memory only helps copies to an accelerator; on a CPU torch warns at every loader
    import torch

    values.setdefault("dataloader_pin_memory", torch.accelerator.is_available())
    if has_eval and "eval_strategy" not in config.training:
        values["eval_strategy"] = "steps"
        values.setdefault("eval_steps", values.get("logging_steps"))
    es = config.early_stopping
    if es.patience is not None:
        metric = early_stopping_metric(config, sft=sft)
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


def resume_target(config: RunConfig) -> str | None:
    """The checkpoint folder `training.resume_from_checkpoint` names: a folder, or for `true`
    (or `last`) the last `checkpoint-N` in `training.output_dir`, as the Trainer would pick it;
    checked before anything loads."""
    from transformers.trainer_utils import get_last_checkpoint

    from dpolab.config import TRAINING_DEFAULTS

    value = config.training.get("resume_from_checkpoint")
    if value in (None, False, ""):
        return None
    if value is True or value == "true" or value == "last":
        output_dir = config.training.get("output_dir", TRAINING_DEFAULTS["output_dir"])
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise DpolabError(
                f"training.resume_from_checkpoint: {str(value).lower()}, but {output_dir} holds no checkpoint-N folder to "
                f"resume from; name a checkpoint folder, or remove the option to start afresh"
            )
        return last
    if not Path(value).is_dir():
        raise DpolabError(f"training.resume_from_checkpoint: {value} is not a checkpoint folder")
    return value


def _resumed_step(checkpoint: str | None) -> int:
    """The step a run resumed from `checkpoint` starts after (0: a fresh start, or a checkpoint
    without trainer_state.json, from which the Trainer takes the weights only)."""
    state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
    if state is None or not state.is_file():
        return 0
    return int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))


def whole_run_train_loss(log_history: list[dict[str, Any]], *, start: int, end: int, session_loss: float):
    """(mean training loss, first step it covers) for a run that trained steps start+1..end in
    this session with mean `session_loss`, after resuming at step `start`.

    The Trainer's `training_loss` covers this session's steps only; the steps before a resume are
    in the checkpoint's log history (each train entry: the mean loss since the previous one). When
    that history reaches the resume step exactly, the mean is over all steps 1..end; otherwise
    (the checkpoint fell between two logging steps) it stays the session's, from step start+1."""
    if start == 0:
        return session_loss, 1
    logged = sorted(
        (entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and entry["step"] <= start
    )
    if not logged or logged[-1][0] != start or end <= start:
        return session_loss, start + 1
    total, previous = 0.0, 0
    for step, loss in logged:
        total += loss * (step - previous)
        previous = step
    return (total + session_loss * (end - start)) / end, 1


def last_checkpoint_before(output_dir: Path, step: int) -> Path | None:
    """The highest `checkpoint-N` folder with N < `step`: saved before that step's update (any
    later one, e.g. from an earlier run in the same folder, holds weights of after it)."""
    steps = {}
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit() and int(suffix) < step:
            steps[int(suffix)] = path
    return steps[max(steps)] if steps else None


def run(config: RunConfig, *, sft: bool = False, callbacks: tuple = ()) -> dict[str, Any]:
    """Train as the config says; returns the run summary (also written to OUTPUT_DIR/summary.json)."""
    import datasets
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback

    from dpolab.architectures import num_layers_of
    from dpolab.callbacks import LiveProgressCallback, MetricsJsonlCallback, NonFiniteLossCallback
    from dpolab.collate import PairCollator, SequenceCollator
    from dpolab.models import (
        adapter_base,
        count_parameters,
        load_model_config,
        load_policy,
        load_tokenizer,
    )
    from dpolab.objective import PreferenceObjective, SFTObjective
    from dpolab.reference_setup import build_reference, check_sharding, check_vocabulary
    from dpolab.trainer import DpolabTrainer

    first_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch
    if not first_process:
        log.setLevel(logging.WARNING)  # the first process reports for all
    section = config.model
    resume = resume_target(config)
    policy_config = load_model_config(section.name_or_path, trust_remote_code=section.trust_remote_code)
    num_layers = num_layers_of(policy_config)
    if not sft:
        check_layers_against_model(config, num_layers)
    tokenizer = load_tokenizer(section)
    reference_config = None
    if not sft and section.ref_name_or_path is not None:
        reference_config = load_model_config(
            section.ref_name_or_path, trust_remote_code=section.trust_remote_code
        )
    check_vocabulary(config, tokenizer, policy_config, reference_config)
    prepared = prepare_data(config, tokenizer, sft=sft)
    has_eval = prepared.eval is not None
    args = training_arguments(config, has_eval=has_eval, sft=sft)
    if not sft:
        check_sharding(config)  # after TrainingArguments, which set up DeepSpeed if asked
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if first_process:
        dump_config(config, output_dir / "config.yaml")
    for report in prepared.reports:
        log.warning("%s", report.summary())
    if prepared.reports and first_process:
        write_json_atomic(output_dir / "bad_rows.json", [r.to_dict() for r in prepared.reports])
    if prepared.truncated_prompts or prepared.truncated_completions:
        log.info(
            "truncated: %d prompts to data.max_prompt_length, %d pairs' completions to data.max_length",
            prepared.truncated_prompts,
            prepared.truncated_completions,
        )
    log.info("pairs: %d train, %s eval", len(prepared.train), len(prepared.eval) if has_eval else "no")

    merged_start = (output_dir / MERGED_START).resolve()
    policy = load_policy(section, merged_start=merged_start, write=first_process, seed=args.seed)
    if first_process and section.lora is not None and adapter_base(section.name_or_path):
        tokenizer.save_pretrained(merged_start)  # a whole model folder, as the new adapter's base
    trainable, total = count_parameters(policy)
    log.info(
        "model: %s, %d layers, %.2fM parameters, %.2fM trainable",
        section.name_or_path,
        num_layers,
        total / 1e6,
        trainable / 1e6,
    )
    if sft:
        objective = SFTObjective(final_layer=num_layers)
        reference = None
        collator = SequenceCollator(pad_token_id=tokenizer.pad_token_id)
    else:
        loss = config.loss
        objective = PreferenceObjective(
            method=loss.method,
            beta=loss.beta,
            final_layer=num_layers,
            intermediate_layers=tuple(loss.intermediate_layers),
            gamma=loss.gamma,
            dpop_lambda=loss.dpop_lambda,
        )
        collator = PairCollator(pad_token_id=tokenizer.pad_token_id)
        reference = build_reference(config, policy, objective.layers, prepared, collator, args)

    train_dataset = datasets.Dataset.from_list(prepared.train)
    eval_dataset = datasets.Dataset.from_list(prepared.eval) if has_eval else None
    trainer = DpolabTrainer(
        model=policy,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        objective=objective,
        reference=reference,
        final_norm=config.loss.final_norm,
    )
    nonfinite = NonFiniteLossCallback(lambda: trainer.nonfinite_step.item())
    trainer.add_callback(MetricsJsonlCallback(output_dir))
    trainer.add_callback(nonfinite)
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LiveProgressCallback())
    if config.early_stopping.patience is not None:
        trainer.add_callback(
            EarlyStoppingCallback(config.early_stopping.patience, config.early_stopping.threshold)
        )
    for callback in callbacks:
        trainer.add_callback(callback)

    result = trainer.train(resume_from_checkpoint=resume)
    if nonfinite.bad_step is not None:
        good = last_checkpoint_before(output_dir, nonfinite.bad_step)
        last = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise DpolabError(
            f"the loss became non-finite at step {nonfinite.bad_step}; training stopped and the model "
            f"was not saved; {last} (lower training.learning_rate, or check the data)"
        )
    trainer.save_model(str(output_dir))
    start = _resumed_step(resume)
    train_loss, train_loss_from = whole_run_train_loss(
        trainer.state.log_history,
        start=start,
        end=trainer.state.global_step,
        session_loss=result.training_loss,
    )
    summary = {
        "command": "sft" if sft else "train",
        "method": None if sft else config.loss.method,
        "global_step": trainer.state.global_step,
        "train_loss": train_loss,
        "train_loss_from_step": train_loss_from,
        "train_runtime": result.metrics.get("train_runtime"),
        "pairs": {"train": len(prepared.train), "eval": len(prepared.eval) if has_eval else 0},
        "skipped_rows": sum(len(r) for r in prepared.reports),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "output_dir": str(output_dir),
    }
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if evals:
        summary["last_eval"] = {k.removeprefix("eval_"): v for k, v in evals[-1].items()}
    if trainer.is_world_process_zero():
        write_json_atomic(output_dir / "summary.json", summary)
    return summary
