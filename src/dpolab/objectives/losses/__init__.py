"""Preference losses as pure functions of per-pair log-probabilities.

A loss that compares the policy with a reference takes four tensors of shape `(batch,)`:

    policy_chosen_logps      log π_θ(y_w | x)
    policy_rejected_logps    log π_θ(y_l | x)
    reference_chosen_logps   log π_ref(y_w | x)
    reference_rejected_logps log π_ref(y_l | x)

summed over each completion's tokens (or averaged, where its `LossSpec` in
`dpolab.objectives.registry` says so); a reference-free loss takes the first two only. Each
returns a `LossOutput`: the per-pair losses, the implicit rewards of the chosen and rejected
completions (detached: they are metrics, not part of the objective), and any further per-pair
metrics the loss defines. The batch loss is the mean of the losses. Hyper-parameters are
keyword-only and named as their `loss.` config keys.

Notation (docs/notes.md): Δ_w = log π_θ(y_w|x) − log π_ref(y_w|x), Δ_l likewise; with an
f-divergence (f-DPO), the scores s_w = f'(π_θ/π_ref)(y_w) and s_l stand where Δ_w and Δ_l stood.

    base.py            LossOutput, log-ratios, rewards, the f-divergence scores
    margin.py          functions of the margin s_w − s_l: DPO (cDPO), IPO, DPOP, hinge, robust,
                       EXO, DiscoPOP, length-normalised DPO
    anchored.py        functions of Δ_w and Δ_l apart: NCA, BCO, SPPO, APO, and AOT (batch-sorted)
    reference_free.py  SimPO, CPO, ORPO and the NLL term (`sft`): no reference at all
    layers.py          Intermediate DPO's mix of the final and the intermediate layers' losses
"""

from dpolab.objectives.losses.anchored import (
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    nca_pair_loss,
    sppo_hard_loss,
)
from dpolab.objectives.losses.base import F_DIVERGENCES, LossOutput, divergence_scores
from dpolab.objectives.losses.layers import mix_layer_losses
from dpolab.objectives.losses.margin import (
    discopop_loss,
    dpo_loss,
    dpop_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sigmoid_norm_loss,
)
from dpolab.objectives.losses.reference_free import cpo_loss, orpo_loss, sft_loss, simpo_loss

__all__ = [
    "F_DIVERGENCES",
    "LossOutput",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "cpo_loss",
    "discopop_loss",
    "divergence_scores",
    "dpo_loss",
    "dpop_loss",
    "exo_pair_loss",
    "hinge_loss",
    "ipo_loss",
    "mix_layer_losses",
    "nca_pair_loss",
    "orpo_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_norm_loss",
    "simpo_loss",
    "sppo_hard_loss",
]
