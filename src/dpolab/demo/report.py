"""The demo's report: whether the papers' findings showed at this scale, the table per model,
plots, and `summary.json` with every figure of the table keyed by model name."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from dpolab import __version__
from dpolab.analysis.plots import new_figure, plot_layers, plot_tokens, save_figure
from dpolab.data.io import write_json_atomic
from dpolab.demo.practice import practice_blocks, practice_findings
from dpolab.report.document import Heading, Image, Para, Table, to_html, to_markdown
from dpolab.report.plots import draw_win_rate_intervals, plot_curves
from dpolab.report.runs import load_run


def peak_rss_mib() -> float:
    """The process's peak resident set so far (the demo trains in-process), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


COLUMNS = [  # (key in the table row, header)
    ("pairs", "trained on"),
    ("accuracy/greedy", "accuracy (greedy)"),
    ("accuracy/sampled", "accuracy (T 0.3)"),
    ("chosen_logp_change", "Δ log p(chosen) vs SFT"),
    ("tokens/chosen_before_m", "chosen tokens before m"),
    ("tokens/chosen_from_m", "chosen tokens from m"),
    ("rewards/accuracies", "rewards/accuracies (eval)"),
    ("dpo_likelihood", "DPO likelihood (final layer)"),
    ("vs_sft/win", "vs SFT: win"),
    ("vs_sft/lose", "lose"),
    ("vs_sft/tie", "tie"),
]


def _verdict(shown: bool, partly: bool = False) -> str:
    return "Reproduced." if shown else ("Partly reproduced." if partly else "Not reproduced at this scale.")


def findings(results: dict[str, Any], intermediate_layers: list[int]) -> list[dict[str, Any]]:
    """The papers' findings the demo can check, each with `shown` (True / False) and a sentence
    with the numbers, whatever they say. Nothing here is forced."""
    table = results["models"]
    out = []
    sft, dpo, dpop = table.get("sft"), table.get("dpo-low"), table.get("dpop-low")
    if dpo and dpop:
        d, p = dpo["chosen_logp_change"], dpop["chosen_logp_change"]
        shown = d < 0 <= p
        out.append(
            {
                "finding": "Smaug, §3–4: on low-edit-distance pairs DPO lowers the chosen completion's log-prob below the "
                "reference's, DPOP keeps it at or above",
                "shown": shown,
                "text": f"DPO changed log p(chosen) by {d:+.3f} nats against the SFT reference, DPOP by {p:+.3f}. "
                + _verdict(shown, p > d),
            }
        )
    if sft and dpo and dpop:
        a0, a1, a2 = sft["accuracy/greedy"], dpo["accuracy/greedy"], dpop["accuracy/greedy"]
        shown = a1 < a0 and a2 > a1
        out.append(
            {
                "finding": "Smaug, Fig. 2 (MetaMath): DPO on low-edit pairs loses accuracy, DPOP does not lose as much",
                "shown": shown,
                "text": f"Greedy exact-match accuracy: SFT {a0:.1%}, DPO {a1:.1%}, DPOP {a2:.1%}. "
                + _verdict(shown),
            }
        )
    high = table.get("dpo-high")
    if sft and high:
        a0, a1 = sft["accuracy/greedy"], high["accuracy/greedy"]
        shown = a1 >= a0
        out.append(
            {
                "finding": "Smaug, Fig. 2 (ARC): on high-edit-distance pairs DPO does not lose accuracy",
                "shown": shown,
                "text": f"Greedy accuracy: SFT {a0:.1%}, DPO on high-edit pairs {a1:.1%} (its log p(chosen) changed by "
                f"{high['chosen_logp_change']:+.3f} nats). " + _verdict(shown),
            }
        )
    layers = results.get("layers", {}).get("low")
    if layers and "idpo-low" in layers["models"] and "dpo-low" in layers["models"]:
        numbers = layers["layers"]
        idpo = layers["models"]["idpo-low"]["dpo_likelihood"]
        plain = layers["models"]["dpo-low"]["dpo_likelihood"]

        def local_peak(k: int) -> bool:  # higher than both neighbours (the final layer: than the one below)
            i = numbers.index(k)
            return all(idpo[i] > idpo[j] for j in (i - 1, i + 1) if 0 <= j < len(idpo))

        peaks = [k for k in intermediate_layers if k in numbers and local_peak(k)]
        gains = {
            k: idpo[numbers.index(k)] - plain[numbers.index(k)] for k in intermediate_layers if k in numbers
        }
        final_ok = idpo[-1] >= plain[-1]
        shown = bool(peaks) and final_ok
        out.append(
            {
                "finding": "Intermediate DPO, Fig. 3: its layer-wise DPO likelihood peaks at the chosen intermediate layer, "
                "and its final-layer likelihood is at least DPO's",
                "shown": shown,
                "text": (
                    "The curve has a peak at layer " + ", ".join(map(str, peaks))
                    if peaks
                    else "The curve has no peak at the chosen layers "
                    + ", ".join(map(str, intermediate_layers))
                )
                + f" (its highest point: layer {numbers[max(range(len(idpo)), key=idpo.__getitem__)]} of {numbers[-1]}); "
                + "over DPO's curve it gains "
                + ", ".join(f"{v:+.4f} at layer {k}" for k, v in gains.items())
                + f"; final layer {idpo[-1]:.4f} vs DPO {plain[-1]:.4f}. "
                + _verdict(shown, final_ok or all(v > 0 for v in gains.values())),
            }
        )
    if results.get("practice"):  # the practitioner study (dpolab.demo.practice)
        out += practice_findings(results["practice"])
    return out


