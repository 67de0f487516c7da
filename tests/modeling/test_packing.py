"""Padding-free packing (`data.pack_tokens`): which pairs share a row, the rows written out, and
the same log-probs, losses, gradients, metrics and router loss as one pair per row."""

from __future__ import annotations

import random

import pytest
import torch

from dpolab.config.schema import IntermediateSettings, LossSection
from dpolab.modeling.attention import segment_attention_mask
from dpolab.modeling.collate import PairCollator, SequenceCollator, batch_prompt_targets, batch_targets
from dpolab.modeling.layout import router_token_weights
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.modeling.packing import pack_rows, padding
from dpolab.objectives.preference import PreferenceObjective
from dpolab.testing import tiny_model


def test_pack_rows_hand_worked():
    # 14 tokens in rows of 8: two rows at least; 5 → row 0, 4 → row 1, 3 → row 1 (4 < 5),
    # 2 → row 0 (5 < 7): 2 rows × 7 = 14 slots; three rows (5, 4, 3+2) would take 3 × 5 = 15
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 3], [1, 2]]
    assert pack_rows([5, 3, 4, 2], None) == [[0], [1], [2], [3]]
    # 14 slots in one row of 14 or two of 7: the narrower
    assert pack_rows([5, 3, 4, 2], 100) == [[0, 3], [1, 2]]
    # 6 + 3 + 3: one pair a row takes 3 × 6 = 18 slots, two rows 2 × 6 = 12, one row 12 but wider
    assert pack_rows([6, 3, 3], 12) == [[0], [1, 2]]
    # no layout beats one pair a row (18 slots): packing never adds padding
    assert pack_rows([6, 5, 5], 12) == [[0], [1], [2]]
    # a pair that fills the budget exactly takes a row alone; one longer than it, a row of its own
    assert pack_rows([8, 1, 1], 8) == [[0], [1, 2]]
    assert pack_rows([3, 10, 3], 8) == [[0, 2], [1]]
    # two rows planned for 3 × 5 = 15 ≤ 16 tokens, but no two pairs fit in 8: three
    assert pack_rows([5, 5, 5], 8) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="at least 1"):
        pack_rows([1], 0)


def test_pack_rows_keeps_every_pair_once_within_the_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 12))]
        budget = rng.randint(5, 60)
        rows = pack_rows(lengths, budget)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        for row in rows:
            assert row == sorted(row)
            assert sum(lengths[i] for i in row) <= budget or len(row) == 1
        assert rows == sorted(rows)
        # never more token slots than one pair a row, never fewer rows than the tokens need
        width = max(sum(lengths[i] for i in row) for row in rows)
        assert len(rows) * width <= len(lengths) * max(lengths)
        fitting = sum(n for n in lengths if n <= budget)
        assert -(-fitting // budget) + sum(n > budget for n in lengths) <= len(rows) <= len(lengths)


PAIRS = [
    {"prompt_ids": [10, 11, 12], "chosen_ids": [13, 14], "rejected_ids": [15]},  # 6 tokens
    {"prompt_ids": [20], "chosen_ids": [21], "rejected_ids": [24]},  # 3
    {"prompt_ids": [30, 31], "chosen_ids": [32], "rejected_ids": []},  # 3, an empty rejected
]


def test_pair_collator_packs_pairs_literal():
    # 12 tokens in rows of 12: pair 0 alone in row 0, pairs 1 and 2 in row 1; width 6
    batch = PairCollator(pad_token_id=0, pack_tokens=12, score_prompt=True)(PAIRS)
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 13, 14, 15],
        [20, 21, 24, 30, 31, 32],  # pair 1 | pair 2
    ]
    assert batch["segment_ids"].tolist() == [
        [1, 1, 1, 2, 2, 3],
        [1, 2, 3, 4, 4, 5],  # pair 2 is the row's second: segments 4, 5 (and 6, empty)
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 3],
        [0, 1, 1, 0, 1, 2],  # pair 2's positions restart at 0
    ]
    # row 0 as alone; row 1 at 6 + column: 21 ← 6, 24 ← 6 (pair 1's prompt end);
    # pair 2 from column 3: 32 ← 6 + 4 (its prompt's end); its rejected completion has no token
    assert batch["target_positions"].tolist() == [2, 3, 2, 6, 6, 10]
    assert batch["target_tokens"].tolist() == [13, 14, 15, 21, 24, 32]
    assert batch["target_segments"].tolist() == [0, 0, 1, 2, 3, 4]
    assert batch_targets(batch).num_tokens().tolist() == [2, 1, 1, 1, 1, 0]
    # prompts: 11 ← 0, 12 ← 1 (prompt 0); none of pair 1's one token; 31 ← 9 (prompt 2)
    assert batch["prompt_target_positions"].tolist() == [0, 1, 9]
    assert batch["prompt_target_segments"].tolist() == [0, 0, 2]
    assert padding(batch) == (12, 12)
    assert padding(PairCollator(pad_token_id=0)(PAIRS)) == (12, 18)
    # rounded up to a multiple, the flat positions count rows of 8
    wide = PairCollator(pad_token_id=0, pack_tokens=12, pad_to_multiple_of=4)(PAIRS)
    assert wide["input_ids"].shape == (2, 8)
    assert wide["target_positions"].tolist() == [2, 3, 2, 8, 8, 12]
    # a router counts a prompt token twice (TRL's two rows hold it), a completion token once
    assert router_token_weights(batch).tolist() == [[2, 2, 2, 1, 1, 1], [2, 1, 1, 2, 2, 1]]


