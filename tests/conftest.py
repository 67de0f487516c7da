"""Shared fixtures: a locally trained tokenizer and tiny models saved to a temporary folder."""

from __future__ import annotations

import os

import pytest
import torch

from dpolab.testing import build_tokenizer, tiny_model

# Nothing may reach the Hugging Face Hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# One thread per test process: tiny models gain nothing from two, and `make test` runs two
# pytest workers (pytest-xdist) side by side on the two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (vocab 300) with BOS/EOS/PAD and a chat template."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama (4 layers, hidden 32) and the tokenizer, saved in Hugging Face format."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
