"""What identifies a model's weights, without reading them whole: the key of the precomputed
reference cache (`dpolab.training.reference`) and of the judges' verdict caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from dpolab.modeling.loading import adapter_base, gguf_path

# The files of a model folder that its log-probs depend on.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_FILES = ("config.json", "adapter_config.json")
_ENDS = 1 << 20  # bytes hashed at each end of a weight file


def _is_model_file(file: Path) -> bool:
    return file.name in _CONFIG_FILES or file.suffix in _WEIGHT_SUFFIXES or file.name.endswith(".index.json")


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    """What identifies a model's weights, for the precomputed-reference cache key.

    For a hub id: the id and the revision (commit) the local hub cache resolves it to, with the
    fingerprint of that snapshot's files (`hub_revision`): an updated hub model is another model.
    For a local folder: its absolute path and, for each of its config,
    adapter config, weight and index files, the name, size, modification time (`st_mtime_ns`) and
    a hash of the first and last MiB. Hashing multi-GB files whole on every run would cost minutes;
    the modification time is what catches a change the two ends miss: a file saved again (in place,
    by `save_pretrained` or anything else) gets a new one. The rule errs on the safe side: a copy of
    the same weights, or a `touch`, also gets a new time and only misses the cache (the log-probs
    are computed again); a change that kept size, ends and time (a tool that restores the time on
    purpose) would go unseen.

    A GGUF file (`dpolab.modeling.loading.gguf_path`) is a model of one file: its absolute path and
    that file's digest, by the same rule.

    For a LoRA adapter folder (`dpolab.modeling.loading.adapter_base`) the base model's fingerprint is part
    of it: the adapter's log-probs are those of the base with the adapter merged in."""
    path = Path(os.path.expanduser(name_or_path))
    if gguf_path(name_or_path) is not None and path.is_file():
        return {"path": str(path.resolve()), "files": _files_digest([path])}
    if not path.is_dir():
        revision, snapshot = hub_revision(name_or_path)
        fingerprint: dict[str, Any] = {"hub_id": name_or_path, "revision": revision}
        if snapshot is not None:
            fingerprint["files"] = _files_digest(_model_files(snapshot))
        return fingerprint
    fingerprint = {"path": str(path.resolve()), "files": _files_digest(_model_files(path))}
    base = adapter_base(str(path))
    if base is not None:
        fingerprint["base"] = model_fingerprint(base)
    return fingerprint


def weights_fingerprint(model) -> dict[str, Any]:
    """What identifies the weights of a model in memory (one a notebook passes in, with no folder
    to fingerprint): a hash of every parameter's and buffer's name, dtype, shape and bytes. It
    reads the whole model once, as its first forward pass would."""
    import torch

    digest = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return {"in_memory": type(model).__name__, "weights": digest.hexdigest()}


def _model_files(folder: Path) -> list[Path]:
    """The config, adapter config, weight and index files of `folder`, by name."""
    return [f for f in sorted(folder.iterdir()) if f.is_file() and _is_model_file(f)]


def _files_digest(files: list[Path]) -> str:
    """A hash of each file's name, size, modification time and first and last MiB."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_ENDS))
            if stat.st_size > 2 * _ENDS:
                handle.seek(-_ENDS, os.SEEK_END)
                digest.update(handle.read(_ENDS))
    return digest.hexdigest()


def hub_revision(repo_id: str) -> tuple[str | None, Path | None]:
    """(commit, snapshot folder) the local hub cache resolves `repo_id` to (its `refs/main`, as
    `from_pretrained` reads it), or (None, None) when the cache does not hold it.

    The cache is `huggingface_hub.constants.HF_HUB_CACHE`, read at call time here as in
    transformers' `cached_file`: the folder the loader (`dpolab.modeling.loading`, which passes no
    `cache_dir`) reads. HF_HUB_CACHE / HF_HOME set that constant once, when huggingface_hub is
    first imported; changing them later moves neither the loader nor this."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except (ValueError, OSError):  # not a valid repo id
        return None, None
    if not isinstance(found, str):
        return None, None
    snapshot = Path(found).parent
    return snapshot.name, snapshot