def test_sequence_collator_packs_sequences_literal():
    examples = [
        {"prompt_ids": [5, 6], "completion_ids": [7, 8, 9]},
        {"prompt_ids": [4], "completion_ids": [3]},
        {"prompt_ids": [1, 2, 3], "completion_ids": [4]},
    ]
    batch = SequenceCollator(pad_token_id=0, pack_tokens=7)(examples)
    # 11 tokens in rows of 7: 5 → row 0, 4 → row 1, 2 → row 1
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [4, 3, 1, 2, 3, 4]]
    # each sequence one segment with no prompt segment (3k+2): it sees itself only
    assert batch["segment_ids"].tolist() == [[2, 2, 2, 2, 2, 0], [2, 2, 5, 5, 5, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 0, 1, 2, 3]]
    assert batch["target_positions"].tolist() == [1, 2, 3, 6, 10]
    assert batch["target_segments"].tolist() == [0, 0, 0, 1, 2]
    assert "attention_mask" not in batch
    allowed = segment_attention_mask(batch["segment_ids"], torch.float32)[1, 0] == 0
    assert allowed[:2, 2:].sum() == 0 and allowed[2:, :2].sum() == 0  # nothing across sequences
    # the router counts each token of a sequence once, as in its own row
    assert router_token_weights(batch).tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_separate_rows_are_not_packed():
    with pytest.raises(ValueError, match="cannot be packed"):
        PairCollator(pad_token_id=0, packed=False, pack_tokens=16)


def _pair(rng: random.Random, vocab: int, p: int, c: int, r: int) -> dict[str, list[int]]:
    draw = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    return {"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)}


BUDGET = 16
# odd lengths; two pairs that share a row (7 + 9), one that fills a row exactly (16), one longer
# than a row (21, a row of its own), and a one-token prompt
SHAPES = [(3, 2, 4), (5, 1, 1), (4, 6, 6), (6, 7, 8), (1, 3, 2), (2, 5, 3)]


def _batches(vocab: int, **collator):
    rng = random.Random(1)
    pairs = [_pair(rng, vocab, *shape) for shape in SHAPES]
    apart = PairCollator(pad_token_id=0, score_prompt=True, **collator)(pairs)
    packed = PairCollator(pad_token_id=0, score_prompt=True, pack_tokens=BUDGET, **collator)(pairs)
    return apart, packed


def test_the_test_batch_packs_as_described():
    apart, packed = _batches(64)
    assert apart["input_ids"].shape == (6, 21)
    rows = packed["segment_ids"]
    pairs_per_row = ((rows - 1).clamp(min=0) // 3).amax(1) + 1
    fill = (rows > 0).sum(1)
    assert packed["input_ids"].shape[1] == 21  # the long pair's row sets the width
    assert 21 in fill.tolist() and BUDGET in fill.tolist()  # the long pair alone, a full row
    assert pairs_per_row.max() >= 2  # pairs that share a row
    assert padding(packed)[1] < padding(apart)[1]


FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 5},  # a window shorter than the pairs, counted in positions
    "gemma2": {"sliding_window": 5, "final_logit_softcapping": 0.5},  # a mask per layer type
    "qwen2_moe": {"router_aux_loss_coef": 0.02},  # the router's load-balancing loss
    "gpt2": {},  # learned absolute positions: a pair's must restart at 0 (rotary ones are relative)
}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_give_the_same_logprobs_losses_gradients_and_metrics(family):
    """The same pairs, one a row and packed 16 tokens a row: per-token and per-pair log-probs at the
    final and intermediate layers, the prompts' log-probs, WPO's Σp², the loss, its gradient on
    every weight, every logged metric and a MoE router's load-balancing loss agree."""
    model = tiny_model(
        family,
        vocab_size=64,
        hidden_size=16,
        num_layers=4,
        num_heads=2,
        initializer_range=0.3,
        **FAMILIES[family],
    )
    apart, packed = _batches(64)
    loss_section = LossSection(beta=0.5, intermediate=IntermediateSettings(layers=[1, 2], gamma=0.7))
    objective = PreferenceObjective.from_config(loss_section, final_layer=4)
    reference = torch.randn(3, 2 * len(SHAPES), generator=torch.Generator().manual_seed(0)) - 10
    router = "moe" in family
    results = []
    for batch in (apart, packed):
        model.zero_grad()
        out = layer_logprobs(
            model,
            batch,
            objective.layers,
            targets=batch_targets(batch),
            prompt_targets=batch_prompt_targets(batch),
            log_sum_sq=True,
            router_aux=router,
        )
        loss = objective(out, reference)
        total = loss.loss + (out.aux_loss if router else 0)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, loss, grads))
    (a, loss_a, grad_a), (b, loss_b, grad_b) = results
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(b.token_logps, a.token_logps, **close)
    torch.testing.assert_close(b.logps, a.logps, **close)
    torch.testing.assert_close(b.prompt_logps, a.prompt_logps, **close)
    torch.testing.assert_close(b.log_sum_sq, a.log_sum_sq, **close)
    assert torch.equal(b.num_tokens, a.num_tokens)
    torch.testing.assert_close(loss_b.loss, loss_a.loss, **close)
    assert loss_a.metrics.keys() == loss_b.metrics.keys() and len(loss_a.metrics) > 5
    for name in loss_a.metrics:
        torch.testing.assert_close(loss_b.metrics[name], loss_a.metrics[name], **close, msg=name)
    if router:
        torch.testing.assert_close(b.aux_loss, a.aux_loss, **close)
        assert a.aux_loss > 0
    assert grad_a.keys() == grad_b.keys() and len(grad_a) > 10
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], rtol=1e-4, atol=1e-6, msg=name)
