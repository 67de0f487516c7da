"""Forgetting: token loss and perplexity checked against Hugging Face's own loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.evaluation.forgetting import chunk, forgetting, load_text, token_stream
from dpolab.testing import tiny_model

TEXT = (
    "The quick brown fox jumps over the lazy dog. A preference pair has a prompt, a chosen response and a "
    "rejected response. Tom has 3 apples and buys 5 more."
)


def hf_loss(model, ids):
    """Hugging Face's mean cross-entropy of a sequence predicting itself shifted by one."""
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)


def test_loss_equals_hf_loss(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, seed=1)
    reference = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, seed=2)
    ids = token_stream(tokenizer, [TEXT])
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    context = 16
    chunks = chunk(ids, context)
    assert all(len(c) == context for c in chunks[:-1]) and sum(len(c) for c in chunks) == len(ids)
    result = forgetting(model, reference, tokenizer, [TEXT], context=context, batch_size=3)
    # token-weighted mean of the per-chunk HF losses (chunk c predicts len(c) − 1 tokens)
    for name, m in (("model", model), ("reference", reference)):
        expected = sum(hf_loss(m, c) * (len(c) - 1) for c in chunks) / sum(len(c) - 1 for c in chunks)
        assert result[name]["loss"] == pytest.approx(expected, abs=1e-5)
        assert result[name]["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert result["loss_difference"] == pytest.approx(result["model"]["loss"] - result["reference"]["loss"])
    assert result["n_tokens"] == len(ids) - len(chunks)
    assert result["kind"] == "forgetting"


def test_same_model_has_no_difference(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=2)
    result = forgetting(model, model, tokenizer, [TEXT, "Another short document."], context=32)
    assert result["loss_difference"] == pytest.approx(0.0, abs=1e-6)
    assert result["perplexity_ratio"] == pytest.approx(1.0)
    assert result["n_documents"] == 2


def test_cli_and_bad_input(tmp_path, model_dir, capsys):
    text = tmp_path / "held_out.jsonl"
    text.write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DpolabError, match=r"held_out.jsonl, row 2, field 'text': missing"):
        load_text(text)
    text.write_text(json.dumps({"text": TEXT}) + "\n")
    out = tmp_path / "eval" / "forgetting.json"
    assert (
        main(
            [
                "eval",
                "forgetting",
                "--model",
                str(model_dir),
                "--reference",
                str(model_dir),
                "--text",
                str(text),
                "--output",
                str(out),
                "--context",
                "24",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["context"] == 24 and result["loss_difference"] == pytest.approx(0.0, abs=1e-6)
    assert "perplexity" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                "forgetting",
                "--model",
                str(tmp_path / "nope"),
                "--reference",
                str(model_dir),
                "--text",
                str(text),
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "no such folder" in capsys.readouterr().err


def test_context_longer_than_the_models_positions_is_refused(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=2)
    positions = model.config.max_position_embeddings
    with pytest.raises(DpolabError, match=rf"context {positions + 1} is longer than the models' {positions}"):
        forgetting(model, model, tokenizer, [TEXT], context=positions + 1)
    assert forgetting(model, model, tokenizer, [TEXT], context=positions)["context"] == positions
