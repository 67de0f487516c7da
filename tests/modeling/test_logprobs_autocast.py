"""Under autocast the chunked head takes its product in the autocast dtype, in the forward pass
and again in the backward pass's recomputation (which autograd runs outside autocast): the
softmax of the backward is then the forward's, and the gradients are those of the same bf16
computation done naively. Recomputing in fp32 instead leaves probabilities that do not sum to one
(off by the bf16 rounding of logits of tens: ~5 % here)."""

from __future__ import annotations

import pytest
import torch

from dpolab.modeling.head import token_logprobs

N, D, V = 37, 19, 101  # odd on purpose


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("trainable_head", [True, False])
def test_autocast_gradients_are_those_of_the_bf16_computation(trainable_head):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=g)
    weight = 3.0 * torch.randn(V, D, generator=g)  # logits of tens, which bf16 rounds by ~0.1
    tokens = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g)

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(trainable_head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = token_logprobs(h1, w1, None, tokens, chunk_tokens=7)
    (ours * upstream).sum().backward()

    # naive: the product in bf16, log-softmax of its fp32 copy, gather
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(trainable_head)
    logits = (h2.bfloat16() @ w2.bfloat16().t()).float()
    naive = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    (naive * upstream).sum().backward()

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.detach(), naive.detach(), rtol=1e-6, atol=1e-6)
    # what is left is the naive backward's own bf16 product (~0.3 %)
    assert _relative(h1.grad, h2.grad) < 0.01
    if trainable_head:
        assert _relative(w1.grad, w2.grad) < 0.01
