"""The reference model's log-probs: a frozen copy, the LoRA model with its adapters disabled, or
log-probs computed once before training and cached on disk.

All three give `logps(batch) -> (len(layers), 2B)` summed log-probs in the order of
`dpolab.collate`, for the same layers as the policy, so the objective never knows which it got.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpolab.collate import batch_targets
from dpolab.logprobs import layer_logprobs

log = logging.getLogger("dpolab")


class ModelReference:
    """A separate frozen model (a copy of the starting weights, or `ref_name_or_path`)."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        *,
        final_norm: bool = True,
        chunk_tokens: int | None = None,
    ):
        self.model, self.layers, self.final_norm, self.chunk_tokens = (
            model,
            tuple(layers),
            final_norm,
            chunk_tokens,
        )

    def to(self, device) -> ModelReference:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        out = layer_logprobs(
            self.model,
            batch,
            self.layers,
            final_norm=self.final_norm,
            chunk_tokens=self.chunk_tokens,
            targets=batch_targets(batch),
        )
        return out.logps


def _peft_model(model: nn.Module):
    while not hasattr(model, "disable_adapter"):
        inner = getattr(model, "module", None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} has no LoRA adapters to disable")
        model = inner
    return model


@contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode (no dropout) inside the block; every submodule gets back the mode it
    had (a module the caller kept in eval mode stays so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class AdapterDisabledReference:
    """The policy itself with its LoRA adapters switched off: no second copy in memory.

    The reference's log-probs are computed in eval mode, as those of the frozen copy (loaded in
    eval mode) and of the precomputation are: the Trainer keeps the policy in train mode, and with
    dropout on the reference would be a different random function at every call. Under
    `torch.no_grad` and after the policy's own forward of the step, this changes nothing of that
    forward or its gradients (dropout masks are drawn at forward time, and gradient checkpointing
    recomputes after the mode is restored)."""

    def __init__(self, layers: Sequence[int], *, final_norm: bool = True, chunk_tokens: int | None = None):
        self.layers, self.final_norm, self.chunk_tokens = tuple(layers), final_norm, chunk_tokens

    @torch.no_grad()
    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        with eval_mode(policy), _peft_model(policy).disable_adapter():
            out = layer_logprobs(
                policy,
                batch,
                self.layers,
                final_norm=self.final_norm,
                chunk_tokens=self.chunk_tokens,
                targets=batch_targets(batch),
            )
        return out.logps


class PrecomputedReference:
    """Reference log-probs carried by the batch (`ref_logps`, stacked by the collator)."""

    def logps(self, batch: dict[str, Any], policy: nn.Module | None = None) -> torch.Tensor:
        return batch["ref_logps"]


# ----------------------------------------------------------------------------------------------
# Precomputation and its cache
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPOLAB_CACHE", Path.home() / ".cache" / "dpolab")) / "reference"


# The files of a model folder that its log-probs depend on.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_FILES = ("config.json", "adapter_config.json")
_ENDS = 1 << 20  # bytes hashed at each end of a weight file


def _is_model_file(file: Path) -> bool:
    return file.name in _CONFIG_FILES or file.suffix in _WEIGHT_SUFFIXES or file.name.endswith(".index.json")


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    """What identifies a model's weights, for the precomputed-reference cache key.

    For a hub id: the id. For a local folder: its absolute path and, for each of its config,
    adapter config, weight and index files, the name, size, modification time (`st_mtime_ns`) and
    a hash of the first and last MiB. Hashing multi-GB files whole on every run would cost minutes;
    the modification time is what catches a change the two ends miss: a file saved again (in place,
    by `save_pretrained` or anything else) gets a new one. The rule errs on the safe side: a copy of
    the same weights, or a `touch`, also gets a new time and only misses the cache (the log-probs
    are computed again); a change that kept size, ends and time (a tool that restores the time on
    purpose) would go unseen.

    For a LoRA adapter folder (`dpolab.models.adapter_base`) the base model's fingerprint is part
    of it: the adapter's log-probs are those of the base with the adapter merged in."""
    from dpolab.models import adapter_base

    path = Path(os.path.expanduser(name_or_path))
    if not path.is_dir():
        return {"hub_id": name_or_path}
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if not (file.is_file() and _is_model_file(file)):
            continue
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_ENDS))
            if stat.st_size > 2 * _ENDS:
                handle.seek(-_ENDS, os.SEEK_END)
                digest.update(handle.read(_ENDS))
    fingerprint: dict[str, Any] = {"path": str(path.resolve()), "files": digest.hexdigest()}
    base = adapter_base(str(path))
    if base is not None:
        fingerprint["base"] = model_fingerprint(base)
    return fingerprint


def cache_key(
    *,
    model: dict[str, Any],
    pairs: Sequence[dict[str, Any]],
    layers: Sequence[int],
    final_norm: bool,
    dtype: str,
) -> str:
    """A hash of everything the reference log-probs depend on: weights, tokens, layers, dtype."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"model": model, "layers": list(layers), "final_norm": final_norm, "dtype": dtype}, sort_keys=True
        ).encode()
    )
    for pair in pairs:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            digest.update(len(pair[key]).to_bytes(4, "little"))
            digest.update(torch.as_tensor(pair[key], dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:32]


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def compute_reference_logps(
    reference,
    pairs: Sequence[dict[str, Any]],
    collator,
    *,
    batch_size: int,
    device: torch.device,
    policy: nn.Module | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """`(num_pairs, len(layers), 2)` reference log-probs [chosen, rejected] of every pair.

    Under several processes each computes every world-size-th batch (the same batches a single
    process would form, so the same numbers) and all of them receive the whole result."""
    from tqdm.auto import tqdm

    rank, world = _distributed()
    starts = list(range(0, len(pairs), batch_size))
    mine = {}
    for index in tqdm(
        range(rank, len(starts), world),
        desc="reference log-probs",
        leave=False,
        disable=not progress or rank != 0,
    ):
        start = starts[index]
        batch = collator(list(pairs[start : start + batch_size]))
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logps = reference.logps(batch, policy)  # (layers, 2b)
        mine[index] = logps.float().cpu().reshape(logps.shape[0], -1, 2).permute(1, 0, 2)
    if world > 1:
        import torch.distributed as dist

        shares: list[dict[int, torch.Tensor] | None] = [None] * world
        dist.all_gather_object(shares, mine)
        mine = {index: values for share in shares for index, values in share.items()}
    return torch.cat([mine[index] for index in range(len(starts))])


def cached_reference_logps(key: str, cache_dir: Path, compute) -> torch.Tensor:
    """Load the cached tensor for `key`, or compute it and store it atomically.

    Under several processes the first decides whether the cache holds the values and shares
    what it read (so a cache folder that only it can see still serves all); otherwise all of them
    take part in `compute` and the first stores the result."""
    rank, world = _distributed()
    path = cache_dir / f"{key}.pt"
    found = [path.exists() if rank == 0 else None]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(found, src=0)
    if found[0]:
        values = [torch.load(path) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(values, src=0)
        log.info("reference log-probs: using the cache %s", path)
        return values[0]
    values = compute()
    if rank == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(values, tmp)
        os.replace(tmp, path)
        log.info("reference log-probs: cached in %s", path)
    return values
