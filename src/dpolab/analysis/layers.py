"""The DPO likelihood of every layer (Intermediate DPO paper, §4.3 and Fig. 3).

For layer k, the pair's log-probs are computed from layer k's hidden states through the final
norm (on by default) and the shared output head, for the policy AND for the reference, and

    DPO likelihood(k) = mean over pairs of log σ(β·(Δ_w^k − Δ_l^k)),   Δ^k = logp_θ^k − logp_ref^k.

At the final layer it is −(the DPO loss), the training metric. The reward accuracy and margin of
each layer (what training logs under `layers/<k>/...`) come with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dpolab.analysis.pairs import PairLike, pair_logprobs
from dpolab.errors import DpolabError
from dpolab.evaluation.results import format_table, result_header
from dpolab.modeling.anatomy import anatomy


def layer_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Per-layer metrics from `(layers, pairs)` log-probs.

    Returns:
        `dpo_likelihood`, `rewards/accuracies`, `rewards/margins`, each `(layers,)`.
    """
    delta_w = policy_chosen - reference_chosen
    delta_l = policy_rejected - reference_rejected
    # Intermediate DPO §4.3: log σ(β log π_θ(y_w|x)/π_ref(y_w|x) − β log π_θ(y_l|x)/π_ref(y_l|x)), averaged
    likelihood = F.logsigmoid(beta * (delta_w - delta_l)).mean(dim=1)
    margins = beta * (delta_w - delta_l)
    return {
        "dpo_likelihood": likelihood,
        "rewards/accuracies": (margins > 0).float().mean(dim=1),
        "rewards/margins": margins.mean(dim=1),
    }


def analyze_layers(
    models: Mapping[str, Any],
    reference,
    pairs: Sequence[PairLike],
    *,
    beta: float,
    layers: Sequence[int] | None = None,
    final_norm: bool = True,
    batch_size: int = 8,
    pad_token_id: int = 0,
    reference_name: str = "reference",
    pairs_source: str | None = None,
) -> dict[str, Any]:
    """DPO likelihood, reward accuracy and margin at each layer of each model against `reference`.

    Args:
        models: name -> causal LM (the same architecture as the reference).
        reference: the reference model (typically the SFT model).
        pairs: tokenised pairs (`TokenizedPair` or dicts with prompt_ids/chosen_ids/rejected_ids).
        beta: β of the DPO likelihood.
        layers: layer numbers 1..L (default: all).
    Returns:
        The result dict (kind `layers`): `layers`, and per model the lists `dpo_likelihood`,
        `rewards/accuracies`, `rewards/margins`, one value per layer.
    """
    if beta <= 0:
        raise DpolabError(f"beta must be > 0, not {beta}")
    if not pairs:
        raise DpolabError("no pairs to analyse")
    num_layers = anatomy(reference).num_layers
    for name, model in models.items():
        if anatomy(model).num_layers != num_layers:
            raise DpolabError(
                f"model {name!r} has {anatomy(model).num_layers} layers but the reference has {num_layers}; "
                f"the layer analysis compares the same architecture"
            )
    layers = list(layers) if layers is not None else list(range(1, num_layers + 1))
    options = dict(layers=layers, final_norm=final_norm, batch_size=batch_size, pad_token_id=pad_token_id)
    ref_chosen, ref_rejected = pair_logprobs(reference, pairs, **options)
    per_model = {}
    for name, model in models.items():
        chosen, rejected = pair_logprobs(model, pairs, **options)
        metrics = layer_metrics(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
        per_model[name] = {k: v.tolist() for k, v in metrics.items()}
    result = result_header("layers")
    result.update(
        {
            "pairs": pairs_source,
            "n_pairs": len(pairs),
            "beta": beta,
            "final_norm": final_norm,
            "reference": reference_name,
            "num_layers": num_layers,
            "layers": layers,
            "models": per_model,
        }
    )
    return result


def layers_table(result: Mapping[str, Any]) -> str:
    names = list(result["models"])
    rows = [
        [k, *(result["models"][n]["dpo_likelihood"][i] for n in names)]
        for i, k in enumerate(result["layers"])
    ]
    return format_table(["layer", *names], rows) + (
        f"\nDPO likelihood (mean log σ(β(Δ_w − Δ_l)), β = {result['beta']}) per layer, {result['n_pairs']} pairs; "
        f"log 1/2 = −0.6931 where a model equals the reference"
    )
