"""Collators: the expected tensors written out, one commented row per example."""

from __future__ import annotations

import pytest
import torch

from dpolab.modeling.collate import PairCollator, SequenceCollator, batch_prompt_targets, batch_targets
from dpolab.modeling.logprobs import TokenTargets, layer_logprobs, targets_from_completion_mask
from dpolab.testing import tiny_model

PAIRS = [
    {"prompt_ids": [10, 11, 12], "chosen_ids": [13, 14], "rejected_ids": [15]},
    {"prompt_ids": [20], "chosen_ids": [21, 22, 23], "rejected_ids": [24]},
    {"prompt_ids": [30, 31], "chosen_ids": [32], "rejected_ids": [33, 34]},
]


def test_pair_collator_literal():
    batch = PairCollator(pad_token_id=0)(PAIRS)
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [10, 11, 12, 13, 14, 15],  # prompt 10 11 12 | chosen 13 14 | rejected 15
                [20, 21, 22, 23, 24, 0],  # prompt 20 | chosen 21 22 23 | rejected 24 | pad
                [30, 31, 32, 33, 34, 0],  # prompt 30 31 | chosen 32 | rejected 33 34 | pad
            ]
        ),
    )
    assert torch.equal(
        batch["segment_ids"],
        torch.tensor(
            [
                [1, 1, 1, 2, 2, 3],
                [1, 2, 2, 2, 3, 0],
                [1, 1, 2, 3, 3, 0],
            ]
        ),
    )
    # the rejected completion restarts at the position where the chosen one started
    assert torch.equal(
        batch["position_ids"],
        torch.tensor(
            [
                [0, 1, 2, 3, 4, 3],
                [0, 1, 2, 3, 1, 0],
                [0, 1, 2, 2, 3, 0],
            ]
        ),
    )
    # flat positions (row·6 + column) of the hidden states that predict each scored token:
    #   row 0: 13 ← col 2 (prompt end), 14 ← col 3; 15 ← col 2 (prompt end again)
    #   row 1: 21 ← 6+0, 22 ← 6+1, 23 ← 6+2; 24 ← 6+0
    #   row 2: 32 ← 12+1; 33 ← 12+1, 34 ← 12+3 (the rejected token 33 before it)
    assert batch["target_positions"].tolist() == [2, 3, 2, 6, 7, 8, 6, 13, 13, 15]
    assert batch["target_tokens"].tolist() == [13, 14, 15, 21, 22, 23, 24, 32, 33, 34]
    # sequence 2b is pair b's chosen completion, 2b + 1 its rejected one
    assert batch["target_segments"].tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
    assert batch["num_sequences"] == 6
    for key in (
        "input_ids",
        "segment_ids",
        "position_ids",
        "target_positions",
        "target_tokens",
        "target_segments",
    ):
        assert batch[key].dtype == torch.long
    assert "ref_logps" not in batch and "index" not in batch and "attention_mask" not in batch


def test_pair_collator_pad_to_multiple_of():
    batch = PairCollator(pad_token_id=7, pad_to_multiple_of=4)(PAIRS)
    # width 6 rounded up to 8; flat positions now count rows of 8
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [10, 11, 12, 13, 14, 15, 7, 7],
                [20, 21, 22, 23, 24, 7, 7, 7],
                [30, 31, 32, 33, 34, 7, 7, 7],
            ]
        ),
    )
    assert torch.equal(
        batch["segment_ids"],
        torch.tensor(
            [
                [1, 1, 1, 2, 2, 3, 0, 0],
                [1, 2, 2, 2, 3, 0, 0, 0],
                [1, 1, 2, 3, 3, 0, 0, 0],
            ]
        ),
    )
    assert batch["position_ids"].shape == (3, 8)
    assert batch["target_positions"].tolist() == [2, 3, 2, 8, 9, 10, 8, 17, 17, 19]
    # an exact multiple is not padded further
    assert PairCollator(pad_token_id=0, pad_to_multiple_of=3)(PAIRS)["input_ids"].shape == (3, 6)


