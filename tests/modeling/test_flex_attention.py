"""FlexAttention for packed rows (`model.attn_implementation: flex_attention`): the `BlockMask`
built from the segment ids is the additive mask sdpa gets, block by block; FlexAttention's own
autograd gives sdpa's values and gradients under it; a model under flex_attention scores packed
rows as under sdpa; and where it cannot train, one line says why.

torch's `flex_attention` refuses a backward on a CPU (its inputs may not require grad there), so
the gradients are compared through its higher-order op, the one its GPU kernel is generated from.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from dpolab.modeling.attention import segment_attention_mask, segment_block_mask
from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.layout import choose_attention, flex_attention_problem, row_layout
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.testing import tiny_config, tiny_model


def _packed_batch(shapes, budget, vocab=64, seed=0):
    rng = random.Random(seed)
    draw = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    pairs = [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)} for p, c, r in shapes]
    return PairCollator(pad_token_id=0, pack_tokens=budget)(pairs)


@pytest.mark.parametrize("window", [None, 40])
def test_block_mask_holds_the_blocks_of_the_dense_mask(window):
    """Rows of 300 tokens (3 × 3 blocks of 128): a block is in the BlockMask exactly when some cell
    of it is allowed in sdpa's mask; the block where the second of two 150-token pairs would see
    the first is skipped."""
    batch = _packed_batch([(60, 50, 40), (50, 50, 50), (90, 90, 100), (5, 5, 5)], budget=300)
    seg, pos = batch["segment_ids"], batch["position_ids"]
    assert seg.shape == (2, 300)
    block_mask = segment_block_mask(seg, position_ids=pos, window=window)
    allowed = segment_attention_mask(seg, torch.float32, position_ids=pos, window=window)[:, 0] == 0
    size = 128
    blocks = -(-seg.shape[1] // size)
    padded = F.pad(allowed, (0, blocks * size - seg.shape[1], 0, blocks * size - seg.shape[1]))
    expected = padded.reshape(len(seg), blocks, size, blocks, size).any(4).any(2)
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), expected)
    two_pairs = int((seg[:, -1] > 3).nonzero())  # the row whose last pair is its second
    assert not expected[two_pairs, 2, 0]  # fewer blocks than a causal mask keeps


def test_flex_attention_gives_sdpa_values_and_gradients():
    """Several pairs a row, a sliding window, grouped-query heads: FlexAttention under dpolab's
    BlockMask and sdpa under its additive mask agree in values and in the gradients of q, k, v."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_op

    batch = _packed_batch([(3, 2, 4), (5, 1, 1), (4, 6, 6), (1, 3, 2), (2, 5, 3)], budget=20)
    seg, pos = batch["segment_ids"], batch["position_ids"]
    width = seg.shape[1]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(len(seg), heads, width, 8, generator=gen) for heads in (4, 2, 2))
    for window in (None, 3):
        block_mask = segment_block_mask(seg, position_ids=pos, window=window)
        mask = segment_attention_mask(seg, torch.float32, position_ids=pos, window=window)
        grads = []
        for use_flex in (True, False):
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            if use_flex:
                out, *_ = flex_attention_op(
                    *inputs,
                    lambda score, b, h, q_idx, kv_idx: score,
                    block_mask.as_tuple(),
                    8**-0.5,
                    {"OUTPUT_LOGSUMEXP": True, "OUTPUT_MAX": False},
                    (),
                    (),
                )
            else:
                out = F.scaled_dot_product_attention(*inputs, attn_mask=mask, enable_gqa=True)
            weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
            (out * weights).sum().backward()
            grads.append((out.detach(), *(t.grad for t in inputs)))
        for flex, sdpa in zip(*grads):
            torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-6)


def test_where_flex_attention_cannot_train():
    config = tiny_config("llama")
    assert "no backward on a CPU" in flex_attention_problem(config, "cpu")
    assert flex_attention_problem(config, "cuda") is None
    assert flex_attention_problem(tiny_config("gpt2"), "cuda").startswith("transformers 5.")
    assert "has no FlexAttention for GPT2LMHeadModel: use sdpa" in flex_attention_problem(
        tiny_config("gpt2"), "cuda"
    )
    dropped = tiny_config("llama", attention_dropout=0.1)
    assert flex_attention_problem(dropped, "cuda") == (
        "transformers' flex_attention takes no attention dropout (attention_dropout 0.1): use sdpa"
    )


@pytest.mark.slow
def test_a_model_under_flex_attention_scores_packed_rows_as_under_sdpa():
    """Tiny Llama loaded with flex_attention: the layout check (a synthetic pair against the model's
    own forward under flex_attention) keeps one row per pair, its forward gets a BlockMask, and
    five pairs packed in one row give sdpa's log-probs at the final and an intermediate layer.
    torch compiles FlexAttention on its first call (about 15–40 s on a CPU with a cold inductor
    cache). One row: torch 2.13's FlexAttention compiled for a CPU does not build once both the
    batch size and the width have changed (dpolab trains under flex_attention on a GPU only)."""
    kwargs = {"vocab_size": 64, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "initializer_range": 0.3}
    flex = tiny_model("llama", attn_implementation="flex_attention", **kwargs)
    sdpa = tiny_model("llama", attn_implementation="sdpa", **kwargs)
    layout = choose_attention(flex, "flex_attention")
    assert layout.packed and layout.attention == "flex_attention", layout.reason
    batch = _packed_batch([(3, 2, 4), (5, 1, 1), (4, 6, 6), (6, 7, 8), (1, 3, 2)], budget=64)
    assert batch["input_ids"].shape == (1, 59)  # every pair in one row
    assert isinstance(row_layout(flex).model_inputs(batch, torch.float32)["attention_mask"], BlockMask)
    with torch.no_grad():
        got = layer_logprobs(flex, batch, [1, 2], targets=batch_targets(batch))
        expected = layer_logprobs(sdpa, batch, [1, 2], targets=batch_targets(batch))
    torch.testing.assert_close(got.token_logps, expected.token_logps, rtol=1e-5, atol=1e-5)
