"""The self-check a run makes on its first training pairs: dpolab's log-probs through the run's
collator against the model's own forward. Models that misbehave only on rows longer than the
probe's and the synthetic pair's (12 tokens) stand for what only real data reveals."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaForCausalLM

from dpolab.errors import DpolabError
from dpolab.modeling.collate import PairCollator, SequenceCollator
from dpolab.modeling.layout import row_layout
from dpolab.modeling.selfcheck import self_check
from dpolab.testing import tiny_config, tiny_model

EXAMPLES = [
    {
        "prompt_ids": [5, 6, 7, 8, 9, 10, 11, 12],
        "chosen_ids": [13, 14, 15, 16, 17, 1],
        "rejected_ids": [18, 19, 1],
    },
    {
        "prompt_ids": [20, 21, 22],
        "chosen_ids": [23, 1],
        "rejected_ids": [24, 25, 26, 27, 28, 29, 30, 31, 32, 1],
    },
    {"prompt_ids": [40], "chosen_ids": [41], "rejected_ids": [42]},  # beyond the two checked
]


class LongRowsIgnorePositions(LlamaForCausalLM):
    """Drops the position ids it is given on rows of more than 12 tokens."""

    def forward(self, input_ids=None, position_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[1] > 12:
            position_ids = None
        return super().forward(input_ids=input_ids, position_ids=position_ids, **kwargs)


class LongRowsDoubleLogits(LlamaForCausalLM):
    """Doubles its logits on rows of more than 12 tokens."""

    def forward(self, input_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, **kwargs)
        if input_ids is not None and input_ids.shape[1] > 12:
            out.logits = out.logits * 2
        return out


def _custom(cls):
    torch.manual_seed(0)
    config = tiny_config(
        "llama", vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, initializer_range=0.3
    )
    return cls(config).eval()


def test_a_model_that_agrees_keeps_its_collator(caplog):
    model = tiny_model(
        "llama", vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, initializer_range=0.3
    )
    collator = PairCollator(pad_token_id=0)
    with caplog.at_level(logging.INFO, logger="dpolab"):
        assert self_check(model, EXAMPLES, collator) is collator
    assert "self-check: dpolab's log-probs equal LlamaForCausalLM.forward()'s" in caplog.text
    sft = SequenceCollator(pad_token_id=0)
    assert self_check(model, [{"prompt_ids": [5, 6], "completion_ids": [7, 8, 1]}], sft) is sft


def test_pair_rows_that_disagree_fall_back_to_separate_rows(caplog):
    model = _custom(LongRowsIgnorePositions)
    assert row_layout(model).packed  # the synthetic pair's rows are short: it packs
    with caplog.at_level(logging.INFO, logger="dpolab"):
        collator = self_check(model, EXAMPLES, PairCollator(pad_token_id=0, score_prompt=True))
    assert isinstance(collator, PairCollator) and not collator.packed and collator.score_prompt
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "LongRowsIgnorePositions: pair rows' log-probs differ from its own forward's" in warnings[0]
    assert "chosen and rejected go in separate rows" in warnings[0]


def test_a_model_dpolab_does_not_reproduce_stops_the_run():
    model = _custom(LongRowsDoubleLogits)
    with pytest.raises(
        DpolabError, match=r"^LongRowsDoubleLogits: dpolab's log-probs of the first training examples differ"
    ):
        self_check(model, EXAMPLES, PairCollator(pad_token_id=0))
