"""The bridge to lm-evaluation-harness (`dpolab eval tasks --harness`): its `hf` model on dpolab's
model folder (or GGUF file), and its metrics under dpolab's names (`dpolab.evaluation.tasks` scores
the same tasks itself on local files).

Without local data the task names are lm-eval's (arc_challenge, hellaswag, gsm8k, ...) and it
fetches its own data. With local data (`data`: dpolab's task name -> file, as `--data` gives them)
each task is lm-eval's own config (`arc_challenge`, `hellaswag`, `gsm8k`), included as it is, with
only its data source replaced by the local file (`dataset_path: json` and `data_files`), zero-shot:
lm-eval's prompts, choices, filters and metrics score the same documents dpolab scores itself,
and its per-document results come back as each task's `samples`.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dpolab.errors import DpolabError
from dpolab.evaluation.results import result_header

# dpolab's task -> (lm-eval's config it includes, the split the local file stands for)
LOCAL_TASKS = {
    "arc": ("arc/arc_challenge.yaml", "test"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "gsm8k": ("gsm8k/gsm8k.yaml", "test"),
}
_DATASET_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
LOCAL_PREFIX = "dpolab_local_"


def local_task_config(task: str, data_file: str, *, max_new_tokens: int = 256) -> dict[str, Any]:
    """lm-eval's config of `task` (dpolab's name) reading `data_file` instead of the hub: its own
    config file included, the data source, splits and few-shot count replaced (for gsm8k also the
    generation length, lm-eval's `max_gen_toks`, as dpolab's --max-new-tokens)."""
    import lm_eval.tasks

    if task not in LOCAL_TASKS:
        raise DpolabError(
            f"--harness with --data: unknown task {task!r}; choose from {', '.join(LOCAL_TASKS)}"
        )
    path = Path(data_file)
    builder = _DATASET_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DpolabError(
            f"{data_file}: lm-eval reads {', '.join(_DATASET_BUILDERS)} files, not {path.suffix!r}"
        )
    if not path.is_file():
        raise DpolabError(f"{data_file}: no such file")
    base, split = LOCAL_TASKS[task]
    config: dict[str, Any] = {
        "include": str(Path(lm_eval.tasks.__file__).parent / base),
        "task": LOCAL_PREFIX + task,
        "tag": [],
        "dataset_path": builder,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path.resolve())}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }
    if task == "gsm8k":
        from dpolab.evaluation.tasks import GSM8K_STOP

        config["generation_kwargs"] = {
            "until": list(GSM8K_STOP),
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": max_new_tokens,
        }
    return config


def harness_samples(task: str, samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's logged samples of a task as dpolab's per-document results, in document order:
    multiple choice `{doc_id, acc, acc_norm, loglikelihoods}`; gsm8k `{doc_id, output,
    exact_match (strict-match), exact_match_flexible (flexible-extract)}`."""
    docs: dict[int, dict[str, Any]] = {}
    for sample in samples:
        doc = docs.setdefault(sample["doc_id"], {"doc_id": sample["doc_id"]})
        if task == "gsm8k":
            suffix = "" if sample["filter"] == "strict-match" else "_flexible"
            doc["exact_match" + suffix] = float(sample["exact_match"])
            doc["output"] = sample["resps"][0][0]
        else:
            doc.update({"acc": float(sample["acc"]), "acc_norm": float(sample["acc_norm"])})
            doc["loglikelihoods"] = [float(resp[0][0]) for resp in sample["resps"]]
    return [docs[i] for i in sorted(docs)]


def run_harness(
    model_path: str,
    tasks: Sequence[str],
    *,
    data: Mapping[str, str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str | None = None,
    add_bos_token: bool = False,
    max_new_tokens: int = 256,
) -> dict[str, Any]:
    """The tasks through lm-evaluation-harness (`lm_eval.simple_evaluate`) when it is installed.
    Without `data`, task names are lm-eval's and it fetches its own data; with `data` (dpolab's
    task name -> local file, for every task), lm-eval's own configs of those tasks read the local
    files (`local_task_config`) and each task's per-document results come back as `samples`.
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
    kwargs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dpolab-lm-eval-") as folder:
        names = list(tasks)
        if data is not None:
            missing = [t for t in tasks if t not in data]
            if missing:
                raise DpolabError(
                    f"--harness with --data: no data for {', '.join(missing)}; give --data TASK=FILE for each task"
                )
            for task in tasks:
                config = local_task_config(task, data[task], max_new_tokens=max_new_tokens)
                (Path(folder) / f"{task}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
            from lm_eval.tasks import TaskManager

            names = [LOCAL_PREFIX + t for t in tasks]
            kwargs = {
                "task_manager": TaskManager(include_path=folder, include_defaults=False),
                "num_fewshot": 0,
                "log_samples": True,
            }
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=harness_model_args(model_path, dtype=dtype, add_bos_token=add_bos_token),
            tasks=names,
            limit=limit,
            batch_size=batch_size,
            device=device,
            **kwargs,
        )
    metrics = harness_metrics(out)
    if data is not None:
        logged = (out or {}).get("samples") or {}
        metrics = {
            task: {
                "data": str(data[task]),
                **metrics.get(LOCAL_PREFIX + task, {}),
                "samples": harness_samples(task, logged.get(LOCAL_PREFIX + task, [])),
            }
            for task in tasks
        }
    result = result_header("tasks")
    result.update(
        {
            "model": model_path,
            "backend": "lm-evaluation-harness",
            "lm_eval": getattr(lm_eval, "__version__", None),
            "tasks": metrics,
        }
    )
    return result


def harness_model_args(model_path: str, *, dtype: str | None = None, add_bos_token: bool = False) -> str:
    """lm-eval's `--model_args` string for its `hf` model: `pretrained=PATH[,dtype=D],add_bos_token=B`;
    a GGUF file is `pretrained=ITS_FOLDER,gguf_file=ITS_NAME` (lm-eval dequantises it through transformers)."""
    from dpolab.modeling.loading import gguf_path

    gguf = gguf_path(model_path)
    args = [f"pretrained={gguf.parent},gguf_file={gguf.name}" if gguf else f"pretrained={model_path}"]
    if dtype:
        args.append(f"dtype={dtype}")
    # always said: lm-eval 0.4.13 left unset adds what the tokenizer adds by default (a BOS for many),
    # dpolab's own scoring adds nothing unless asked
    args.append(f"add_bos_token={add_bos_token}")
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
