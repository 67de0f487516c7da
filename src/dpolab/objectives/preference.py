"""The preference objective: the configured loss (one method, or a weighted sum of several) at the
final layer and at each intermediate layer, mixed as Intermediate DPO does (Kojima 2024, Eq. 3),
with TRL-named per-pair metrics.

A plain callable of log-probs, independent of the Trainer, so the tests call it on hand-made
tensors. Sequences are ordered chosen 0, rejected 0, chosen 1, ... (`dpolab.modeling.collate`).

    __call__(policy, reference_logps)
    ├── sequence_logps()        the sums, or LD-DPO's (loss.ld_alpha)
    ├── wpo_weights()           WPO's pair weights (loss.use_weighting)
    └── per layer
        ├── chosen_nll()        for the methods with an NLL term (sft, cpo, orpo)
        ├── spec.compute()      each method, weighted (loss.weights), times the WPO weights
        └── pair_metrics()      rewards and log-probs of the first method, each method's own metrics
    mix_layer_losses()          γ·L_final + (1 − γ)·mean_k L_k
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
from dpolab.objectives.registry import LossSpec, get_loss_specs, method_weights
from dpolab.objectives.sequences import chosen_nll, sequence_logps, wpo_weights


@dataclass(frozen=True)
class LossTerm:
    """One method of the loss: its spec, its weight in the sum, its keys' values."""

    spec: LossSpec
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferenceObjective:
    terms: tuple[LossTerm, ...]  # the methods; rewards and log-probs are logged from the first
    final_layer: int  # L
    intermediate_layers: tuple[int, ...] = ()
    gamma: float = 0.9
    final_norm: bool = True  # intermediate layers through the model's final norm (the logit lens)
    ld_alpha: float | None = None  # LD-DPO: the weight of the tokens past a pair's shared length
    use_weighting: bool = False  # WPO: each pair's loss weighed by the policy's probability of it

    @classmethod
    def from_config(cls, loss: LossSection, final_layer: int) -> PreferenceObjective:
        specs = get_loss_specs(loss.method)
        return cls(
            terms=tuple(
                LossTerm(spec, weight, spec.params(loss)) for spec, weight in zip(specs, method_weights(loss))
            ),
            final_layer=final_layer,
            intermediate_layers=tuple(loss.intermediate.layers),
            gamma=loss.intermediate.gamma,
            final_norm=loss.intermediate.final_norm,
            ld_alpha=loss.ld_alpha,
            use_weighting=loss.use_weighting,
        )

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer whose log-probs the objective needs, the final one last."""
        return (*self.intermediate_layers, self.final_layer)

    @property
    def needs_reference(self) -> bool:
        return any(term.spec.needs_reference for term in self.terms)

    @property
    def scores_prompt(self) -> bool:
        """Whether the policy's prompt tokens are scored too (ORPO's NLL of the whole sequence)."""
        return any(term.spec.nll == "sequence" for term in self.terms)

    def metric_names(self) -> tuple[str, ...]:
        """The names of the metrics `__call__` returns (the Trainer logs each at evaluation as
        `eval_<name>`, beside `eval_loss`)."""
        own = dict.fromkeys(name for term in self.terms for name in term.spec.metrics)
        per_layer = (*PAIR_METRICS, *own)
        names = [*per_layer, "loss/final"]
        for layer in self.intermediate_layers:
            names += [f"layers/{layer}/{name}" for name in (*per_layer, "loss")]
        if self.intermediate_layers:
            names.append("loss/intermediate")
        return tuple(names)

    def _layer_nll(self, policy: LayerLogprobs, i: int) -> dict[str | None, torch.Tensor | None]:
        kinds = {term.spec.nll for term in self.terms}
        nll: dict[str | None, torch.Tensor | None] = {None: None}
        if "completion" in kinds:
            nll["completion"] = chosen_nll(policy.logps[i], policy.num_tokens)
        if "sequence" in kinds:
            if policy.prompt_logps is None:
                raise ValueError("this loss scores the prompts' tokens: layer_logprobs(prompt_targets=...)")
            nll["sequence"] = chosen_nll(
                policy.logps[i], policy.num_tokens, policy.prompt_logps[i], policy.prompt_num_tokens
            )
        return nll

    def __call__(self, policy: LayerLogprobs, reference_logps: torch.Tensor | None) -> ObjectiveOutput:
        """Loss of one batch.

        Args:
            policy: the policy's log-probs, `logps` `(len(layers), 2B)` (with per-token log-probs
                for LD-DPO and WPO, and the prompts' for ORPO).
            reference_logps: the reference's log-probs, same shape and order, reduced as the
                policy's are (LD-DPO's sums with `ld_alpha`); None when no method needs a reference.
        Returns:
            the mean loss, the `(B,)` per-pair losses and `(B,)` per-pair metrics.
        """
        logps = sequence_logps(policy, self.ld_alpha)
        if reference_logps is not None:
            reference_logps = reference_logps.to(logps.device, logps.dtype)
        elif self.needs_reference:
            raise ValueError("this loss compares with a reference: give its log-probs")
        if self.use_weighting:
            if policy.log_sum_sq is None:
                raise ValueError("loss.use_weighting needs layer_logprobs(log_sum_sq=True)")
            pair_weights = wpo_weights(
                policy.token_logps, policy.log_sum_sq, policy.segments, logps.shape[-1]
            )
        lengths = {"chosen_lengths": policy.num_tokens[0::2], "rejected_lengths": policy.num_tokens[1::2]}
        metrics: Metrics = {}
        per_layer_losses = {}
        for i, layer in enumerate(policy.layers):
            pol = logps[i]
            ref = reference_logps[i] if reference_logps is not None else None
            nll = self._layer_nll(policy, i)
            prefix = layer_prefix(layer, self.final_layer)
            losses = None
            for j, term in enumerate(self.terms):
                out = term.spec.compute(
                    pol[0::2],
                    pol[1::2],
                    ref[0::2] if ref is not None else None,
                    ref[1::2] if ref is not None else None,
                    **lengths,
                    params=term.params,
                    chosen_nll=nll[term.spec.nll],
                )
                losses = term.weight * out.losses if losses is None else losses + term.weight * out.losses
                if j == 0:  # the log-probs as the first method takes them (summed, LD-weighted or averaged)
                    chosen = term.spec.given(pol[0::2], lengths["chosen_lengths"])
                    rejected = term.spec.given(pol[1::2], lengths["rejected_lengths"])
                    metrics.update(
                        pair_metrics(
                            out.chosen_rewards, out.rejected_rewards, chosen, rejected, prefix=prefix
                        )
                    )
                metrics.update({f"{prefix}{name}": value for name, value in out.metrics.items()})
            if self.use_weighting:
                losses = losses * pair_weights[i]
            per_layer_losses[layer] = losses
            metrics[f"{prefix}loss" if prefix else "loss/final"] = losses.detach()
        intermediate = [per_layer_losses[k] for k in self.intermediate_layers]
        per_pair = mix_layer_losses(per_layer_losses[self.final_layer], intermediate, gamma=self.gamma)
        if intermediate:
            metrics["loss/intermediate"] = torch.stack(intermediate).mean(0).detach()
        return ObjectiveOutput(per_pair.mean(), per_pair.detach(), None, metrics)
