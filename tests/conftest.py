"""Shared fixtures: a locally trained tokenizer and tiny models saved to a temporary folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

from dpolab.testing import build_tokenizer, tiny_model

# Nothing may reach the Hugging Face Hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# dpolab's caches (the prepared data of every run a test starts, reference log-probs a test does
# not place itself) in a folder of this test process, not in the user's ~/.cache/dpolab.
if "DPOLAB_CACHE" not in os.environ:
    os.environ["DPOLAB_CACHE"] = tempfile.mkdtemp(prefix="dpolab-tests-")
    atexit.register(shutil.rmtree, os.environ["DPOLAB_CACHE"], True)
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
