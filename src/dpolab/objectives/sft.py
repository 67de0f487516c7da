"""The SFT objective: the mean negative log-likelihood per completion token (prompt tokens never count)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpolab.modeling.logprobs import LayerLogprobs
from dpolab.objectives.metrics import ObjectiveOutput

SFT_METRICS = ("logps/per_token",)


@dataclass(frozen=True)
class SFTObjective:
    final_layer: int
    needs_reference = False
    final_norm = True  # only the final layer: the model's own norm
    scores_prompt = False  # the prompts' tokens never count
    use_weighting = False
    ld_alpha = None

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.final_layer,)

    def metric_names(self) -> tuple[str, ...]:
        return SFT_METRICS

    def __call__(self, policy: LayerLogprobs, reference_logps: torch.Tensor | None = None) -> ObjectiveOutput:
        """The token-weighted mean NLL of the batch; per sequence its mean NLL, weighted by its tokens."""
        sums = policy[self.final_layer]
        tokens = policy.num_tokens.to(sums.dtype)
        loss = -sums.sum() / tokens.sum().clamp(min=1)
        per_token = (sums / tokens.clamp(min=1)).detach()
        return ObjectiveOutput(loss, -per_token, tokens.detach(), {SFT_METRICS[0]: per_token})