def plot_accuracy_and_winrates(
    table: dict[str, dict[str, Any]], winrates: dict[str, dict[str, Any]], path: Path
) -> Path:
    """The demo's headline numbers at a glance: each model's held-out accuracy (greedy and sampled)
    beside each comparison's win rate (ties ½) with its bootstrap 95 % interval."""
    fig, ax = new_figure(10.0, 4.0)
    ax.remove()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    names = list(table)
    for offset, (key, label, color) in zip(
        (-0.2, 0.2), (("accuracy/greedy", "greedy", "#2a6f9a"), ("accuracy/sampled", "T 0.3", "#9ac1dd"))
    ):
        values = [table[n].get(key) or 0.0 for n in names]
        bars = left.bar([i + offset for i in range(len(names))], values, 0.4, label=label, color=color)
        left.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7, padding=1)
    left.set_xticks(range(len(names)), names, fontsize=8, rotation=20)
    left.set_ylim(0, 1.1)
    left.set_ylabel("exact-match accuracy (held out)")
    left.set_title("Accuracy")
    left.legend(fontsize=8)
    comparisons = list(winrates)
    positions = list(range(len(comparisons)))
    right.bar(positions, [winrates[c]["win_rate"] for c in comparisons], 0.6, color="#bbd8a8")
    draw_win_rate_intervals(right, positions, [winrates[c] for c in comparisons], horizontal=False)
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    right.set_xticks(positions, [c.replace(" vs ", "\nvs ") for c in comparisons], fontsize=7)
    right.set_ylim(0, 1)
    right.set_ylabel("win rate (ties ½)")
    right.set_title("Pairwise win rates, 95% CI")
    right.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _accuracy_blocks(results: dict[str, Any], plots: Path) -> list:
    """The chart of accuracy and win rates, under the tables it draws."""
    if not results.get("winrates"):
        return []
    path = plot_accuracy_and_winrates(results["models"], results["winrates"], plots / "accuracy-winrates.png")
    caption = (
        "Held-out accuracy of each model; the win rate of each comparison with its bootstrap 95% interval"
    )
    return [Image(path, caption)]


def _introduction(task: dict[str, Any], model: dict[str, Any] | None) -> str:
    what = (
        f"{model['source']} ({model['parameters'] / 1e6:.0f} M parameters, {model['num_layers']} layers), a "
        f"pretrained model, on generated arithmetic problems rendered through its chat template: a short SFT on "
        f"the correct solutions, then preference training (LoRA adapters, the Intermediate DPO paper's Table 1)"
        if model
        else "A tiny Llama trained on generated arithmetic problems: SFT on the correct solutions, then "
        "preference training"
    )
    return (
        f"{what} from the SFT model on pairs whose rejected solution has one intermediate result wrong (low edit "
        f"distance, {100 * task['edit_distance']['low/mean']:.1f} % on average) or a wrong chain to a wrong answer "
        f"(high, {100 * task['edit_distance']['high/mean']:.1f} %)."
    )


