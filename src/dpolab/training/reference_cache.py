"""Reference log-probs computed once before training, and their cache on disk.

The key covers everything the values depend on: the reference weights
(`dpolab.modeling.fingerprint`), every pair's token ids, the layers, the final norm, the dtype and
LD-DPO's α (the sums it weighs). An entry is written atomically with a checksum of its values and
checked when read: a torn or damaged entry is computed again (with a warning), never used.
Under several processes each computes a share of the batches and all receive the whole result.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpolab.data.io import write_bytes_atomic

log = logging.getLogger("dpolab")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPOLAB_CACHE", Path.home() / ".cache" / "dpolab")) / "reference"


def cache_key(
    *,
    model: dict[str, Any],
    pairs: Sequence[dict[str, Any]],
    layers: Sequence[int],
    final_norm: bool,
    dtype: str,
    ld_alpha: float | None = None,
    autocast: str | None = None,
) -> str:
    """A hash of everything the reference log-probs depend on: weights, tokens, layers, dtype, the
    mixed precision they were computed under (`autocast`: "bf16", "fp16"), and LD-DPO's α (None,
    the plain sums, and no autocast keep the key of a cache written before these existed)."""
    digest = hashlib.sha256()
    settings = {"model": model, "layers": list(layers), "final_norm": final_norm, "dtype": dtype}
    if ld_alpha is not None:
        settings["ld_alpha"] = ld_alpha
    if autocast is not None:
        settings["autocast"] = autocast
    digest.update(json.dumps(settings, sort_keys=True).encode())
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


def _digest(values: torch.Tensor) -> str:
    return hashlib.sha256(values.contiguous().numpy().tobytes()).hexdigest()


def read_cache_entry(path: Path, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """The log-probs a cache entry holds, verified: None when there is no entry, or when it is torn
    or damaged (cut short by a kill or a full disk, its checksum wrong, another shape than `shape`
    expects, or written by an older dpolab without a checksum); such an entry is never used, and a
    warning names it and why."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        if not isinstance(entry, dict) or not isinstance(entry.get("logps"), torch.Tensor):
            problem = "not an entry of this dpolab version (no checksum)"
        elif entry.get("sha256") != _digest(entry["logps"]):
            problem = "damaged (its checksum does not match its values)"
        elif shape is not None and tuple(entry["logps"].shape) != tuple(shape):
            problem = f"of another shape ({tuple(entry['logps'].shape)}, expected {tuple(shape)})"
        else:
            return entry["logps"]
    except Exception as err:  # a torn file fails in torch's zip reader, in one of several ways
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]  # its first sentence
        problem = f"unreadable, cut short or damaged ({reason})"
    log.warning("reference log-probs: the cache entry %s is %s; computing them again", path, problem)
    return None


def write_cache_entry(path: Path, values: torch.Tensor) -> None:
    """Store log-probs with their checksum, atomically (temporary file, fsync, rename); a full disk
    ends in one line naming the entry and its size, and leaves the other entries as they were."""
    buffer = io.BytesIO()
    torch.save({"logps": values, "sha256": _digest(values)}, buffer)
    write_bytes_atomic(
        path,
        buffer.getvalue(),
        then="the cache's other entries are kept (reference.cache_dir moves the cache)",
    )


def cached_reference_logps(
    key: str, cache_dir: Path, compute, *, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Load the cached tensor for `key` (checked: `read_cache_entry`), or compute it and store it
    atomically (`write_cache_entry`). `shape`: what the entry must hold.

    Under several processes the first decides whether the cache holds the values and shares
    what it read (so a cache folder that only it can see still serves all); otherwise all of them
    take part in `compute` and the first stores the result."""
    rank, world = _distributed()
    path = cache_dir / f"{key}.pt"
    found = [read_cache_entry(path, shape) if rank == 0 else None]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(found, src=0)
    if found[0] is not None:
        log.info("reference log-probs: using the cache %s", path)
        return found[0]
    values = compute()
    if rank == 0:
        write_cache_entry(path, values)
        log.info("reference log-probs: cached in %s", path)
    return values
