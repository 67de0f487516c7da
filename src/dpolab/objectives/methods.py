"""dpolab's methods, one `register_loss` each: TRL 1.16 DPOTrainer's 15 loss types under TRL's
names (`dpo` is `sigmoid`), DPO-Positive, and the reference-free SimPO, CPO and ORPO. docs/methods.md
is the table of them for users."""

from __future__ import annotations

from dpolab.objectives import losses
from dpolab.objectives.registry import LossSpec, register_loss

F = ("f_divergence", "f_alpha")  # the keys of the losses an f-divergence generalises

register_loss(
    LossSpec(
        "dpo",
        losses.dpo_loss,
        keys=("beta", "label_smoothing", *F),
        aliases=("sigmoid",),
        summary="−log σ(β·(Δ_w − Δ_l)); with ε, cDPO; Rafailov et al. 2023, Eq. 7",
    )
)
register_loss(
    LossSpec(
        "ipo",
        losses.ipo_loss,
        keys=("beta", *F),
        needs_lengths=True,
        summary="(Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))²; Azar et al. 2023, Eq. 17",
    )
)
register_loss(
    LossSpec(
        "dpop",
        losses.dpop_loss,
        keys=("beta", "dpop_lambda"),
        metrics=("dpop/penalty",),
        summary="−log σ(β·(Δ_w − Δ_l − λ·max(0, −Δ_w))); Pal et al. 2024 (Smaug), Eq. 3",
    )
)
register_loss(
    LossSpec(
        "hinge",
        losses.hinge_loss,
        keys=("beta", *F),
        summary="max(0, 1 − β·(Δ_w − Δ_l)); SLiC (Zhao et al. 2023) / RSO (Liu et al. 2023)",
    )
)
register_loss(
    LossSpec(
        "robust",
        losses.robust_loss,
        keys=("beta", "label_smoothing", *F),
        summary="((1−ε)·L(z) − ε·L(−z))/(1 − 2ε), L = −log σ; Chowdhury et al. 2024 (rDPO)",
    )
)
register_loss(
    LossSpec(
        "exo_pair",
        losses.exo_pair_loss,
        keys=("beta", "label_smoothing", *F),
        summary="KL((σ(z), σ(−z)) ‖ (1−ε, ε)); Ji et al. 2024 (EXO), Eq. 16",
    )
)
register_loss(
    LossSpec(
        "discopop",
        losses.discopop_loss,
        keys=("beta", "discopop_tau", *F),
        summary="(1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·e^(−z); Lu et al. 2024 (DiscoPOP), Eq. 5",
    )
)
register_loss(
    LossSpec(
        "sigmoid_norm",
        losses.sigmoid_norm_loss,
        keys=("beta", *F),
        needs_lengths=True,
        summary="−log σ(β·(Δ_w/|y_w| − Δ_l/|y_l|)); length-normalised DPO (Tülu 3, Lambert et al. 2024)",
    )
)
register_loss(
    LossSpec(
        "nca_pair",
        losses.nca_pair_loss,
        summary="−log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l); Chen et al. 2024 (NCA)",
    )
)
register_loss(
    LossSpec(
        "bco_pair",
        losses.bco_pair_loss,
        summary="−log σ(r_w) − log σ(−r_l); Jung et al. 2024 (BCO)",
    )
)
register_loss(
    LossSpec(
        "sppo_hard",
        losses.sppo_hard_loss,
        summary="(Δ_w − 1/(2β))² + (Δ_l + 1/(2β))²; Wu et al. 2024 (SPPO), Eq. 4.7",
    )
)
register_loss(
    LossSpec(
        "aot",
        losses.aot_loss,
        keys=("beta", "label_smoothing"),
        sorts_batch=True,
        summary="−log σ(β·(sort(ρ_θ) − sort(ρ_ref))), ρ = log π(y_w) − log π(y_l); Melnyk et al. 2024 (AOT)",
    )
)
register_loss(
    LossSpec(
        "aot_unpaired",
        losses.aot_unpaired_loss,
        keys=("beta", "label_smoothing"),
        sorts_batch=True,
        summary="−log σ(β·(sort(Δ_w) − sort(Δ_l))); Melnyk et al. 2024 (AOT)",
    )
)
register_loss(
    LossSpec(
        "apo_zero",
        losses.apo_zero_loss,
        summary="1 − σ(β·Δ_w) + σ(β·Δ_l); D'Oosterlinck et al. 2024 (APO), Eq. 7",
    )
)
register_loss(
    LossSpec(
        "apo_down",
        losses.apo_down_loss,
        summary="σ(β·Δ_w) + 1 − σ(β·(Δ_w − Δ_l)); D'Oosterlinck et al. 2024 (APO), Eq. 8",
    )
)
register_loss(
    LossSpec(
        "sft",
        losses.sft_loss,
        keys=(),
        needs_reference=False,
        nll="completion",
        summary="the mean NLL per chosen token (TRL's sft loss type)",
    )
)
register_loss(
    LossSpec(
        "simpo",
        losses.simpo_loss,
        keys=("beta", "simpo_gamma", "label_smoothing"),
        needs_reference=False,
        length_averaged=True,
        summary="−log σ(β·ā_w − β·ā_l − γ), ā per-token averages; Meng et al. 2024 (SimPO), Eq. 6",
    )
)
register_loss(
    LossSpec(
        "cpo",
        losses.cpo_loss,
        keys=("beta", "cpo_alpha", "label_smoothing"),
        needs_reference=False,
        nll="completion",
        metrics=("nll_loss",),
        summary="−log σ(β·(log π(y_w) − log π(y_l))) + α·NLL(y_w); Xu et al. 2024 (CPO), Eq. 3",
    )
)
register_loss(
    LossSpec(
        "orpo",
        losses.orpo_loss,
        keys=("beta",),
        needs_reference=False,
        length_averaged=True,
        nll="sequence",
        metrics=("log_odds_ratio", "log_odds_chosen", "nll_loss"),
        summary="NLL(x, y_w) − λ·log σ(log odds(y_w) − log odds(y_l)); Hong et al. 2024 (ORPO), Eqs. 6–7",
    )
)