def write_demo_report(
    out: Path,
    results: dict[str, Any],
    *,
    run_dirs: dict[str, Path],
    task: dict[str, Any],
    timings: dict[str, float],
    command: str,
    intermediate_layers: list[int],
    quick: bool = False,
    reused: bool = False,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write report.html, report.md, plots/ and summary.json under `out`; returns the summary.
    `reused`: some stages were finished by an earlier run (their memory is not this process's);
    `model`: the pretrained model's stage result (`dpolab demo --model`), None for the tiny one."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    found = findings(results, intermediate_layers)
    table = results["models"]
    blocks: list = [
        Heading(1, "dpolab demo"),
        Para(
            f"{datetime.date.today().isoformat()}, dpolab {__version__}, `{command}`. {_introduction(task, model)}"
        ),
        Heading(2, "What it shows"),
    ]
    if quick:
        blocks.append(
            Para(
                "This is a --quick run: every stage runs, but the model is trained too briefly (and, "
                "unless pretrained, is too small) for the findings below to mean anything. Run the same "
                "command without --quick for the real thing."
            )
        )
    for f in found:
        blocks.append(Para(f"{f['finding']}. {f['text']}"))  # the text ends with the verdict
    blocks += [
        Heading(2, "Models"),
        Table(
            ["model", *(h for _, h in COLUMNS)],
            [[name, *(row.get(k) for k, _ in COLUMNS)] for name, row in table.items()],
        ),
        Para(
            "Accuracy: exact match of the final answer on held-out problems. Δ log p(chosen): mean over eval "
            "pairs of log π(y_w|x) − log π_SFT(y_w|x) (summed over the completion). Token columns: mean "
            "per-token log-prob of the chosen solution before / from the first token where chosen and "
            "rejected differ (Smaug, Fig. 3). Win/lose/tie: the exact-answer judge, both orders."
        ),
    ]
    if results.get("winrates"):
        blocks += [
            Heading(2, "Pairwise comparisons (greedy answers, exact-answer judge)"),
            Table(
                ["comparison", "win", "lose", "tie", "win rate (ties ½)"],
                [
                    [k, v["wins"], v["losses"], v["ties"], v["win_rate"]]
                    for k, v in results["winrates"].items()
                ],
            ),
        ]
    blocks += _accuracy_blocks(results, plots)
    if results.get("practice"):
        blocks += practice_blocks(results["practice"], plots)
    images = []
    for kind, result in results.get("layers", {}).items():
        images.append(
            (
                plot_layers(result, plots / f"layers-{kind}.png"),
                f"DPO likelihood per layer against the SFT reference ({kind}-edit eval pairs)",
            )
        )
    if results.get("tokens"):
        images.append(
            (
                plot_tokens(results["tokens"], plots / "tokens-low.png"),
                "Mean per-token log-prob of the chosen solution before / from the first differing token",
            )
        )
    runs = [load_run(path, name) for name, path in run_dirs.items()]
    for key, title in (
        ("rewards/accuracies", "eval rewards/accuracies"),
        ("loss", "loss"),
        ("logps/chosen", "log p(chosen)"),
    ):
        path = plot_curves(
            [r for r in runs if r.name != "sft"],
            key,
            plots / f"curve-{key.replace('/', '-')}.png",
            mark_peak=key == "rewards/accuracies",
            title=title,
        )
        if path:
            images.append((path, f"training curves: {title}"))
    path = plot_curves(
        [r for r in runs if r.name == "sft"], "loss", plots / "curve-sft-loss.png", title="SFT loss"
    )
    if path:
        images.append((path, "SFT loss"))
    blocks += [Heading(2, "Plots"), *(Image(p, c) for p, c in images if p)]
    blocks += [
        Heading(2, "Time per stage"),
        Table(
            ["stage", "seconds"],
            [[k, round(v, 1)] for k, v in timings.items()] + [["total", round(sum(timings.values()), 1)]],
        ),
        Para(
            f"Peak resident memory of the demo's process: {peak_rss_mib():.0f} MiB"
            + (" (stages reused from an earlier run are not counted)." if reused else ".")
        ),
    ]
    (out / "report.html").write_text(to_html(blocks, "dpolab demo"), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(blocks, out), encoding="utf-8")
    summary = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "dpolab": __version__,
        "quick": quick,
        "model": model,
        "models": table,
        "findings": found,
        "task": task,
        "winrates": results.get("winrates", {}),
        "practice": results.get("practice"),
        "timings_s": timings,
        "total_s": sum(timings.values()),
        "peak_rss_mib": peak_rss_mib(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
