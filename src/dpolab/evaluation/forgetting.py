"""Forgetting: mean token loss and perplexity of a model and its reference on held-out text
(the practitioner's study measured DPO models on their pre-training validation text).

The text is tokenised once (each document with the tokenizer's special tokens, then EOS), joined
into one stream and cut into non-overlapping chunks of `context` tokens; within a chunk every token
after the first is predicted from the ones before it. Loss = −(1/N)·Σ log p(token | chunk prefix)
over those N tokens, in nats; perplexity = exp(loss). Both models see exactly the same chunks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpolab.data.io import read_rows
from dpolab.errors import DpolabError, where
from dpolab.evaluation.results import format_table, result_header

DEFAULT_MAX_CONTEXT = 2048


def load_text(source: str | os.PathLike, *, field: str = "text") -> list[str]:
    """Documents of a `.txt` file (the whole file one document) or of the `field` of each row of a
    JSONL/JSON/Parquet file."""
    path = Path(source)
    if path.suffix.lower() in (".txt", ".md", ""):
        if not path.exists():
            raise DpolabError(f"{source}: no such file")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise DpolabError(f"{source}: empty")
        return [text]
    documents = []
    for row in read_rows(source):
        if row.record is None:
            raise DpolabError(f"{where(source, row.number)}: {row.error}")
        value = row.record.get(field)
        if not isinstance(value, str):
            raise DpolabError(
                f"{where(source, row.number, field)}: {'missing' if value is None else 'not text'}"
            )
        if value.strip():
            documents.append(value)
    if not documents:
        raise DpolabError(f"{source}: no text in field '{field}'")
    return documents


def token_stream(tokenizer, documents: Sequence[str]) -> list[int]:
    """All documents' tokens, each document followed by EOS."""
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


def chunk(ids: Sequence[int], context: int) -> list[list[int]]:
    """Non-overlapping chunks of `context` tokens (the last may be shorter; a single token, with
    nothing to predict, is dropped)."""
    chunks = [list(ids[i : i + context]) for i in range(0, len(ids), context)]
    return [c for c in chunks if len(c) > 1]


def token_loss(
    model, chunks: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int = 4
) -> dict[str, float]:
    """Mean token loss (nats) and perplexity of a model over chunks."""
    from dpolab.evaluation.scoring import continuation_logprobs

    requests = [(c[:1], c[1:]) for c in chunks]
    logps = continuation_logprobs(
        model,
        requests,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        max_length=max(len(c) for c in chunks),
    )
    n = sum(len(c) - 1 for c in chunks)
    loss = -sum(logps) / n
    return {"loss": loss, "perplexity": math.exp(loss), "n_tokens": n}


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def forgetting(
    model,
    reference,
    tokenizer,
    documents: Sequence[str],
    *,
    context: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    reference_tokenizer=None,
    names: tuple[str, str] = ("model", "reference"),
    text_source: str | None = None,
) -> dict[str, Any]:
    """Loss and perplexity of `model` and `reference` on the same chunks, and their differences
    (model − reference: positive means the model forgot). The result dict (kind `forgetting`)."""
    from dpolab.evaluation.scoring import model_max_length, pad_id_of

    if reference_tokenizer is not None and not _same_tokenizer(tokenizer, reference_tokenizer):
        raise DpolabError(
            "the model and the reference have different tokenizers, so their token losses do not compare"
        )
    positions = min(
        model_max_length(model, DEFAULT_MAX_CONTEXT), model_max_length(reference, DEFAULT_MAX_CONTEXT)
    )
    context = context or min(positions, DEFAULT_MAX_CONTEXT)
    if context < 2:
        raise DpolabError(f"context must be at least 2 tokens, not {context}")
    if context > positions:
        raise DpolabError(
            f"context {context} is longer than the models' {positions} positions (their configs' "
            f"max_position_embeddings); give --context {positions} or less"
        )
    ids = token_stream(tokenizer, documents)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    chunks = chunk(ids, context)
    if not chunks:
        raise DpolabError("the text is too short: no token to predict")
    pad = pad_id_of(tokenizer)
    ours = token_loss(model, chunks, pad_token_id=pad, batch_size=batch_size)
    theirs = token_loss(reference, chunks, pad_token_id=pad, batch_size=batch_size)
    result = result_header("forgetting")
    result.update(
        {
            "text": text_source,
            "n_documents": len(documents),
            "n_tokens": ours["n_tokens"],
            "context": context,
            "model": {"name": names[0], "loss": ours["loss"], "perplexity": ours["perplexity"]},
            "reference": {"name": names[1], "loss": theirs["loss"], "perplexity": theirs["perplexity"]},
            "loss_difference": ours["loss"] - theirs["loss"],
            "perplexity_ratio": ours["perplexity"] / theirs["perplexity"],
        }
    )
    return result


def forgetting_table(result: dict[str, Any]) -> str:
    rows = [
        ["model", result["model"]["name"], result["model"]["loss"], result["model"]["perplexity"]],
        [
            "reference",
            result["reference"]["name"],
            result["reference"]["loss"],
            result["reference"]["perplexity"],
        ],
        ["difference", "model − reference", result["loss_difference"], None],
    ]
    return format_table(["", "name", "loss", "perplexity"], rows) + (
        f"\nperplexity ratio {result['perplexity_ratio']:.4f} over {result['n_tokens']} tokens "
        f"(chunks of {result['context']})"
    )
