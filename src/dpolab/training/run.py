"""One run of `dpolab train` or `dpolab sft`, in three steps that can be called and tested alone:

    run(config, stage)
    ├── prepare()          config → tokenizer, data, TrainingArguments, policy, objective, reference
    ├── build_trainer()    the DpolabTrainer with its datasets and callbacks
    ├── train_and_save()   trainer.train (resuming where asked), a non-finite loss stopped, the model saved
    └── summarise()        summary.json

The order of `prepare` matters for the user: everything that can be checked without weights
(config, model config and layer numbers, tokenizer, every data row) is checked before a model loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpolab.config.parse import dump_config
from dpolab.config.schema import RunConfig
from dpolab.data.io import write_json_atomic
from dpolab.data.prepare import PreparedData, prepare_data
from dpolab.errors import DpolabError
from dpolab.training.checkpoints import (
    final_model_full_error,
    last_checkpoint_before,
    resume_target,
    resumed_step,
    staged_save,
)
from dpolab.training.policy import GivenModels
from dpolab.training.stages import PREFERENCE, Stage

log = logging.getLogger("dpolab")

# Under OUTPUT_DIR: the merged start of a LoRA run that starts from an adapter (dpolab.training.policy).
MERGED_START = "merged-start"


@dataclass
class PreparedRun:
    """Everything a run trains with, before the Trainer exists."""

    config: RunConfig
    stage: Stage
    args: Any  # transformers.TrainingArguments
    tokenizer: Any
    data: PreparedData
    num_layers: int
    policy: Any
    objective: Any
    collator: Any
    reference: Any  # dpolab.training.reference, or None
    aux_loss_coef: float  # the weight of a MoE router's load-balancing loss (0: none)
    output_dir: Path
    resume: str | None
    first_process: bool
    resume_step: int = 0  # the step `resume` holds (read before training: rotation may delete it)


def _log_data(prepared: PreparedData, output_dir: Path, first_process: bool) -> None:
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
    log.info("pairs: %d train, %s eval", len(prepared.train), len(prepared.eval) if prepared.eval else "no")


def prepare(config: RunConfig, stage: Stage = PREFERENCE, given: GivenModels | None = None) -> PreparedRun:
    """Check and load everything the run needs, models last. `given`: models and tokenizer passed
    in as objects (`dpolab.PreferenceTrainer`), used instead of loading what the config names."""
    from dpolab.config.validate import has_eval_data
    from dpolab.modeling.anatomy import check_supported, num_layers_of
    from dpolab.modeling.loading import (
        adapter_base,
        count_parameters,
        load_model_config,
        load_tokenizer,
        with_pad_token,
    )
    from dpolab.training.arguments import settings_lines, training_arguments
    from dpolab.training.policy import given_policy, load_policy
    from dpolab.training.reference_setup import build_reference, check_sharding, check_vocabulary

    first_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch
    if not first_process:
        log.setLevel(logging.WARNING)  # the first process reports for all
    given = given or GivenModels()
    section = config.model
    resume = resume_target(config)
    if given.policy is not None:
        policy_config = given.policy.config
    else:
        policy_config = load_model_config(section.name_or_path, trust_remote_code=section.trust_remote_code)
    check_supported(policy_config)
    num_layers = num_layers_of(policy_config)
    stage.check_model(config, num_layers)
    if given.tokenizer is not None:
        tokenizer = with_pad_token(given.tokenizer, "processing_class")
    else:
        tokenizer = load_tokenizer(
            section.tokenizer_name_or_path or section.name_or_path,
            trust_remote_code=section.trust_remote_code,
        )
    needs_reference = stage.needs_reference(config)
    reference_config = None
    if needs_reference and given.reference is not None:
        reference_config = given.reference.config
        check_supported(reference_config)
    elif needs_reference and section.ref_name_or_path is not None:
        reference_config = load_model_config(
            section.ref_name_or_path, trust_remote_code=section.trust_remote_code
        )
        check_supported(reference_config)
    check_vocabulary(config, tokenizer, policy_config, reference_config)
    seed = int(config.training.get("seed", 42))
    args = training_arguments(config, stage, has_eval=has_eval_data(config))
    # the main process of each machine prepares the data (or reads the cache); the others wait for
    # it and read what it cached: no process tokenises on its own
    with args.main_process_first(local=True, desc="data preparation"):
        data = prepare_data(
            config.data,
            tokenizer,
            tokenize=stage.tokenize,
            seed=seed,
            data_seed=config.training.get("data_seed"),
            build=args.local_process_index == 0,
        )
    for line in settings_lines(args, config, stage, has_eval=data.eval is not None):
        log.info("%s", line)
    _check_flex_attention(config, given, policy_config, args.device)
    if needs_reference:
        check_sharding(config)  # after TrainingArguments, which set up DeepSpeed if asked
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if first_process:
        dump_config(config, output_dir / "config.yaml")
    _log_data(data, output_dir, first_process)

    if given.policy is not None:
        policy = given_policy(given.policy, section, seed=args.seed)
    else:
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
    objective = stage.objective(config, num_layers)
    collator, aux_loss_coef = _check_model(config, stage, policy, objective, tokenizer, data)
    reference = build_reference(config, policy, objective, data, collator, args, given)
    return PreparedRun(
        config=config,
        stage=stage,
        args=args,
        tokenizer=tokenizer,
        data=data,
        num_layers=num_layers,
        policy=policy,
        objective=objective,
        collator=collator,
        reference=reference,
        aux_loss_coef=aux_loss_coef,
        output_dir=output_dir,
        resume=resume,
        first_process=first_process,
        resume_step=resumed_step(resume),
    )


def _check_flex_attention(config: RunConfig, given: GivenModels, policy_config, device) -> None:
    """flex_attention asked for (or the given policy's) where it cannot train: one line, before
    any weights load."""
    from dpolab.modeling.layout import flex_attention_problem

    attention = config.model.attn_implementation
    if given.policy is not None:
        attention = getattr(given.policy.config, "_attn_implementation", None)
    if attention == "flex_attention":
        problem = flex_attention_problem(policy_config, device)
        if problem is not None:
            raise DpolabError(f"model.attn_implementation flex_attention: {problem}")


def _packing_collator(config: RunConfig, stage: Stage, layout, objective, tokenizer, train):
    """The stage's collator for the model's row layout, packing `data.pack_tokens` tokens a row
    where asked: refused for a model that cannot take packed rows; the pairs longer than a row's
    budget (each in a row of its own) said in the log."""
    pack_tokens = config.data.pack_tokens
    if pack_tokens is not None and not layout.packed:
        raise DpolabError(
            f"data.pack_tokens: {layout.model} cannot take packed rows ({layout.reason}); remove data.pack_tokens"
        )
    collator = stage.collator(tokenizer, objective, packed=layout.packed, pack_tokens=pack_tokens)
    if pack_tokens is not None:
        # the prepared tables' `length` column is each example's prompt + completions: what a
        # packed row gives it (dpolab.data.rows); a list of examples is measured one by one
        columns = getattr(train, "column_names", ())
        lengths = train["length"] if "length" in columns else map(collator.length, train)
        longer = [n for n in lengths if n > pack_tokens]
        if longer:
            log.warning(
                "data.pack_tokens %d: %d of %d training examples are longer (up to %d tokens); each goes "
                "in a row of its own",
                pack_tokens,
                len(longer),
                len(train),
                max(longer),
            )
    return collator


def _check_model(config: RunConfig, stage: Stage, policy, objective, tokenizer, data):
    """(collator, router aux-loss weight): what dpolab found in the loaded policy, said once in the
    log; intermediate layers refused where the logit lens is not defined; the row layout the
    model takes, confirmed on the first training examples (`dpolab.modeling.selfcheck`)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from dpolab.modeling.anatomy import anatomy
    from dpolab.modeling.layout import row_layout
    from dpolab.modeling.router import aux_loss_coefficient
    from dpolab.modeling.selfcheck import self_check

    layout = row_layout(policy)
    collator = _packing_collator(config, stage, layout, objective, tokenizer, data.train)
    if is_deepspeed_zero3_enabled():  # weights partitioned outside DeepSpeed's engine: nothing to probe
        log.info("rows: %s", layout.describe())
        return collator, float(config.model.router_aux_loss_coef or 0.0)
    parts = anatomy(policy)
    log.info("model: %s", parts.describe())
    log.info("rows: %s", layout.describe())
    if any(k != parts.num_layers for k in objective.layers):
        parts.check_lens()
    coef = aux_loss_coefficient(parts, config.model.router_aux_loss_coef)
    if coef:
        log.info("aux_loss: the router's load-balancing loss × %g is added to the loss", coef)
    return self_check(policy, data.train, collator), coef


def build_trainer(prepared: PreparedRun, callbacks: tuple = ()):
    """The Trainer of a prepared run, with dpolab's callbacks (metrics.jsonl, the progress bar, the
    stop at a non-finite loss, early stopping) and any given."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback

    from dpolab.training.callbacks import LiveProgressCallback, MetricsJsonlCallback, NonFiniteLossCallback
    from dpolab.training.trainer import DpolabTrainer

    data, config = prepared.data, prepared.config
    trainer = DpolabTrainer(
        model=prepared.policy,
        args=prepared.args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=prepared.collator,
        processing_class=prepared.tokenizer,
        objective=prepared.objective,
        reference=prepared.reference,
        aux_loss_coef=prepared.aux_loss_coef,
    )
    trainer.nonfinite = NonFiniteLossCallback(lambda: trainer.nonfinite_step.item())
    trainer.add_callback(MetricsJsonlCallback(prepared.output_dir))
    trainer.add_callback(trainer.nonfinite)
    if not prepared.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LiveProgressCallback())
    es = config.early_stopping
    if es.patience is not None:
        trainer.add_callback(EarlyStoppingCallback(es.patience, es.threshold))
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def train_and_save(prepared: PreparedRun, trainer):
    """`trainer.train()` (from the checkpoint the config resumes from), then the model saved in
    OUTPUT_DIR (written whole in a partial folder first, then moved in: a kill or a full disk
    leaves what was there); a run whose loss went non-finite stops with the last good checkpoint
    named."""
    result = trainer.train(resume_from_checkpoint=prepared.resume)
    bad_step = trainer.nonfinite.bad_step
    if bad_step is not None:
        good = last_checkpoint_before(prepared.output_dir, bad_step)
        last = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise DpolabError(
            f"the loss became non-finite at step {bad_step}; training stopped and the model "
            f"was not saved; {last} (lower training.learning_rate, or check the data)"
        )
    output_dir = prepared.output_dir
    with staged_save(
        output_dir,
        into=True,
        writer=trainer.args.should_save,
        wait=trainer.accelerator.wait_for_everyone,
        full_error=lambda written: final_model_full_error(output_dir, written, trainer.model),
    ) as staging:
        trainer.save_model(str(staging))
    return result


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
    if not logged or logged[-1][0] != start or end < start:
        return session_loss, start + 1
    total, previous = 0.0, 0
    for step, loss in logged:
        total += loss * (step - previous)
        previous = step
    return (total + session_loss * (end - start)) / end, 1


def summarise(prepared: PreparedRun, trainer, result) -> dict[str, Any]:
    """The run's summary (written to OUTPUT_DIR/summary.json by the first process)."""
    data, state = prepared.data, trainer.state
    train_loss, train_loss_from = whole_run_train_loss(
        state.log_history,
        start=prepared.resume_step,
        end=state.global_step,
        session_loss=result.training_loss,
    )
    summary = {
        **prepared.stage.describe(prepared.config),
        "global_step": state.global_step,
        "train_loss": train_loss,
        "train_loss_from_step": train_loss_from,
        "train_runtime": result.metrics.get("train_runtime"),
        "pairs": {"train": len(data.train), "eval": len(data.eval) if data.eval is not None else 0},
        "skipped_rows": sum(len(r) for r in data.reports),
        "best_checkpoint": state.best_model_checkpoint,
        "best_metric": state.best_metric,
        "output_dir": str(prepared.output_dir),
    }
    evals = [entry for entry in state.log_history if "eval_loss" in entry]
    if evals:
        summary["last_eval"] = {k.removeprefix("eval_"): v for k, v in evals[-1].items()}
    if trainer.is_world_process_zero():
        write_json_atomic(prepared.output_dir / "summary.json", summary)
    return summary


def run(config: RunConfig, stage: Stage = PREFERENCE, *, callbacks: tuple = ()) -> dict[str, Any]:
    """Train as the config says; returns the run summary (also written to OUTPUT_DIR/summary.json)."""
    prepared = prepare(config, stage)
    trainer = build_trainer(prepared, callbacks)
    result = train_and_save(prepared, trainer)
    return summarise(prepared, trainer, result)
