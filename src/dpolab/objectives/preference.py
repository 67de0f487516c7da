"""The preference objective: the configured loss at the final layer and at each intermediate
layer, mixed as Intermediate DPO does (Kojima 2024, Eq. 3), with TRL-named per-pair metrics.

A plain callable of log-probs, independent of the Trainer, so the tests call it on hand-made
tensors. Sequences are ordered chosen 0, rejected 0, chosen 1, ... (`dpolab.modeling.collate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dpolab.config.schema import LossSection
from dpolab.modeling.logprobs import LayerLogprobs
from dpolab.objectives.losses import mix_layer_losses
from dpolab.objectives.metrics import PAIR_METRICS, Metrics, ObjectiveOutput, layer_prefix, pair_metrics
from dpolab.objectives.registry import LossSpec, get_loss_spec


@dataclass(frozen=True)
class PreferenceObjective:
    spec: LossSpec
    final_layer: int  # L
    params: Mapping[str, Any] = field(default_factory=dict)  # the spec's keys' values
    intermediate_layers: tuple[int, ...] = ()
    gamma: float = 0.9
    final_norm: bool = True  # intermediate layers through the model's final norm (the logit lens)

    @classmethod
    def from_config(cls, loss: LossSection, final_layer: int) -> PreferenceObjective:
        spec = get_loss_spec(loss.method)
        return cls(
            spec=spec,
            final_layer=final_layer,
            params=spec.params(loss),
            intermediate_layers=tuple(loss.intermediate.layers),
            gamma=loss.intermediate.gamma,
            final_norm=loss.intermediate.final_norm,
        )

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer whose log-probs the objective needs, the final one last."""
        return (*self.intermediate_layers, self.final_layer)

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    def metric_names(self) -> tuple[str, ...]:
        """The names of the metrics `__call__` returns (the Trainer logs each at evaluation as
        `eval_<name>`, beside `eval_loss`)."""
        per_layer = (*PAIR_METRICS, *self.spec.metrics)
        names = [*per_layer, "loss/final"]
        for layer in self.intermediate_layers:
            names += [f"layers/{layer}/{name}" for name in (*per_layer, "loss")]
        if self.intermediate_layers:
            names.append("loss/intermediate")
        return tuple(names)

    def __call__(self, policy: LayerLogprobs, reference_logps: torch.Tensor | None) -> ObjectiveOutput:
        """Loss of one batch.

        Args:
            policy: the policy's summed log-probs, `logps` `(len(layers), 2B)`.
            reference_logps: the reference's summed log-probs, same shape and order (None when the
                loss needs no reference).
        Returns:
            the mean loss, the `(B,)` per-pair losses and `(B,)` per-pair metrics.
        """
        logps = policy.logps
        if reference_logps is not None:
            reference_logps = reference_logps.to(logps.device, logps.dtype)
        chosen_lengths, rejected_lengths = policy.num_tokens[0::2], policy.num_tokens[1::2]
        metrics: Metrics = {}
        per_layer_losses = {}
        for i, layer in enumerate(policy.layers):
            pol = logps[i]
            ref = reference_logps[i] if reference_logps is not None else None
            out = self.spec.compute(
                pol[0::2],
                pol[1::2],
                ref[0::2] if ref is not None else None,
                ref[1::2] if ref is not None else None,
                chosen_lengths=chosen_lengths,
                rejected_lengths=rejected_lengths,
                params=self.params,
            )
            per_layer_losses[layer] = out.losses
            prefix = layer_prefix(layer, self.final_layer)
            metrics.update(
                pair_metrics(out.chosen_rewards, out.rejected_rewards, pol[0::2], pol[1::2], prefix=prefix)
            )
            metrics.update({f"{prefix}{name}": value for name, value in out.metrics.items()})
            metrics[f"{prefix}loss" if prefix else "loss/final"] = out.losses.detach()
        intermediate = [per_layer_losses[k] for k in self.intermediate_layers]
        per_pair = mix_layer_losses(per_layer_losses[self.final_layer], intermediate, gamma=self.gamma)
        if intermediate:
            metrics["loss/intermediate"] = torch.stack(intermediate).mean(0).detach()
        return ObjectiveOutput(per_pair.mean(), per_pair.detach(), None, metrics)
