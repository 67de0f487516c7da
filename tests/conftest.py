"""Shared fixtures: a locally trained tokenizer and tiny models saved to a temporary folder, small
disks that really fill up (tmpfs), and processes killed with SIGKILL."""

from __future__ import annotations

import atexit
import errno
import html
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from dpolab.testing import build_tokenizer, tiny_model

# Nothing may reach the Hugging Face Hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# The tests' own servers (the judge's chat server, torch.distributed's rendezvous) are on this
# machine: never through a proxy that the environment may name for the package registries.
_local = ["127.0.0.1", "localhost", "::1"]
for _name in ("NO_PROXY", "no_proxy"):
    _given = [x for x in os.environ.get(_name, "").split(",") if x]
    os.environ[_name] = ",".join(_given + [x for x in _local if x not in _given])
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


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# Measured in the page once it has loaded: every image's state and box, the page's widths, and
# every element (outside a table's sideways-scrolling box) that reaches past the window's width.
LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, top: r.top + scrollY, width: r.width, height: r.height, right: r.right}; };
  const out = {
    width: width,
    scrollWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    images: [...document.images].map(i => ({loaded: i.complete && i.naturalWidth > 0, natural: i.naturalWidth, ...box(i)})),
    overflowing: [...document.body.querySelectorAll('*')]
      .filter(e => !e.closest('div.table, pre') || e.matches('div.table, pre'))
      .filter(e => e.getBoundingClientRect().right > width + 0.5)
      .map(e => e.tagName.toLowerCase()),
  };
  const pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def chromium_layout(tmp_path):
    """`check(html_path, width)`: renders the page in headless Chromium `width` CSS pixels wide and
    returns (layout measured in the page, screenshot of the whole page as a PIL image). Skips the
    test where Chromium is not installed (.ci/run installs it)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed")
    from PIL import Image

    def check(page: Path, width: int = 800):
        probe = tmp_path / f"probe-{page.stem}.html"
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"))
        size = f"--window-size={width},2000"
        dom = _chromium(size, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
        found = re.search(r'<pre id="layout">(.*?)</pre>', dom, flags=re.S)
        assert found, "the page did not finish loading in Chromium"
        layout = json.loads(html.unescape(found.group(1)))
        shot = tmp_path / f"shot-{page.stem}.png"
        height = min(int(layout["height"]), 16000)
        _chromium(
            f"--window-size={width},{height}",
            "--force-device-scale-factor=1",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            page.as_uri(),
        )
        image = Image.open(shot).convert("RGB")
        assert_layout(layout, image, width)
        return layout, image

    return check


def assert_layout(layout: dict, shot, width: int) -> None:
    """What a reader must see: every image loaded, none on another, each with at least 2 pixels
    per CSS pixel (sharp on a high-resolution screen); nothing wider than the window; and in the
    screenshot, each image painted and the page's right margin empty from top to bottom."""
    from PIL import ImageStat

    images = layout["images"]
    assert images and all(i["loaded"] for i in images), "an image did not load"
    assert layout["scrollWidth"] <= width and layout["overflowing"] == [], layout["overflowing"]
    for i, a in enumerate(images):
        assert a["natural"] >= 2 * a["width"] - 1, (
            f"image {i} has {a['natural']} pixels for {a['width']} CSS pixels"
        )
        for b in images[i + 1 :]:
            apart = a["top"] + a["height"] <= b["top"] or b["top"] + b["height"] <= a["top"]
            assert apart or a["right"] <= b["left"] or b["right"] <= a["left"], "two images overlap"
    assert shot.width == width
    margin = shot.crop((width - 12, 0, width, shot.height))  # the body's right padding
    assert ImageStat.Stat(margin).extrema == [(255, 255)] * 3, "something reaches into the right margin"
    for i, a in enumerate(images):
        if a["top"] + a["height"] > shot.height:
            continue  # below a (very long) page's screenshot
        box = (
            int(a["left"]) + 1,
            int(a["top"]) + 1,
            int(a["left"] + a["width"]) - 1,
            int(a["top"] + a["height"]) - 1,
        )
        painted = ImageStat.Stat(shot.crop(box).convert("L"))
        assert painted.stddev[0] > 10 and painted.mean[0] < 250, f"image {i} is not painted in the screenshot"


class SmallDisk:
    """A folder on a tmpfs of a given size: writes in it really run out of space."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> Path:
        """Take every free byte with a filler file (tmpfs gives space in pages: a file whose last
        page has room can still grow until that page is full). Returns the filler."""
        filler = self.path / "filler"
        # never more than the disk holds: a mount that did not limit the space fails here rather
        # than filling the machine's own disk
        limit = shutil.disk_usage(self.path).total + (1 << 20)
        with filler.open("ab", buffering=0) as handle:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        assert handle.tell() < limit, (
                            f"{self.path} took {handle.tell()} bytes: not a small disk"
                        )
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
        total = shutil.disk_usage(folder).total
        if total > 64 << 20:  # the sizes asked for here are a few MiB
            pytest.skip(f"a full disk is made with a small tmpfs, and the one mounted holds {total} bytes")
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
