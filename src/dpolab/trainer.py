"""`transformers.Trainer` with dpolab's loss: the Trainer runs the loop (optimiser, schedule,
gradient accumulation, mixed precision, checkpoints, `report_to`, accelerate's DDP/FSDP/DeepSpeed);
this subclass only computes the loss of a batch and averages its metrics for logging.

One forward pass of the policy per batch serves the final and every intermediate layer; the
reference likewise (or none, when its log-probs were precomputed).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from dpolab.collate import batch_targets
from dpolab.logprobs import layer_logprobs


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


class DpolabTrainer(Trainer):
    """Trainer whose loss is `objective(policy log-probs, reference log-probs)`.

    Args:
        objective: `PreferenceObjective` or `SFTObjective` (dpolab.objective).
        reference: an object with `logps(batch, policy) -> (layers, 2B)`, or None (SFT).
        final_norm, chunk_tokens: passed to `layer_logprobs`.
        Everything else goes to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        objective,
        reference=None,
        final_norm: bool = True,
        chunk_tokens: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.reference = reference
        self.final_norm = final_norm
        self.chunk_tokens = chunk_tokens
        self._metrics = {"train": MetricSums(), "eval": MetricSums()}
        # our loss is a mean per batch: let the Trainer divide it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        # the first step at which the loss was not finite (-1: none), kept on the device
        self.nonfinite_step = torch.tensor(-1)

    def compute_loss(
        self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ):
        split = "train" if model.training else "eval"
        policy = layer_logprobs(
            model,
            inputs,
            self.objective.layers,
            final_norm=self.final_norm,
            chunk_tokens=self.chunk_tokens,
            targets=batch_targets(inputs),
        )
        reference = self.reference.logps(inputs, model) if self.reference is not None else None
        loss, metrics = self.objective(policy, reference)
        self._metrics[split].add(metrics)
        if split == "train":
            self._watch_finite(loss)
        return (loss, metrics) if return_outputs else loss

    def _watch_finite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        # torch.full fills on the device; torch.tensor(...) would copy from the host and wait for it
        step = torch.full((), self.state.global_step + 1, dtype=self.nonfinite_step.dtype, device=loss.device)
        current = self.nonfinite_step.to(loss.device)
        self.nonfinite_step = torch.where(bad & (current < 0), step, current)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs.update({f"eval_{k}": v for k, v in self._metrics["eval"].reduce(self.accelerator).items()})
        elif "loss" in logs:
            logs.update(self._metrics["train"].reduce(self.accelerator))
        super().log(logs, start_time)
