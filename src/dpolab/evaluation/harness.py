"""The bridge to lm-evaluation-harness (`dpolab eval tasks --harness`): its `hf` model on dpolab's
model folder, and its metrics under dpolab's names (`dpolab.evaluation.tasks` scores the same tasks
itself on local files)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dpolab.errors import DpolabError
from dpolab.evaluation.results import result_header


def run_harness(
    model_path: str,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str | None = None,
    add_bos_token: bool = False,
) -> dict[str, Any]:
    """The tasks through lm-evaluation-harness (`lm_eval.simple_evaluate`) when it is installed;
    task names are lm-eval's (e.g. arc_challenge, hellaswag, gsm8k) and it fetches its own data.
    `dtype` and `add_bos_token` go to lm-eval's `hf` model as its arguments of those names."""
    if importlib.util.find_spec("lm_eval") is None:
        raise DpolabError(
            "lm-evaluation-harness is not installed (pip install lm-eval); without --harness, dpolab scores "
            "arc, hellaswag and gsm8k itself on local files given with --data TASK=FILE"
        )
    import lm_eval

    from dpolab.modeling.loading import resolve_device, resolve_dtype

    device = resolve_device(device)
    dtype = str(resolve_dtype(dtype or "auto", device)).removeprefix(
        "torch."
    )  # dpolab's `auto`, not lm-eval's
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=harness_model_args(model_path, dtype=dtype, add_bos_token=add_bos_token),
        tasks=list(tasks),
        limit=limit,
        batch_size=batch_size,
        device=device,
    )
    result = result_header("tasks")
    result.update({"model": model_path, "backend": "lm-evaluation-harness", "tasks": harness_metrics(out)})
    return result


def harness_model_args(model_path: str, *, dtype: str | None = None, add_bos_token: bool = False) -> str:
    """lm-eval's `--model_args` string for its `hf` model: `pretrained=PATH[,dtype=D][,add_bos_token=True]`."""
    args = [f"pretrained={model_path}"]
    if dtype:
        args.append(f"dtype={dtype}")
    if add_bos_token:
        args.append("add_bos_token=True")
    return ",".join(args)


# lm-eval's filters whose metric keeps dpolab's plain name, and those that get a suffix
_PLAIN_FILTERS = ("none", "strict-match")
_FILTER_SUFFIX = {"flexible-extract": "_flexible"}


def harness_metric_name(key: str) -> str:
    """dpolab's name of an lm-eval metric key `METRIC,FILTER`: `acc,none` -> `acc`,
    `exact_match,strict-match` -> `exact_match`, `exact_match,flexible-extract` ->
    `exact_match_flexible`, and their `_stderr` alike (`exact_match_stderr,flexible-extract` ->
    `exact_match_flexible_stderr`, as dpolab's own gsm8k names it); another filter F is appended
    as `_F` (non-alphanumerics as `_`), before `_stderr`."""
    metric, _, filter_name = key.partition(",")
    stderr = metric.endswith("_stderr")
    base = metric[: -len("_stderr")] if stderr else metric
    if filter_name and filter_name not in _PLAIN_FILTERS:
        base += _FILTER_SUFFIX.get(filter_name) or "_" + re.sub(r"[^A-Za-z0-9]+", "_", filter_name).strip("_")
    return base + ("_stderr" if stderr else "")


def harness_metrics(out: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per task, the numeric metrics of an `lm_eval.simple_evaluate` result under dpolab's names
    (`harness_metric_name`), with `n` (documents scored) from its `n-samples` when given. Two keys
    that would get the same name keep lm-eval's full keys instead, so that nothing is lost."""
    out = out or {}
    samples = out.get("n-samples") or {}
    tasks: dict[str, dict[str, Any]] = {}
    for task, metrics in (out.get("results") or {}).items():
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        names = {k: harness_metric_name(k) for k in numeric}
        clashing = {n for n in names.values() if list(names.values()).count(n) > 1}
        tasks[task] = {(k if names[k] in clashing else names[k]): v for k, v in numeric.items()}
        counts = samples.get(task)
        if isinstance(counts, dict) and isinstance(counts.get("effective"), int):
            tasks[task].setdefault("n", counts["effective"])
    return tasks
