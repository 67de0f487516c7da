"""From per-token log-probs to what the losses take: LD-DPO's sums, WPO's weights, the chosen NLL;
hand-worked values and their naive equivalents."""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.modeling.logprobs import LayerLogprobs
from dpolab.objectives.sequences import (
    chosen_nll,
    length_desensitised_logps,
    position_in_sequence,
    sequence_logps,
    wpo_weights,
)

# Two pairs, tokens in the collator's order (sequence 2b chosen, 2b + 1 rejected):
#   pair 0: chosen 3 tokens [−1, −2, −3] | rejected 1 token [−4]          shared length 1
#   pair 1: chosen 2 tokens [−1, −1]     | rejected 2 tokens [−2, −0.5]   shared length 2
SEGMENTS = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])
TOKENS = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -1.0, -1.0, -2.0, -0.5]], dtype=torch.float64)


def test_position_in_sequence_literal():
    assert position_in_sequence(SEGMENTS, 4).tolist() == [0, 1, 2, 0, 0, 1, 0, 1]
    # the tokens of a sequence need not be adjacent: the order they come in counts
    assert position_in_sequence(torch.tensor([1, 0, 1, 0, 2]), 3).tolist() == [0, 0, 1, 1, 0]


def test_length_desensitised_sums_hand_worked():
    # α = 0.5: pair 0's chosen keeps its first token whole: −1 + 0.5·(−2 − 3) = −3.5; its rejected −4;
    # pair 1 (equal lengths): plain sums −2 and −2.5
    _close(length_desensitised_logps(TOKENS, SEGMENTS, 4, 0.5), [[-3.5, -4.0, -2.0, -2.5]])
    # α = 1: the plain sums;  α = 0: the tails dropped (pair 0's chosen is −1)
    _close(length_desensitised_logps(TOKENS, SEGMENTS, 4, 1.0), [[-6.0, -4.0, -2.0, -2.5]])
    _close(length_desensitised_logps(TOKENS, SEGMENTS, 4, 0.0), [[-1.0, -4.0, -2.0, -2.5]])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_length_desensitised_sums_match_trl_masks(alpha):
    """TRL's construction: per row, completion positions 1..n; shared = 1..min(n_w, n_l), tail past it."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 3, 3, 1, 7]  # three pairs
    tokens = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    expected = []
    for i, row in enumerate(tokens):
        shared = min(lengths[i - i % 2], lengths[i - i % 2 + 1])
        expected.append(row[:shared].sum() + alpha * row[shared:].sum())
    got = length_desensitised_logps(torch.cat(tokens)[None], segments, 6, alpha)
    torch.testing.assert_close(got[0], torch.stack(expected), rtol=1e-14, atol=1e-14)


def test_wpo_weights_hand_worked():
    # w(y) = exp(mean_t [log p_t − log Σ_v p_v²]):
    #   pair 0 chosen: log p = log ½ at each token, Σ p² = ½ (a two-way coin): aligned 0 → w = 1
    #          rejected: log p = log ¼, Σ p² = ½: mean log(¼/½) = log ½ → w = ½; pair weight ½
    #   pair 1 chosen: log p = [log ½, log ⅛], Σ p² = [½, ½]: mean (0 + log ¼)/2 = log ½ → w = ½
    #          rejected: one token log p = log ½, Σ p² = ¼: log 2 → w = 2; pair weight 1
    log = math.log
    tokens = torch.tensor(
        [[log(0.5), log(0.5), log(0.25), log(0.5), log(0.125), log(0.5)]], dtype=torch.float64
    )
    sum_sq = torch.tensor(
        [[log(0.5), log(0.5), log(0.5), log(0.5), log(0.5), log(0.25)]], dtype=torch.float64
    )
    segments = torch.tensor([0, 0, 1, 2, 2, 3])
    weights = wpo_weights(tokens.requires_grad_(True), sum_sq, segments, 4)
    _close(weights, [[0.5, 1.0]])
    assert not weights.requires_grad  # a weight, not a path for gradients


def test_chosen_nll_hand_worked():
    # chosen sums −6 (3 tokens) and −2 (1 token): 8 / 4 = 2 per token (one mean over the batch's
    # chosen tokens, not a mean of per-sequence means, which would be (2 + 2)/2 here too: see below)
    sums = torch.tensor([-6.0, -99.0, -2.0, -99.0], dtype=torch.float64)
    counts = torch.tensor([3, 5, 1, 7])
    _close(chosen_nll(sums, counts), 2.0)
    # chosen −6 over 2 tokens and −2 over 2: 8/4 = 2, where the per-sequence means give (3 + 1)/2 = 2;
    # −6 over 1 and −2 over 3: 8/4 = 2 against (6 + 2/3)/2 = 3.33: the token mean is TRL's
    _close(chosen_nll(sums, torch.tensor([1, 5, 3, 7])), 2.0)
    # with the prompts' tokens (ORPO): prompt sums −1 (1 token) and −3 (1 token): (8 + 4)/(4 + 2) = 2
    _close(
        chosen_nll(sums, counts, torch.tensor([-1.0, -3.0], dtype=torch.float64), torch.tensor([1, 1])), 2.0
    )
    _close(
        chosen_nll(sums, counts, torch.tensor([-4.0, -8.0], dtype=torch.float64), torch.tensor([1, 1])),
        20 / 6,
    )


def test_sequence_logps_is_the_sums_without_ld_alpha():
    sums = torch.tensor([[-6.0, -4.0, -2.0, -2.5]], dtype=torch.float64)
    out = LayerLogprobs(layers=(4,), logps=sums, num_tokens=torch.tensor([3, 1, 2, 2]))
    assert sequence_logps(out, None) is sums
    with pytest.raises(ValueError, match="per-token"):
        sequence_logps(out, 0.5)
    out.token_logps, out.segments = TOKENS, SEGMENTS
    _close(sequence_logps(out, 0.5), [[-3.5, -4.0, -2.0, -2.5]])


def _close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)
