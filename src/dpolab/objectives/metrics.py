"""Per-pair metrics under the names TRL logs (docs/notes.md), and which of them improve downwards.

The final layer's are unprefixed, an intermediate layer k's sit under `layers/<k>/`. Every
metric is a per-pair (or per-sequence) tensor, so that any number of batches and processes can
be averaged exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch."""

    loss: torch.Tensor  # the scalar to minimise
    item_losses: torch.Tensor  # (items,) each pair's (or sequence's) loss, detached
    # (items,) the weight of each item in the mean loss over many batches (None: equal weights):
    # SFT's loss is a mean over tokens, so a sequence weighs its token count
    item_weights: torch.Tensor | None
    metrics: Metrics  # name -> (items,) per-item values, averaged with equal weights


def with_aux_loss(out: ObjectiveOutput, aux_loss: torch.Tensor, coef: float) -> ObjectiveOutput:
    """The objective plus a mixture-of-experts router's load-balancing loss, `loss + coef·aux_loss`
    (as TRL's DPOTrainer adds it), with `aux_loss` logged as a metric (the batch's value for each
    item) and added to each item's loss (so the eval loss carries it as the train loss does)."""
    extra = coef * aux_loss
    items = out.item_losses.shape[0]
    metrics = {**out.metrics, "aux_loss": aux_loss.detach().float().expand(items)}
    return ObjectiveOutput(
        loss=out.loss + extra,
        item_losses=out.item_losses + extra.detach(),
        item_weights=out.item_weights,
        metrics=metrics,
    )


PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "dpo_likelihood",
)


def pair_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    prefix: str = "",
) -> Metrics:
    """TRL-named metrics of one layer, each `(B,)`, from the loss's rewards and the policy's summed
    log-probs: rewards/chosen and /rejected as given, rewards/margins their difference,
    rewards/accuracies = [r_w > r_l] (strict), logps/* the log-probs, and dpo_likelihood =
    log σ(r_w − r_l) (the layer-wise curve of the Intermediate DPO paper, Fig. 3)."""
    r_w, r_l = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        f"{prefix}rewards/chosen": r_w,
        f"{prefix}rewards/rejected": r_l,
        f"{prefix}rewards/margins": r_w - r_l,
        f"{prefix}rewards/accuracies": (r_w > r_l).to(r_w.dtype),
        f"{prefix}logps/chosen": chosen_logps.detach(),
        f"{prefix}logps/rejected": rejected_logps.detach(),
        f"{prefix}dpo_likelihood": F.logsigmoid(r_w - r_l),
    }


def layer_prefix(layer: int, final_layer: int) -> str:
    return "" if layer == final_layer else f"layers/{layer}/"


LOWER_IS_BETTER = ("dpop/penalty", "nll_loss")  # further metrics that improve downwards


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of a logged metric is the better one: the losses, DPOP's penalty, the NLL."""
    name = metric.split("/", 2)[-1] if metric.startswith("layers/") else metric
    return name == "loss" or name.startswith("loss/") or name.endswith("/loss") or name in LOWER_IS_BETTER
