"""The benchmark's workload: the token ids both trainers see are the ones the generator drew, for
every model family of the named shapes (a Qwen2 model's folder gets transformers' own Qwen2
tokenizer when loaded from there, so the tokenizer is read from a folder of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import _workload as workload


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_tokenizer_gives_the_drawn_ids(tmp_path, family):
    from transformers import AutoTokenizer

    shape = workload.ModelShape(hidden=64, layers=1, family=family)
    paths = workload.prepare(tmp_path, shape, pairs=2)
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    row = json.loads(Path(paths["dialogue"]).read_text().splitlines()[0])
    for text in (row["chosen"], row["rejected"]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == [int(word[1:]) for word in text.split()]
    assert row["chosen"] != row["rejected"]
