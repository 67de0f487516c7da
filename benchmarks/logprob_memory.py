"""Peak extra memory of completion log-probs: chunked (`dpolab.modeling.head.token_logprobs`) vs naive.

The naive path is what most DPO code does: the full `(N, V)` logits of the completion tokens,
`log_softmax` over the vocabulary, `gather` of the target tokens, then backward. The chunked path
projects `chunk_tokens` rows at a time and keeps only one chunk's logits alive, in forward and in
backward. Both are run forward + backward on the same `(N, d)` hidden states and `(V, d)` head,
with the head trainable (full fine-tuning) or frozen (LoRA: gradients for the hidden states only).

Method (deterministic, CPU): `LiveTensorBytes`, a `TorchDispatchMode`, sees every ATen operator
called inside the measured region, forward and backward (the autograd engine runs CPU backward
on the calling thread, inside the mode). Each output whose storage is new (not one of the
operator's inputs' storages, i.e. not a view or an in-place result) adds its storage's bytes to a
running total; a `weakref.finalize` on that storage subtracts them when the storage is freed,
whoever held it last (Python, a tensor saved for backward, the autograd engine). The peak of that
total is the peak extra memory of the region: tensors that existed before it (the hidden states,
the head) are not counted, gradients and everything saved for backward are. Not counted: scratch
memory an operator allocates and frees inside its own kernel, which is invisible at the operator
level (it is small here: no kernel of either path needs an `(N, V)` scratch buffer). The numbers
do not depend on timing, threads or the allocator, so they repeat exactly from run to run.

Run:  python benchmarks/logprob_memory.py [--tokens 2048] [--hidden 256] [--vocab 8192 32768 131072]
"""

from __future__ import annotations

import argparse
import datetime
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dpolab.modeling.head import DEFAULT_CHUNK_ELEMENTS, default_chunk_tokens, token_logprobs

MiB = 2**20


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages allocated inside the `with` block and still alive; `peak` is the
    largest that total has been."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _allocated(self, key: int, nbytes: int) -> None:
        self._tracked.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._tracked.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._tracked:
                continue  # a view or an in-place result: no new memory
            nbytes = storage.nbytes()
            self._allocated(key, nbytes)
            weakref.finalize(storage, self._freed, key, nbytes)
        return out


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensors `fn` allocates (and frees) while it runs; what it returns is dropped."""
    with LiveTensorBytes() as tracker:
        fn()
    return tracker.peak


def naive_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Full logits, log_softmax over the vocabulary, gather: `(N,)` fp32."""
    return torch.log_softmax((hidden @ weight.t()).float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)


def measure(
    path: str,
    *,
    tokens: int,
    hidden: int,
    vocab: int,
    head_trainable: bool,
    chunk_tokens: int | None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> int:
    """Peak extra bytes of forward + backward of one path (`"naive"` or `"chunked"`)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g).to(dtype).requires_grad_(True)
    w = (0.02 * torch.randn(vocab, hidden, generator=g)).to(dtype).requires_grad_(head_trainable)
    targets = torch.randint(0, vocab, (tokens,), generator=g)

    def step():
        if path == "naive":
            logps = naive_token_logprobs(h, w, targets)
        else:
            logps = token_logprobs(h, w, None, targets, chunk_tokens=chunk_tokens)
        logps.sum().backward()

    return peak_extra_bytes(step)


def table(
    *, tokens: int, hidden: int, vocabs: list[int], chunk_elements: int, dtype: torch.dtype
) -> list[str]:
    lines = [
        "| head | vocab | chunk tokens | naive peak (MiB) | chunked peak (MiB) | naive / chunked |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for head_trainable in (False, True):
        for vocab in vocabs:
            chunk = default_chunk_tokens(vocab, chunk_elements)
            kw = dict(
                tokens=tokens,
                hidden=hidden,
                vocab=vocab,
                head_trainable=head_trainable,
                chunk_tokens=chunk,
                dtype=dtype,
            )
            naive, chunked = measure("naive", **kw), measure("chunked", **kw)
            label = "trainable" if head_trainable else "frozen (LoRA)"
            lines.append(
                f"| {label} | {vocab} | {min(chunk, tokens)} | {naive / MiB:.1f} | {chunked / MiB:.1f} | "
                f"{naive / chunked:.1f}x |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="completion tokens N (default 2048)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size d (default 256)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument(
        "--chunk-elements",
        type=int,
        default=DEFAULT_CHUNK_ELEMENTS,
        help="logit elements per chunk (dpolab's default 2**24); chunk tokens = this / V",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(
        f"# {datetime.date.today()}, torch {torch.__version__}, N={args.tokens} tokens, d={args.hidden}, "
        f"{args.dtype}, chunk budget {args.chunk_elements} logit elements; forward + backward"
    )
    print(
        "\n".join(
            table(
                tokens=args.tokens,
                hidden=args.hidden,
                vocabs=args.vocab,
                chunk_elements=args.chunk_elements,
                dtype=dtype,
            )
        )
    )


if __name__ == "__main__":
    main()
