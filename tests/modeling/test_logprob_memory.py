"""The chunked log-probs' extra memory does not grow with the vocabulary the way the naive path's does.

Measured with `benchmarks/logprob_memory.py`'s `LiveTensorBytes` (tensor storages allocated and
still alive inside the region, forward + backward; see its docstring): exact byte counts, no
timing. Small sizes: N = 256 completion tokens, d = 16, V = 1024 and 2048, a chunk budget of
16384 logit elements (16 and 8 tokens per chunk).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "logprob_memory.py"
N, D, BUDGET = 256, 16, 16384
FP32 = 4


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("logprob_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tracker_counts_live_bytes(bench):
    before = torch.ones(100)
    with bench.LiveTensorBytes() as tracker:
        view = before.view(10, 10)[:5]  # a view of a tensor from before the region: nothing new
        assert tracker.live == 0
        a = torch.ones(250)  # 1000 bytes
        b = a * 2  # 2000 alive
        del a  # 1000
        c = b + 1  # 2000 again
        b.add_(1)  # in place: nothing new
        assert (tracker.live, tracker.peak) == (2000, 2000)
        d = torch.empty(1000, dtype=torch.float64)  # + 8000
        del d, b, c
        assert (tracker.live, tracker.peak) == (0, 10000)
    del view
    # tensors saved for backward count until backward frees them
    x = torch.randn(500, requires_grad=True)
    with bench.LiveTensorBytes() as tracker:
        y = x.exp()  # saved (exp's backward uses its result): 2000
        loss = y.sum()  # 4
        del y
        assert tracker.live == 2004
        loss.backward()  # grad of exp (2000) then x.grad (2000); the saved result is freed
        del loss
        assert tracker.live == 2000  # x.grad
    assert x.grad is not None


def _peaks(bench, vocab, head_trainable):
    chunk = BUDGET // vocab
    kw = dict(tokens=N, hidden=D, vocab=vocab, head_trainable=head_trainable, chunk_tokens=chunk)
    return bench.measure("naive", **kw), bench.measure("chunked", **kw), chunk


@pytest.mark.parametrize("head_trainable", [False, True], ids=["frozen_head", "trainable_head"])
def test_chunked_peak_is_bounded_while_naive_grows_with_vocab(bench, head_trainable):
    naive_1, chunked_1, chunk_1 = _peaks(bench, 1024, head_trainable)
    naive_2, chunked_2, chunk_2 = _peaks(bench, 2048, head_trainable)
    assert (chunk_1, chunk_2) == (16, 8)  # the same budget of chunk_tokens·V = 16384 logits

    # naive: about three (N, V) fp32 tensors (logits, log_softmax, their gradient), so linear in V
    for naive, vocab in ((naive_1, 1024), (naive_2, 2048)):
        assert 2.9 <= naive / (FP32 * N * vocab) <= 3.2
    assert 1.9 <= naive_2 / naive_1 <= 2.1

    # chunked: ONE chunk of logits alive at a time (chunk·V; its softmax and its gradient are made in
    # place), O(N·d) (the hidden states' gradient; the frozen head's saved softmax·W; per-token
    # vectors) and, with a trainable head only, the head's own gradient (V·d)
    for chunked, vocab, chunk in ((chunked_1, 1024, chunk_1), (chunked_2, 2048, chunk_2)):
        bound = FP32 * (chunk * vocab + 2 * N * D + (vocab * D if head_trainable else 0))
        assert chunked <= bound
        assert chunked < (naive_1 if vocab == 1024 else naive_2) / 10
    if head_trainable:
        # only the head's gradient grows: V·d·4 bytes more
        assert chunked_2 - chunked_1 <= FP32 * 1024 * D * 1.1
    else:
        # doubling the vocabulary at a fixed chunk budget leaves the peak where it was
        assert 0.95 <= chunked_2 / chunked_1 <= 1.05


def test_measurement_is_deterministic(bench):
    kw = dict(tokens=64, hidden=8, vocab=300, head_trainable=True, chunk_tokens=7)
    assert bench.measure("chunked", **kw) == bench.measure("chunked", **kw)
    assert bench.measure("naive", **kw) == bench.measure("naive", **kw)