def test_pair_collator_ref_logps_and_index_order():
    examples = [
        dict(PAIRS[0], ref_logps=[[-1.0, -2.0], [-10.0, -20.0]], index=4),  # (layers, [chosen, rejected])
        dict(PAIRS[1], ref_logps=[[-3.0, -4.0], [-30.0, -40.0]], index=0),
        dict(PAIRS[2], ref_logps=[[-5.0, -6.0], [-50.0, -60.0]], index=9),
    ]
    batch = PairCollator(pad_token_id=0)(examples)
    # (layers, 2B) in sequence order c0 r0 c1 r1 c2 r2, the order of target_segments
    assert torch.equal(
        batch["ref_logps"],
        torch.tensor(
            [
                [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],  # layer 1
                [-10.0, -20.0, -30.0, -40.0, -50.0, -60.0],  # layer 2
            ]
        ),
    )
    assert batch["ref_logps"].dtype == torch.float32
    assert batch["index"].tolist() == [4, 0, 9]


def test_batch_targets():
    batch = PairCollator(pad_token_id=0)(PAIRS)
    t = batch_targets(batch)
    assert isinstance(t, TokenTargets)
    assert t.positions is batch["target_positions"] and t.tokens is batch["target_tokens"]
    assert t.segments is batch["target_segments"] and t.num_segments == 6
    assert t.num_tokens().tolist() == [2, 1, 3, 1, 1, 2]


def test_pair_with_an_empty_completion_keeps_its_sequence():
    batch = PairCollator(pad_token_id=0)(
        [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": []}, PAIRS[0]]
    )
    assert batch["num_sequences"] == 4
    assert batch_targets(batch).num_tokens().tolist() == [1, 0, 2, 1]


def test_sequence_collator_literal():
    examples = [
        {"prompt_ids": [5, 6], "completion_ids": [7, 8, 9]},
        {"prompt_ids": [4], "chosen_ids": [3]},  # chosen_ids when there is no completion_ids
        {"prompt_ids": [1, 2, 3], "completion_ids": [4], "rejected_ids": [99]},  # rejected ignored
    ]
    batch = SequenceCollator(pad_token_id=0)(examples)
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [5, 6, 7, 8, 9],  # prompt 5 6 | completion 7 8 9
                [4, 3, 0, 0, 0],  # prompt 4 | completion 3 | pad
                [1, 2, 3, 4, 0],  # prompt 1 2 3 | completion 4 | pad
            ]
        ),
    )
    assert torch.equal(
        batch["attention_mask"],
        torch.tensor(
            [
                [1, 1, 1, 1, 1],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0],
            ]
        ),
    )
    # 7 ← 1, 8 ← 2, 9 ← 3; 3 ← 5+0; 4 ← 10+2
    assert batch["target_positions"].tolist() == [1, 2, 3, 5, 12]
    assert batch["target_tokens"].tolist() == [7, 8, 9, 3, 4]
    assert batch["target_segments"].tolist() == [0, 0, 0, 1, 2]
    assert batch["num_sequences"] == 3
    # the same targets as the usual layout's completion mask gives
    completion_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    usual = targets_from_completion_mask(batch["input_ids"], completion_mask)
    t = batch_targets(batch)
    for field in ("positions", "tokens", "segments"):
        assert torch.equal(getattr(t, field), getattr(usual, field))


def test_sequence_collator_pad_to_multiple_of():
    examples = [
        {"prompt_ids": [5, 6], "completion_ids": [7, 8, 9]},
        {"prompt_ids": [4], "completion_ids": [3]},
    ]
    batch = SequenceCollator(pad_token_id=1, pad_to_multiple_of=8)(examples)
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [5, 6, 7, 8, 9, 1, 1, 1],
                [4, 3, 1, 1, 1, 1, 1, 1],
            ]
        ),
    )
    assert torch.equal(
        batch["attention_mask"],
        torch.tensor(
            [
                [1, 1, 1, 1, 1, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0],
            ]
        ),
    )
    assert batch["target_positions"].tolist() == [1, 2, 3, 8]


@pytest.mark.parametrize("collator", [PairCollator(pad_token_id=0), SequenceCollator(pad_token_id=0)])
def test_collators_refuse_an_empty_prompt(collator):
    examples = [
        dict(PAIRS[0]),
        {"prompt_ids": [], "chosen_ids": [1, 2], "rejected_ids": [3], "completion_ids": [1]},
    ]
    with pytest.raises(ValueError, match="example 1 has no prompt tokens"):
        collator(examples)


