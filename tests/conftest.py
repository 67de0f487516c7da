"""Shared fixtures: a locally trained tokenizer and tiny models saved to a temporary folder, small
disks that really fill up (tmpfs), and processes killed with SIGKILL."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

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


class SmallDisk:
    """A folder on a tmpfs of a given size: writes in it really run out of space."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> Path:
        """Take every free byte with a filler file (tmpfs gives space in pages: a file whose last
        page has room can still grow until that page is full). Returns the filler."""
        filler = self.path / "filler"
        with filler.open("ab", buffering=0) as handle:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        handle.write(b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
        return filler

    def resize(self, size: str) -> None:
        """Give the disk another size (what freeing space does for a user)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size)` mounts a tmpfs of that size (`"2m"`, `"512k"`) in the test's folder and
    returns it as a `SmallDisk`; unmounted after the test. Skipped, with the reason, where mounting
    is not allowed (not root, or no `mount`)."""
    mounted = []

    def mount(size: str, name: str = "disk") -> SmallDisk:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("a full disk is made with a small tmpfs, and mounting one needs root")
        folder = tmp_path / name
        folder.mkdir()
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            pytest.skip("a full disk is made with a small tmpfs, and there is no `mount` here")
        if result.returncode != 0:
            pytest.skip(
                f"a full disk is made with a small tmpfs, and mounting one failed: {result.stderr.strip()}"
            )
        mounted.append(folder)
        return SmallDisk(folder)

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_and_kill(target, *, delay: float | None = None, when=None, poll: float = 0.001) -> bool:
    """Run `target()` in a forked child (torch and the rest already imported: it starts at once)
    and SIGKILL it after `delay` seconds, or as soon as `when()` is true. Returns whether it was
    killed (False: it finished first, and then it must have succeeded)."""
    child = multiprocessing.get_context("fork").Process(target=target)
    child.start()
    deadline = time.monotonic() + (delay if delay is not None else 120.0)
    while child.is_alive() and time.monotonic() < deadline and not (when is not None and when()):
        child.join(poll if when is not None else max(0.0, deadline - time.monotonic()))
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        return True
    assert child.exitcode == 0, f"the child failed (exit code {child.exitcode}) before it was killed"
    return False


@pytest.fixture
def killer(monkeypatch):
    """`run_and_kill`, where processes can be forked and killed (skipped elsewhere)."""
    if not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"):
        pytest.skip("killing a run needs fork and SIGKILL")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # the tokenizer in a forked child
    return run_and_kill
