"""Reference log-probs computed once before training, and their cache on disk.

The key covers everything the values depend on: the reference weights
(`dpolab.modeling.fingerprint`), every pair's token ids, the layers, the final norm, the dtype and
LD-DPO's α (the sums it weighs).
Under several processes each computes a share of the batches and all receive the whole result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
