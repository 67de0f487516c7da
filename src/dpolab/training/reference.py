"""The reference model's log-probs: a frozen copy, the LoRA model with its adapters disabled, or
log-probs computed once before training and cached on disk (`dpolab.training.reference_cache`).

All three give `logps(batch) -> (len(layers), 2B)` summed log-probs in the order of
`dpolab.modeling.collate`, for the same layers as the policy and reduced as the policy's are
(LD-DPO's weighted sums with `ld_alpha`), so the objective never knows which it got.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from dpolab.modeling.anatomy import anatomy, eval_mode
from dpolab.modeling.collate import batch_targets
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.objectives.sequences import sequence_logps

log = logging.getLogger("dpolab")


class ModelReference:
    """A separate frozen model (a copy of the starting weights, or `ref_name_or_path`)."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        *,
        final_norm: bool = True,
        chunk_tokens: int | None = None,
        ld_alpha: float | None = None,
    ):
        self.model, self.layers, self.final_norm, self.chunk_tokens = (
            model,
            tuple(layers),
            final_norm,
            chunk_tokens,
        )
        self.ld_alpha = ld_alpha

    def to(self, device) -> ModelReference:
        self.model.to(device)
        return self

    def _follow_policy_dtype(self, policy: nn.Module | None) -> None:
        """DeepSpeed with bf16 (or fp16) turns the policy's weights into that dtype when training
        starts; the frozen copy follows, or its log-probs would be rounded otherwise than the
        policy's (and the first step's margins would not be 0). Both load in `model.dtype`, so
        nothing else changes a dtype here."""
        if policy is None or policy is self.model:
            return
        dtype = anatomy(policy).head.weight.dtype
        if dtype.is_floating_point and anatomy(self.model).head.weight.dtype != dtype:
            log.info("reference: the frozen copy cast to %s, as the policy's weights are", dtype)
            self.model.to(dtype)

    @torch.no_grad()
    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        self._follow_policy_dtype(policy)
        out = layer_logprobs(
            self.model,
            batch,
            self.layers,
            final_norm=self.final_norm,
            chunk_tokens=self.chunk_tokens,
            targets=batch_targets(batch),
        )
        return sequence_logps(out, self.ld_alpha)


def _peft_model(model: nn.Module):
    while not hasattr(model, "disable_adapter"):
        inner = getattr(model, "module", None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} has no LoRA adapters to disable")
        model = inner
    return model


class AdapterDisabledReference:
    """The policy itself with its LoRA adapters switched off: no second copy in memory.

    The reference's log-probs are computed in eval mode, as those of the frozen copy (loaded in
    eval mode) and of the precomputation are: the Trainer keeps the policy in train mode, and with
    dropout on the reference would be a different random function at every call. Under
    `torch.no_grad` and after the policy's own forward of the step, this changes nothing of that
    forward or its gradients (dropout masks are drawn at forward time, and gradient checkpointing
    recomputes after the mode is restored)."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        final_norm: bool = True,
        chunk_tokens: int | None = None,
        ld_alpha: float | None = None,
    ):
        self.layers, self.final_norm, self.chunk_tokens = tuple(layers), final_norm, chunk_tokens
        self.ld_alpha = ld_alpha

    @torch.no_grad()
    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        with eval_mode(policy), _peft_model(policy).disable_adapter():
            out = layer_logprobs(
                policy,
                batch,
                self.layers,
                final_norm=self.final_norm,
                chunk_tokens=self.chunk_tokens,
                targets=batch_targets(batch),
            )
        return sequence_logps(out, self.ld_alpha)


def mixed_precision_autocast(mixed_precision: str, device_type: str):
    """The autocast accelerate runs the policy's forward under for `mixed_precision` ("no",
    "bf16", "fp16": `TrainingArguments.mixed_precision`), for a reference computed outside the
    Trainer (the precomputation), so that its log-probs are rounded as the policy's are."""
    if mixed_precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if mixed_precision == "fp16":
        return torch.autocast(device_type, dtype=torch.float16)
    return nullcontext()


class PrecomputedReference:
    """Reference log-probs carried by the batch (`ref_logps`, stacked by the collator)."""

    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        return batch["ref_logps"]
