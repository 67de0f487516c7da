"""Reading what a run directory holds: `config.yaml`, `metrics.jsonl`, `summary.json`, and every
evaluation result JSON (a dict with a `kind` key) anywhere below it except in checkpoints.

metrics.jsonl rows (written by the trainer): {"step", "split": "train"|"eval", "epoch", "loss",
"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
"logps/rejected", "layers/<k>/<metric>" for intermediate DPO, "learning_rate", "grad_norm"}.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpolab.config import load_yaml
from dpolab.errors import DpolabError
from dpolab.evaluation.results import KINDS

# Files of a Hugging Face model or trainer directory that are never evaluation results.
_NOT_RESULTS = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "adapter_config.json",
    "trainer_state.json",
    "summary.json",
    "model.safetensors.index.json",
    "added_tokens.json",
    "vocab.json",
    "preprocessor_config.json",
}
MAX_RESULT_BYTES = 50 * 2**20
LAYER_KEY = re.compile(r"^layers/(\d+)/(.+)$")


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    results: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def series(self, key: str, split: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one metric on one split (a row without `split` is a train row), in
        step order, numbers only."""
        points = sorted(
            (row["step"], row[key])
            for row in self.metrics
            if row.get("split", "train") == split and _number(row.get(key)) and _number(row.get("step"))
        )
        return [p[0] for p in points], [p[1] for p in points]

    def layer_metrics(self) -> dict[str, list[int]]:
        """metric name -> the layers k that log `layers/<k>/<metric>`."""
        found: dict[str, set[int]] = {}
        for row in self.metrics:
            for key in row:
                match = LAYER_KEY.match(key)
                if match:
                    found.setdefault(match.group(2), set()).add(int(match.group(1)))
        return {m: sorted(ks) for m, ks in sorted(found.items())}

    def results_of(self, kind: str) -> list[tuple[Path, dict[str, Any]]]:
        return [(p, r) for p, r in self.results if r.get("kind") == kind]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of metrics.jsonl; unreadable lines are skipped and reported (a run still being
    written may end in half a line)."""
    rows, bad = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(number)
    warnings = (
        [f"{path}: skipped {len(bad)} unreadable line(s) ({', '.join(map(str, bad[:10]))})"] if bad else []
    )
    return rows, warnings


def find_results(root: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Evaluation results under `root` (checkpoint-* and hidden folders skipped), by path."""
    found, warnings = [], []
    for path in sorted(root.rglob("*.json")):
        parts = path.relative_to(root).parts
        if path.name in _NOT_RESULTS or any(p.startswith(("checkpoint-", ".")) for p in parts[:-1]):
            continue
        if path.stat().st_size > MAX_RESULT_BYTES:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.append(f"{path}: not valid JSON, skipped")
            continue
        if isinstance(data, dict) and data.get("kind") in KINDS:
            found.append((path, data))
    return found, warnings


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Everything `dpolab report` shows of one run directory."""
    import yaml

    root = Path(path)
    if not root.is_dir():
        raise DpolabError(f"{path}: no such run directory")
    run = Run(root, name or root.resolve().name)
    config_path = root / "config.yaml"
    if config_path.exists():
        try:
            config = load_yaml(config_path.read_text(encoding="utf-8"))
            run.config = config if isinstance(config, dict) else None
        except yaml.YAMLError as err:
            run.warnings.append(f"{config_path}: not valid YAML ({str(err).splitlines()[0]})")
    metrics_path = root / "metrics.jsonl"
    if metrics_path.exists():
        run.metrics, warnings = read_metrics(metrics_path)
        run.warnings += warnings
    summary_path = root / "summary.json"
    if summary_path.exists():
        try:
            run.summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            run.warnings.append(f"{summary_path}: not valid JSON")
    run.results, warnings = find_results(root)
    run.warnings += warnings
    if not run.metrics and not run.results:
        run.warnings.append(f"{root}: no metrics.jsonl and no evaluation results")
    return run


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Runs named by their directory names, made unique with their parents' names when needed."""
    roots = [Path(p) for p in paths]
    names = [r.resolve().name for r in roots]
    for i, root in enumerate(roots):
        if names.count(names[i]) > 1:
            names[i] = f"{root.resolve().parent.name}/{root.resolve().name}"
    return [load_run(r, n) for r, n in zip(roots, names)]


def peak(steps: list[float], values: list[float]) -> tuple[float, float] | None:
    """(step, value) of the highest value, the earliest step on a tie."""
    if not values:
        return None
    best = max(range(len(values)), key=lambda i: (values[i], -steps[i]))
    return steps[best], values[best]


def config_value(config: dict[str, Any] | None, *paths: str) -> Any:
    """The first of the dotted `paths` present in the config."""
    for dotted in paths:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None
