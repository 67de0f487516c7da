"""Mixture-of-experts routers: found from the model, their load-balancing loss taken in the same
forward as the log-probs, and equal to what TRL's DPOTrainer gets for the same pairs — the model's
own `aux_loss` on TRL's batch (every `prompt + chosen` row, then every `prompt + rejected` row,
right-padded, with their 2-D attention mask)."""

from __future__ import annotations

import pytest
import torch

from dpolab.errors import DpolabError
from dpolab.modeling.anatomy import anatomy
from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.layout import router_token_weights
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.modeling.router import aux_loss_coefficient
from dpolab.testing import FAMILY_SETTINGS, tiny_model

MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]
VOCAB = 64
PAIRS = [
    {"prompt_ids": [5, 17, 33, 40, 8], "chosen_ids": [3, 44, 9], "rejected_ids": [52, 6, 1, 19, 27, 33]},
    {"prompt_ids": [21, 20], "chosen_ids": [59, 1, 7, 7], "rejected_ids": [11]},
]


def _model(family, **settings):
    return tiny_model(
        family, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.3, **settings
    )


def _trl_batch():
    """TRL's rows: chosen rows then rejected rows, right-padded, and their attention mask."""
    rows = [p["prompt_ids"] + p["chosen_ids"] for p in PAIRS] + [
        p["prompt_ids"] + p["rejected_ids"] for p in PAIRS
    ]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_router_token_weights_literal():
    # prompt [a b], chosen [c], rejected [d e], padding: a prompt token is in both of TRL's rows
    packed = {"segment_ids": torch.tensor([[1, 1, 2, 3, 3, 0], [4, 5, 6, 0, 0, 0]])}
    assert router_token_weights(packed).tolist() == [[2, 2, 1, 1, 1, 0], [2, 1, 1, 0, 0, 0]]
    apart = {"attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    assert router_token_weights(apart).tolist() == [[1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("family", MOE)
def test_aux_loss_equals_the_models_own_on_trls_batch(family):
    model = _model(family, **FAMILY_SETTINGS[family])
    parts = anatomy(model)
    assert parts.router is not None and parts.router.num_experts == 4 and parts.router.top_k == 2
    ids, mask = _trl_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, output_router_logits=True).aux_loss
    for packed in (True, False):
        batch = PairCollator(pad_token_id=0, packed=packed)(PAIRS)
        out = layer_logprobs(model, batch, targets=batch_targets(batch), router_aux=True)
        torch.testing.assert_close(out.aux_loss, expected, rtol=1e-5, atol=1e-6)
    # it trains the routers
    out = layer_logprobs(model, batch, targets=batch_targets(batch), router_aux=True)
    router = next(m for m in model.modules() if isinstance(m, parts.router.target))
    (grad,) = torch.autograd.grad(out.aux_loss, [router.weight])
    assert grad.abs().max() > 0


def test_aux_loss_coefficient_as_trl_takes_it():
    moe = anatomy(_model("mixtral", router_aux_loss_coef=0.02))
    assert aux_loss_coefficient(moe, None) == pytest.approx(0.02)  # the model config's
    assert aux_loss_coefficient(moe, 0.5) == 0.5
    assert aux_loss_coefficient(moe, 0.0) == 0.0  # turned off
    dense = anatomy(_model("llama"))
    assert aux_loss_coefficient(dense, None) == 0.0
    with pytest.raises(
        DpolabError, match=r"router_aux_loss_coef is 0\.1, but LlamaForCausalLM is not a mixture-of-experts"
    ):
        aux_loss_coefficient(dense, 0.1)
    batch = PairCollator(pad_token_id=0)(PAIRS)
    with pytest.raises(ValueError, match="LlamaForCausalLM has no mixture-of-experts router"):
        layer_logprobs(dense.causal_lm, batch, targets=batch_targets(batch), router_aux=True)
