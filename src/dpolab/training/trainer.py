"""`transformers.Trainer` with dpolab's objective: the Trainer runs the loop (optimiser, schedule,
gradient accumulation, mixed precision, checkpoints, `report_to`, accelerate's DDP/FSDP/DeepSpeed);
this subclass only computes the loss of a batch and hands its per-pair metrics to the Trainer.

    training_step()                      (transformers)
    └── compute_loss()
        ├── layer_logprobs(policy)       one forward: final + intermediate layers (+ prompts, WPO's Σp²)
        ├── reference.logps()            a frozen copy, adapters off, or precomputed (or none)
        ├── objective()                  loss, per-pair losses and metrics
        └── with_aux_loss()              a MoE router's load-balancing loss, when its weight is not 0
    log()                                adds the train metrics' means since the last log
    evaluation_loop()                    (transformers)
    └── prediction_step()                per-pair [loss, weight, metrics...] as the "predictions",
                                         gathered over processes without the repeated samples
    compute_metrics()                    their means: eval_loss, eval_rewards/accuracies, ...
    _save_checkpoint()                   (transformers) written in a partial folder, renamed into place
                                         whole (training/checkpoints.py), then old ones rotated out
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dpolab.modeling.collate import batch_prompt_targets, batch_targets
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.objectives.metrics import ObjectiveOutput, with_aux_loss
from dpolab.training.checkpoints import TRAINER_STATE, checkpoint_full_error, rotate_checkpoints, staged_save


class MetricSums:
    """Running sums and counts of per-pair metric tensors, kept on the device: no host
    synchronisation until `reduce` at logging time."""

    def __init__(self):
        self.sums: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, values in metrics.items():
            self.sums[name].append(values.detach().float().sum())
            self.counts[name] += values.numel()

    def reduce(self, accelerator=None) -> dict[str, float]:
        """Means over everything added since the last reduce (and over processes), then reset."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        sums = torch.stack([torch.stack(self.sums[n]).sum() for n in names])
        counts = torch.tensor([float(self.counts[n]) for n in names], device=sums.device)
        if accelerator is not None and accelerator.num_processes > 1:
            sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
        means = (sums / counts.clamp(min=1)).tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(names, means))


def eval_means(columns: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    """The eval metrics from the per-item rows of every eval batch (all processes): `loss` is the
    weighted mean of the `loss` column by the `weight` column, the rest plain means."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(columns))
    index = {name: i for i, name in enumerate(columns)}
    weights = values[:, index["weight"]]
    out = {"loss": float((values[:, index["loss"]] * weights).sum() / max(weights.sum(), 1e-12))}
    for name in columns[2:]:
        out[name] = float(values[:, index[name]].mean())
    return out


class DpolabTrainer(Trainer):
    """Trainer whose loss is `objective(policy log-probs, reference log-probs)`.

    Args:
        objective: a `PreferenceObjective` or `SFTObjective` (dpolab.objectives).
        reference: an object with `logps(batch, policy) -> (layers, 2B)`, or None.
        chunk_tokens: passed to `layer_logprobs`.
        aux_loss_coef: the weight of a mixture-of-experts router's load-balancing loss (0: none).
        Everything else goes to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        objective,
        reference=None,
        chunk_tokens: int | None = None,
        aux_loss_coef: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, compute_metrics=self._eval_metrics, **kwargs)
        self.objective = objective
        self.reference = reference
        self.chunk_tokens = chunk_tokens
        self.aux_loss_coef = aux_loss_coef
        self._train_metrics = MetricSums()
        # the columns of the per-item rows prediction_step hands to the evaluation loop
        aux = ("aux_loss",) if aux_loss_coef else ()
        self._eval_columns = ("loss", "weight", *objective.metric_names(), *aux)
        # our loss is a mean per batch: let the Trainer divide it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        # the first step at which the loss was not finite (-1: none), kept on the device
        self.nonfinite_step = torch.tensor(-1)
        # while a checkpoint is saved: the partial folder the Trainer writes it in (_save_checkpoint)
        self._partial_dir: Path | None = None

    def _objective_output(self, model, inputs: dict[str, Any]) -> ObjectiveOutput:
        policy = layer_logprobs(
            model,
            inputs,
            self.objective.layers,
            final_norm=self.objective.final_norm,
            chunk_tokens=self.chunk_tokens,
            targets=batch_targets(inputs),
            prompt_targets=batch_prompt_targets(inputs) if self.objective.scores_prompt else None,
            log_sum_sq=self.objective.use_weighting,
            router_aux=bool(self.aux_loss_coef),
        )
        reference = None
        if self.reference is not None:
            # accelerate runs the policy's forward under autocast (training.bf16 / fp16), not a
            # separate reference model's: the reference must round as the policy does, or their
            # log-probs differ at the first step, where they should be equal
            with self.accelerator.autocast():
                reference = self.reference.logps(inputs, model)
        out = self.objective(policy, reference)
        return with_aux_loss(out, policy.aux_loss, self.aux_loss_coef) if self.aux_loss_coef else out

    def compute_loss(
        self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ):
        out = self._objective_output(model, inputs)
        if model.training:
            self._train_metrics.add(out.metrics)
            self._watch_finite(out.loss)
        return (out.loss, out) if return_outputs else out.loss

    def _watch_finite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        # torch.full fills on the device; torch.tensor(...) would copy from the host and wait for it
        step = torch.full((), self.state.global_step + 1, dtype=self.nonfinite_step.dtype, device=loss.device)
        current = self.nonfinite_step.to(loss.device)
        self.nonfinite_step = torch.where(bad & (current < 0), step, current)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """(None, `(B, columns)` per-item rows, `(B,)` zeros): the evaluation loop gathers the rows
        over processes with `gather_for_metrics`, which drops the samples a process repeated to
        even out the last batch, and `compute_metrics` averages them."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            out = self._objective_output(model, inputs)
        weights = out.item_weights if out.item_weights is not None else torch.ones_like(out.item_losses)
        rows = torch.stack(
            [out.item_losses, weights, *(out.metrics[name] for name in self._eval_columns[2:])], dim=1
        ).float()
        return None, rows, torch.zeros(rows.shape[0], device=rows.device)

    def _eval_metrics(self, prediction) -> dict[str, float]:
        return eval_means(self._eval_columns, prediction.predictions)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the means of the metrics since the last one
            logs = {**logs, **self._train_metrics.reduce(self.accelerator)}
        super().log(logs, start_time)

    def _get_output_dir(self, trial) -> str:
        if self._partial_dir is not None:  # saving a checkpoint: the Trainer writes it there
            return str(self._partial_dir)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (weights, optimizer, scheduler, RNG states, trainer state), written
        whole or not at all: the Trainer writes it in `.partial-checkpoint-N/checkpoint-N`, which is
        renamed `checkpoint-N` once every file is on the disk (`staged_save`); only then are older
        checkpoints rotated out (`save_total_limit`), so the last complete one is never deleted
        before the new one is complete. A full disk ends in one line (`checkpoint_full_error`)."""
        run_dir = Path(self._get_output_dir(trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        writer = self.args.should_save
        with staged_save(
            final,
            writer=writer,
            wait=self.accelerator.wait_for_everyone,
            full_error=lambda written: checkpoint_full_error(final, written, self.model),
        ) as staging:
            self._partial_dir = staging.parent
            try:
                super()._save_checkpoint(model, trial)  # its rotation sees only the partial folder
            finally:
                self._partial_dir = None
            if writer and self.state.best_model_checkpoint == str(staging):  # the best is this one
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staging / TRAINER_STATE))
        if writer:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
