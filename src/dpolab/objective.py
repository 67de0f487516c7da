"""The training objectives: turn layer-wise log-probs into a loss and per-pair metrics.

`PreferenceObjective` applies the configured loss at the final layer and at each intermediate
layer and mixes them (Intermediate DPO, Eq. 3); `SFTObjective` is the token-level negative
log-likelihood of the completions. Both are plain callables, independent of the Trainer, so the
tests can call them on hand-made tensors.

Metric names follow TRL (NOTES.md): the final layer's are unprefixed, an intermediate layer k's
sit under `layers/<k>/`. Every metric is returned as a per-pair (or per-sequence) tensor so that
the trainer can average it over any number of batches and processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpolab.logprobs import LayerLogprobs
from dpolab.losses import LENGTH_AVERAGED, get_loss, mix_layer_losses

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PreferenceObjective:
    method: str  # dpo | ipo | dpop
    beta: float
    final_layer: int  # L
    intermediate_layers: tuple[int, ...] = ()
    gamma: float = 0.9
    dpop_lambda: float = 50.0

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer whose log-probs the objective needs, the final one last."""
        return (*self.intermediate_layers, self.final_layer)

    def _loss_kwargs(self) -> dict[str, float]:
        kwargs = {"beta": self.beta}
        if self.method == "dpop":
            kwargs["lambda_"] = self.dpop_lambda
        return kwargs

    def __call__(self, policy: LayerLogprobs, reference_logps: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Loss and metrics of one batch.

        Args:
            policy: the policy's summed log-probs, `logps` `(len(layers), 2B)` with sequences
                ordered chosen 0, rejected 0, chosen 1, ... (see dpolab.collate).
            reference_logps: the reference's summed log-probs, same shape and order.
        Returns:
            (scalar loss, metrics), each metric a `(B,)` tensor of per-pair values.
        """
        loss_fn = get_loss(self.method)
        kwargs = self._loss_kwargs()
        reference_logps = reference_logps.to(policy.logps.device, policy.logps.dtype)
        lengths = policy.num_tokens.clamp(min=1).to(policy.logps.dtype)
        metrics: Metrics = {}
        per_layer_losses = {}
        for i, layer in enumerate(policy.layers):
            pol, ref = policy.logps[i], reference_logps[i]
            if self.method in LENGTH_AVERAGED:  # IPO: per-token averages (NOTES.md)
                args = (
                    pol[0::2] / lengths[0::2],
                    pol[1::2] / lengths[1::2],
                    ref[0::2] / lengths[0::2],
                    ref[1::2] / lengths[1::2],
                )
            else:
                args = (pol[0::2], pol[1::2], ref[0::2], ref[1::2])
            losses, _, _ = loss_fn(*args, **kwargs)
            per_layer_losses[layer] = losses
            prefix = "" if layer == self.final_layer else f"layers/{layer}/"
            metrics.update(pair_metrics(pol, ref, beta=self.beta, prefix=prefix))
            metrics[f"{prefix}loss" if prefix else "loss/final"] = losses.detach()
        final = per_layer_losses[self.final_layer]
        intermediate = [per_layer_losses[k] for k in self.intermediate_layers]
        per_pair = mix_layer_losses(final, intermediate, gamma=self.gamma)
        if intermediate:
            metrics["loss/intermediate"] = torch.stack(intermediate).mean(0).detach()
        if self.method == "dpop":
            final_i = policy.layers.index(self.final_layer)
            delta_w = policy.logps[final_i][0::2] - reference_logps[final_i][0::2]
            metrics["dpop/penalty"] = torch.clamp(-delta_w, min=0).detach()
        return per_pair.mean(), metrics


PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "dpo_likelihood",
)
SFT_METRICS = ("logps/per_token",)


def preference_metric_names(
    method: str, intermediate_layers: tuple[int, ...] | list[int] = ()
) -> tuple[str, ...]:
    """The names of the metrics `PreferenceObjective` returns for this method and these layers
    (the Trainer logs each at evaluation as `eval_<name>`, beside `eval_loss`)."""
    names = [*PAIR_METRICS, "loss/final"]
    for layer in intermediate_layers:
        names += [f"layers/{layer}/{name}" for name in (*PAIR_METRICS, "loss")]
    if intermediate_layers:
        names.append("loss/intermediate")
    if method == "dpop":
        names.append("dpop/penalty")
    return tuple(names)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of a logged metric is the better one: the losses and DPOP's penalty."""
    return (
        metric == "loss" or metric.startswith("loss/") or metric.endswith("/loss") or metric == "dpop/penalty"
    )


def pair_metrics(policy: torch.Tensor, reference: torch.Tensor, *, beta: float, prefix: str = "") -> Metrics:
    """TRL-named metrics of one layer from summed log-probs `(2B,)` (chosen/rejected interleaved).

    rewards/chosen = β·Δ_w, rewards/rejected = β·Δ_l, rewards/margins = their difference,
    rewards/accuracies = [r_w > r_l] (strict), logps/* = the policy's summed log-probs, and
    dpo_likelihood = log σ(β·(Δ_w − Δ_l)) (the layer-wise curve of the Intermediate DPO paper).
    """
    policy, reference = policy.detach(), reference.detach()
    delta = policy - reference
    r_w, r_l = beta * delta[0::2], beta * delta[1::2]
    return {
        f"{prefix}rewards/chosen": r_w,
        f"{prefix}rewards/rejected": r_l,
        f"{prefix}rewards/margins": r_w - r_l,
        f"{prefix}rewards/accuracies": (r_w > r_l).to(policy.dtype),
        f"{prefix}logps/chosen": policy[0::2],
        f"{prefix}logps/rejected": policy[1::2],
        f"{prefix}dpo_likelihood": F.logsigmoid(r_w - r_l),
    }


@dataclass(frozen=True)
class SFTObjective:
    """Mean negative log-likelihood per completion token of the batch (prompt tokens never count)."""

    final_layer: int

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.final_layer,)

    def __call__(self, policy: LayerLogprobs, reference_logps: torch.Tensor | None = None):
        sums = policy[self.final_layer]
        tokens = policy.num_tokens.to(sums.dtype)
        loss = -sums.sum() / tokens.sum().clamp(min=1)
        return loss, {SFT_METRICS[0]: (sums / tokens.clamp(min=1)).detach()}