def test_sequence_collator_batch_scores_like_a_completion_mask():
    """End to end: a SequenceCollator batch through `layer_logprobs` with its own targets equals
    the same rows scored from a completion mask."""
    model = tiny_model(
        "qwen2", vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, initializer_range=0.3
    )
    examples = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 10, 11]},
        {"prompt_ids": [12], "completion_ids": [13, 14]},
    ]
    batch = SequenceCollator(pad_token_id=2)(examples)
    completion_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        out = layer_logprobs(model, batch, [1, 2], targets=batch_targets(batch))
        ref = layer_logprobs(model, dict(batch, completion_mask=completion_mask), [1, 2])
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-6, atol=1e-6)
    assert out.num_tokens.tolist() == [4, 2]


def test_pair_collator_scores_the_prompts_when_asked():
    batch = PairCollator(pad_token_id=0, score_prompt=True)(PAIRS)
    # the prompts' own tokens, each from its second (the first has nothing before it):
    #   row 0: 11 ← col 0, 12 ← col 1;   row 1: none (a one-token prompt);   row 2: 31 ← 12+0
    assert batch["prompt_target_positions"].tolist() == [0, 1, 12]
    assert batch["prompt_target_tokens"].tolist() == [11, 12, 31]
    assert batch["prompt_target_segments"].tolist() == [0, 0, 2]  # prompt b is segment b
    assert batch["num_prompts"] == 3
    targets = batch_prompt_targets(batch)
    assert targets.num_segments == 3 and targets.num_tokens().tolist() == [2, 0, 1]
    # the completions' targets are those of the plain collator
    plain = PairCollator(pad_token_id=0)(PAIRS)
    for key in ("input_ids", "target_positions", "target_tokens", "target_segments"):
        assert torch.equal(batch[key], plain[key])
    with pytest.raises(ValueError, match="without score_prompt"):
        batch_prompt_targets(plain)


def test_pair_collator_separate_rows_literal():
    """`packed=False`: pair b is rows 2b (prompt + chosen) and 2b + 1 (prompt + rejected), with a
    2-D mask; the targets list the same tokens in the same order and sequences as packed rows."""
    batch = PairCollator(pad_token_id=0, packed=False, score_prompt=True)(PAIRS)
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [10, 11, 12, 13, 14],  # pair 0: prompt 10 11 12 | chosen 13 14
                [10, 11, 12, 15, 0],  # pair 0: prompt 10 11 12 | rejected 15 | pad
                [20, 21, 22, 23, 0],  # pair 1: prompt 20 | chosen 21 22 23 | pad
                [20, 24, 0, 0, 0],  # pair 1: prompt 20 | rejected 24 | pad
                [30, 31, 32, 0, 0],  # pair 2: prompt 30 31 | chosen 32 | pad
                [30, 31, 33, 34, 0],  # pair 2: prompt 30 31 | rejected 33 34 | pad
            ]
        ),
    )
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
    ]
    # flat positions (row·5 + column): token j of a completion is predicted at prompt end + j
    #   13 ← 0+2, 14 ← 0+3 | 15 ← 5+2 | 21 ← 10+0, 22 ← 10+1, 23 ← 10+2 | 24 ← 15+0 | 32 ← 20+1 | 33 ← 25+1, 34 ← 25+2
    assert batch["target_positions"].tolist() == [2, 3, 7, 10, 11, 12, 15, 21, 26, 27]
    packed = PairCollator(pad_token_id=0, score_prompt=True)(PAIRS)
    for key in ("target_tokens", "target_segments", "prompt_target_tokens", "prompt_target_segments"):
        assert torch.equal(batch[key], packed[key]), key
    assert batch["num_sequences"] == 6 and batch["num_prompts"] == 3
    # the prompts' own tokens, from each prompt's second, in its chosen row: 11 ← 0, 12 ← 1 | 31 ← 20
    assert batch["prompt_target_positions"].tolist() == [0, 1, 20]
    assert "segment_ids" not in batch and "position_ids" not in batch
