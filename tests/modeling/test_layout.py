"""The row layout of a model, decided in one place (`dpolab.modeling.layout`): what its forward
gets for each layout (masks per layer type with their sliding windows, positions), which models
take one row per pair, and the attention implementation `auto` picks."""

from __future__ import annotations

import pytest
import torch

from dpolab.modeling.anatomy import anatomy
from dpolab.modeling.attention import segment_attention_mask
from dpolab.modeling.collate import PairCollator
from dpolab.modeling.layout import RowLayout, choose_attention, row_layout
from dpolab.testing import tiny_model

PAIR = {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]}


def _tiny(family, **kwargs):
    return tiny_model(family, vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, **kwargs)


def test_sliding_window_counts_positions_not_columns():
    # prompt [a b c] at positions 0 1 2, chosen [d e] at 3 4, rejected [f] at 3 again
    seg = torch.tensor([[1, 1, 1, 2, 2, 3]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 3]])
    allowed = segment_attention_mask(seg, torch.float32, position_ids=pos, window=2)[0, 0] == 0
    assert allowed.long().tolist() == [
        # a  b  c  d  e  f
        [1, 0, 0, 0, 0, 0],  # a
        [1, 1, 0, 0, 0, 0],  # b
        [0, 1, 1, 0, 0, 0],  # c: b, itself (a is 2 positions back)
        [0, 0, 1, 1, 0, 0],  # d: c, itself
        [0, 0, 0, 1, 1, 0],  # e: d, itself
        [0, 0, 1, 0, 0, 1],  # f (position 3): c, itself — as in its own row, 5 columns away
    ]
    with pytest.raises(ValueError, match="needs the rows' position_ids"):
        segment_attention_mask(seg, torch.float32, window=2)


def test_model_inputs_per_layer_type():
    """Gemma 2 mixes full and sliding layers: one 4-D mask per layer type, by name; a window wider
    than the row is no window; Llama gets one mask."""
    gemma2 = row_layout(_tiny("gemma2", sliding_window=2))
    assert gemma2.windows == (("full_attention", None), ("sliding_attention", 2))
    batch = PairCollator(pad_token_id=0)([PAIR])
    inputs = gemma2.model_inputs(batch, torch.float32)
    masks = inputs["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert torch.equal(masks["full_attention"], segment_attention_mask(batch["segment_ids"], torch.float32))
    assert not torch.equal(masks["sliding_attention"], masks["full_attention"])
    assert torch.equal(inputs["position_ids"], batch["position_ids"])
    wide = row_layout(_tiny("gemma2", sliding_window=50)).model_inputs(batch, torch.float32)
    assert wide["attention_mask"]["sliding_attention"] is wide["attention_mask"]["full_attention"]
    llama = row_layout(_tiny("llama")).model_inputs(batch, torch.float32)
    assert llama["attention_mask"].shape == (1, 1, 6, 6)


def test_separate_rows_inputs_and_positions():
    apart = PairCollator(pad_token_id=0, packed=False)([PAIR])
    llama = row_layout(_tiny("llama")).model_inputs(apart, torch.float32)
    assert llama["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert llama["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 3]]
    bloom = row_layout(_tiny("bloom"))
    assert "position_ids" not in bloom.model_inputs(apart, torch.float32)  # its forward takes none
    packed = PairCollator(pad_token_id=0)([PAIR])
    with pytest.raises(ValueError, match=r"BloomForCausalLM cannot take packed pair rows .* PairCollator"):
        bloom.model_inputs(packed, torch.float32)


def test_a_model_that_counts_positions_its_own_way_keeps_them():
    """RoBERTa counts positions from padding_idx + 1: its pairs go in separate rows and dpolab
    passes no position ids, so that the model's own apply."""
    layout = row_layout(_tiny("roberta", is_decoder=True))
    assert not layout.packed and not layout.position_ids
    assert "differ from its own forward's" in layout.reason and "its own positions" in layout.reason


def test_auto_attention_moves_to_one_that_takes_the_mask():
    """A model loaded with an attention that takes no 4-D mask (here flash attention, which this
    machine cannot even run) is moved to sdpa by `auto`, and left alone when asked for it."""
    model = _tiny("llama")
    anatomy(model)  # found under sdpa
    model.config._attn_implementation = "flash_attention_2"
    kept = choose_attention(model, "flash_attention_2")
    assert not kept.packed and kept.attention == "flash_attention_2"
    assert "flash_attention_2 attention takes no 4-D mask" in kept.reason
    chosen = choose_attention(model, "auto")
    assert chosen.packed and chosen.attention == "sdpa" and model.config._attn_implementation == "sdpa"
    assert row_layout(model) is chosen  # cached for this attention


def test_describe():
    layout = RowLayout("FooForCausalLM", False, "eager", "its forward takes no position_ids", False)
    assert layout.describe() == (
        "FooForCausalLM: attention eager; chosen and rejected in separate rows (its forward takes no position_ids)"
    )
