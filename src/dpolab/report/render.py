"""`dpolab report`: the blocks of a report on training runs (their summaries, curves and every
evaluation found below them), rendered by `dpolab.report.document`."""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dpolab import __version__
from dpolab.analysis.plots import plot_layers, plot_tokens
from dpolab.report.document import Block, Code, Heading, Image, Para, Table, to_html, to_markdown
from dpolab.report.plots import plot_curves, plot_forgetting, plot_layer_curves, plot_winrates
from dpolab.report.runs import Run, config_value, load_runs, peak

CURVES = [  # (metric, mark the eval peak)
    ("rewards/accuracies", True),
    ("loss", False),
    ("rewards/margins", False),
    ("logps/chosen", False),
    ("logps/rejected", False),
]


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)


class _Plots:
    """Numbered PNG paths in the plot folder."""

    def __init__(self, folder: Path):
        self.folder, self.count, self.written = folder, 0, []

    def path(self, name: str) -> Path:
        """Where the next plot goes (numbered when it is added)."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "plot"
        return self.folder / f"{self.count + 1:02d}-{slug}.png"

    def add(self, path: Path | None, caption: str, blocks: list[Block]) -> None:
        """Record a drawn plot (None: nothing was drawn)."""
        if path is not None:
            self.count += 1
            self.written.append(path)
            blocks.append(Image(path, caption))


def _rel(run: Run, path: Path) -> str:
    try:
        return str(path.relative_to(run.path))
    except ValueError:
        return str(path)


def _summary_blocks(runs: Sequence[Run]) -> list[Block]:
    rows = []
    for run in runs:
        steps, values = run.series("rewards/accuracies", "eval")
        best = peak(steps, values)
        all_steps = [r["step"] for r in run.metrics if isinstance(r.get("step"), int | float)]
        eval_loss = run.series("loss", "eval")[1]
        if (run.summary or {}).get("command") == "sft":  # its config's loss section plays no part
            method, beta, layers = "sft", "-", None
        else:
            method = config_value(run.config, "loss.method", "method") or (run.summary or {}).get("method")
            if isinstance(method, list):  # a weighted sum of methods
                method = "+".join(map(str, method))
            beta = config_value(run.config, "loss.beta", "beta")
            layers = config_value(run.config, "loss.intermediate.layers", "loss.intermediate_layers")
        rows.append(
            [
                run.name,
                method,
                beta,
                ",".join(map(str, layers)) if layers else "-",
                max(all_steps) if all_steps else None,
                f"{best[1]:.4f} @ step {best[0]:g}" if best else "-",
                eval_loss[-1] if eval_loss else None,
                len(run.results),
            ]
        )
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(
            [
                "run",
                "method",
                "β",
                "intermediate layers",
                "steps",
                "peak eval rewards/accuracies",
                "final eval loss",
                "results",
            ],
            rows,
        ),
    ]
    keys: list[str] = []
    for run in runs:
        for k, v in (run.summary or {}).items():
            if isinstance(v, int | float | str) and k not in keys:
                keys.append(k)
    if keys:
        blocks += [
            Para("Final figures (summary.json):"),
            Table(["run", *keys], [[run.name, *((run.summary or {}).get(k) for k in keys)] for run in runs]),
        ]
    return blocks


def _training_blocks(runs: Sequence[Run], plots: _Plots) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training curves")]
    before = len(blocks)
    for key, mark in CURVES:
        caption = f"{key} (solid: eval, dotted: train)" + ("; ★ the eval peak" if mark else "")
        plots.add(plot_curves(runs, key, plots.path(key), mark_peak=mark), caption, blocks)
    for run in runs:
        layer_metrics = run.layer_metrics()
        for metric in ("rewards/accuracies", "loss"):
            if metric in layer_metrics:
                path = plots.path(f"{run.name}-layers-{metric}")
                plots.add(
                    plot_layer_curves(run, metric, layer_metrics[metric], path),
                    f"{run.name}: {metric} of each intermediate layer (layers/<k>/{metric})",
                    blocks,
                )
    if len(blocks) == before:
        blocks.append(Para("No run has training metrics (metrics.jsonl)."))
    return blocks


def _winrate_blocks(runs: Sequence[Run], plots: _Plots) -> list[Block]:
    rows, bars = [], []
    for run in runs:
        for path, r in run.results_of("winrate"):
            ci = r.get("ci95")
            a, b = r.get("a", {}).get("name", "A"), r.get("b", {}).get("name", "B")
            rows.append(
                [
                    run.name,
                    _rel(run, path),
                    a,
                    b,
                    r.get("judge"),
                    r.get("wins"),
                    r.get("losses"),
                    r.get("ties"),
                    r.get("unparsed"),
                    r.get("win_rate"),
                    f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                    r.get("win_rate_no_ties"),
                ]
            )
            bars.append((f"{run.name}: {a} vs {b}\n({r.get('judge')})", r))
    if not rows:
        return []
    blocks: list[Block] = [
        Heading(3, "Win rates"),
        Para(
            "Counted for A against B; each pair judged in both orders, a win or loss only when both agree "
            "(else a tie); win rate counts ties as half."
        ),
        Table(
            [
                "run",
                "file",
                "A",
                "B",
                "judge",
                "wins",
                "losses",
                "ties",
                "unparsed",
                "win rate",
                "95% CI",
                "win rate (no ties)",
            ],
            rows,
        ),
    ]
    plots.add(plot_winrates(bars, plots.path("winrates")), "Win / tie / loss fractions", blocks)
    return blocks


def _tasks_blocks(runs: Sequence[Run]) -> list[Block]:
    rows = []
    for run in runs:
        for path, r in run.results_of("tasks"):
            for task, m in r.get("tasks", {}).items():
                rows.append(
                    [
                        run.name,
                        _rel(run, path),
                        r.get("model"),
                        task,
                        m.get("acc"),
                        m.get("acc_norm"),
                        m.get("exact_match"),
                        m.get("exact_match_flexible"),
                        m.get("n"),
                    ]
                )
    if not rows:
        return []
    return [
        Heading(3, "Downstream tasks"),
        Table(
            ["run", "file", "model", "task", "acc", "acc_norm", "exact_match", "exact_match (flexible)", "n"],
            rows,
        ),
    ]


def _forgetting_blocks(runs: Sequence[Run], plots: _Plots) -> list[Block]:
    rows, bars = [], []
    for run in runs:
        for path, r in run.results_of("forgetting"):
            rows.append(
                [
                    run.name,
                    _rel(run, path),
                    r["model"]["name"],
                    r["model"]["loss"],
                    r["reference"]["name"],
                    r["reference"]["loss"],
                    r.get("loss_difference"),
                    r.get("perplexity_ratio"),
                    r.get("n_tokens"),
                ]
            )
            bars.append((f"{run.name}\n{Path(str(r['model']['name'])).name}", r))
    if not rows:
        return []
    blocks: list[Block] = [
        Heading(3, "Forgetting"),
        Table(
            [
                "run",
                "file",
                "model",
                "loss",
                "reference",
                "reference loss",
                "difference",
                "perplexity ratio",
                "tokens",
            ],
            rows,
        ),
    ]
    plots.add(plot_forgetting(bars, plots.path("forgetting")), "Mean token loss on held-out text", blocks)
    return blocks


def _layers_blocks(runs: Sequence[Run], plots: _Plots) -> list[Block]:
    blocks: list[Block] = []
    for run in runs:
        for path, r in run.results_of("layers"):
            rows = []
            for name, m in r["models"].items():
                values = m["dpo_likelihood"]
                best = max(range(len(values)), key=lambda i: values[i])
                rows.append([name, values[-1], f"{values[best]:.4f} @ layer {r['layers'][best]}"])
            blocks += [
                Para(
                    f"{run.name} — {_rel(run, path)}: β = {r['beta']}, {r['n_pairs']} pairs, reference "
                    f"{r.get('reference')}"
                ),
                Table(["model", f"layer {r['layers'][-1]}", "highest"], rows),
            ]
            plots.add(
                plot_layers(r, plots.path(f"{run.name}-layers")),
                f"{run.name}: DPO likelihood per layer",
                blocks,
            )
    return [Heading(3, "Layer-wise DPO likelihood"), *blocks] if blocks else []


def _tokens_blocks(runs: Sequence[Run], plots: _Plots) -> list[Block]:
    blocks: list[Block] = []
    for run in runs:
        for path, r in run.results_of("tokens"):
            rows = [
                [name, s["chosen_before_m"]["mean"], s["chosen_from_m"]["mean"], s["rejected_from_m"]["mean"]]
                for name, s in r["models"].items()
            ]
            blocks += [
                Para(
                    f"{run.name} — {_rel(run, path)}: {r['n_pairs']} pairs, first differing token m at "
                    f"{r['m']['mean']:.1f} on average"
                ),
                Table(["model", "chosen before m", "chosen from m", "rejected from m"], rows),
            ]
            plots.add(
                plot_tokens(r, plots.path(f"{run.name}-tokens")),
                f"{run.name}: per-token log-probs around m",
                blocks,
            )
    return [Heading(3, "Token-level log-probs"), *blocks] if blocks else []


def build_blocks(runs: Sequence[Run], plot_dir: Path, title: str) -> tuple[list[Block], list[Path]]:
    plots = _Plots(plot_dir)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    blocks: list[Block] = [
        Heading(1, title),
        Para(f"{len(runs)} run(s); generated {created} by dpolab {__version__}."),
    ]
    blocks += _summary_blocks(runs)
    blocks += _training_blocks(runs, plots)
    evaluation = (
        _winrate_blocks(runs, plots)
        + _tasks_blocks(runs)
        + _forgetting_blocks(runs, plots)
        + _layers_blocks(runs, plots)
        + _tokens_blocks(runs, plots)
    )
    blocks += [
        Heading(2, "Evaluation"),
        *(
            evaluation
            or [
                Para(
                    "No evaluation results found (write them into the run directory, e.g. RUN_DIR/eval/*.json)."
                )
            ]
        ),
    ]
    for run in runs:
        if run.config:
            import yaml

            blocks.append(Code(f"{run.name}: config.yaml", yaml.safe_dump(run.config, sort_keys=False)))
    warnings = [w for run in runs for w in run.warnings]
    if warnings:
        blocks += [Heading(2, "Warnings"), *(Para(w) for w in warnings)]
    return blocks, plots.written


def render_report(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, title: str = "dpolab report"
) -> ReportFiles:
    """Write `out` (HTML, self-contained), its Markdown twin (`out` with .md) and the plots as PNG
    files in `<out stem>_plots/` beside them."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = load_runs(list(run_dirs))
    plot_dir = out.parent / f"{out.stem}_plots"
    blocks, plots = build_blocks(runs, plot_dir, title)
    out.write_text(to_html(blocks, title), encoding="utf-8")
    markdown = out.with_suffix(".md")
    markdown.write_text(to_markdown(blocks, out.parent), encoding="utf-8")
    return ReportFiles(out, markdown, plots)


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike = "report.html",
    *,
    title: str = "dpolab report",
) -> Path:
    """`render_report`, returning the HTML file's path (what `dpolab sweep` calls)."""
    return render_report(run_dirs, out, title=title).html
