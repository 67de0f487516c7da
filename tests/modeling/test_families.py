"""The 23 families of issue 15, each with the settings under which its specialities matter
(`dpolab.testing.FAMILY_SETTINGS`: Gemma 2/3's softcap, Cohere's and Granite's logit scales, a
sliding window shorter than the rows, OPT's project_out, MoE routers): dpolab's final-layer
log-probs equal the model's own `forward().logits` (written out here), in the row layout dpolab
chooses and in separate rows, under each of sdpa and eager the family offers; layer 1 equals the
naive logit lens (the model's own forward with the later blocks bypassed); gradients match
autograd through the model's own forward."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from dpolab.modeling.anatomy import anatomy
from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.layout import row_layout
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.testing import FAMILIES, FAMILY_SETTINGS, blocks_bypassed, tiny_model

VOCAB = 96
# rows of 9 + 7, 9 + 3, 4 + 2 and 4 + 12 tokens: longer than the sliding windows (5) of the settings
PAIRS = [
    {
        "prompt_ids": [5, 17, 33, 40, 8, 61, 12, 90, 27],
        "chosen_ids": [3, 44, 70, 9, 15, 81, 1],
        "rejected_ids": [52, 6, 1],
    },
    {
        "prompt_ids": [71, 20, 38, 14],
        "chosen_ids": [59, 1],
        "rejected_ids": [11, 85, 23, 47, 30, 66, 7, 92, 18, 35, 50, 1],
    },
]


def _supports(family: str, attention: str) -> bool:
    from transformers import AutoConfig, AutoModelForCausalLM

    cls = AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(family))]
    return attention == "eager" or bool(getattr(cls, "_supports_sdpa", False))


CASES = [(f, a) for f in FAMILIES for a in ("sdpa", "eager") if _supports(f, a)]


@functools.cache
def _model(family: str, attention: str | None = None) -> nn.Module:
    """Shared across tests (gradients are taken with `torch.autograd.grad`, never `.backward`);
    weights with std 0.3 so that the log-probs are far from uniform."""
    return tiny_model(
        family,
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        initializer_range=0.3,
        seed=1,
        attn_implementation=attention,
        **FAMILY_SETTINGS[family],
    )


def _own(model: nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The completion's per-token log-probs from the model's own forward on prompt + completion."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float(), -1)[0]
    return torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


def _own_all(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [_own(model, p["prompt_ids"], p[k]) for p in PAIRS for k in ("chosen_ids", "rejected_ids")]
    )


def _ours(model: nn.Module, packed: bool, layers=None) -> torch.Tensor:
    batch = PairCollator(pad_token_id=0, packed=packed)(PAIRS)
    return layer_logprobs(model, batch, layers, targets=batch_targets(batch), chunk_tokens=5).token_logps


@pytest.mark.parametrize("family, attention", CASES)
def test_final_layer_equals_the_models_own_forward(family, attention):
    model = _model(family, attention)
    layout = row_layout(model)
    assert layout.attention == attention
    with torch.no_grad():
        expected = _own_all(model)
        for packed in {layout.packed, False}:
            torch.testing.assert_close(_ours(model, packed)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_fit_one_row_except_where_the_model_cannot_take_it(family):
    layout = row_layout(_model(family))
    if family == "bloom":  # ALiBi from the attention mask: no position_ids in its forward
        assert not layout.packed and "takes no position_ids" in layout.reason and not layout.position_ids
    else:
        assert layout.packed, layout.reason


def test_alibi_falcon_falls_back_to_separate_rows_and_stays_exact():
    model = tiny_model(
        "falcon",
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        alibi=True,
        initializer_range=0.3,
    )
    layout = row_layout(model)
    assert not layout.packed and "ALiBi" in layout.reason
    with torch.no_grad():
        torch.testing.assert_close(_ours(model, False)[0], _own_all(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediate_layer_is_the_naive_logit_lens(family):
    """Layer 1 through dpolab's final modules, head and logit transform equals the model's own
    forward with block 2 bypassed; and it is not the final layer."""
    model = _model(family)
    assert anatomy(model).lens_problem is None
    packed = row_layout(model).packed
    with torch.no_grad():
        ours = _ours(model, packed, layers=[1, 2])
        with blocks_bypassed(model, 1):
            lens = _own_all(model)
    torch.testing.assert_close(ours[0], lens, rtol=1e-5, atol=1e-5)
    assert (ours[0] - ours[1]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["gemma2", "cohere", "granite", "opt", "bloom", "mixtral", "phi"])
def test_gradients_equal_autograd_through_the_models_own_forward(family):
    model = _model(family)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(0.5, 1.5, sum(len(p[k]) for p in PAIRS for k in ("chosen_ids", "rejected_ids")))
    ours = torch.autograd.grad(
        (_ours(model, row_layout(model).packed)[0] * weights).sum(), params, allow_unused=True
    )
    theirs = torch.autograd.grad((_own_all(model) * weights).sum(), params, allow_unused=True)
    compared = 0
    for g, r in zip(ours, theirs):
        if r is None or g is None:
            assert (r if g is None else g) is None or not (r if g is None else g).any()
            continue
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 + 2e-6 * r.abs().max().item())
        compared += 1
    assert compared > 0
