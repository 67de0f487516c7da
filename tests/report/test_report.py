"""`dpolab report` on synthetic run directories: every plot is a valid embedded PNG, the peak is
marked, the evaluation results are found, and the Markdown twin links the PNG files."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from dpolab.analysis.layers import analyze_layers
from dpolab.analysis.tokens import token_analysis
from dpolab.cli import main
from dpolab.data.tokenize import TokenizedPair
from dpolab.evaluation.answer_files import Answer
from dpolab.evaluation.forgetting import forgetting
from dpolab.evaluation.judges import Judge, Judgement
from dpolab.evaluation.results import write_result
from dpolab.evaluation.winrate import winrate
from dpolab.report import render_report
from dpolab.testing import tiny_model

EVAL_ACC = [0.5, 0.625, 0.8125, 0.75, 0.6875]  # peak 0.8125 at step 30


class LongerJudge(Judge):
    spec = "test:longer"

    def judge(self, request):
        return Judgement("first" if len(request.first) > len(request.second) else "second", "")


def write_metrics(path: Path, *, layers: tuple[int, ...] = (), broken_line: bool = False) -> None:
    rows = []
    for i, acc in enumerate(EVAL_ACC):
        step = 10 * (i + 1)
        train = {
            "step": step,
            "split": "train",
            "epoch": step / 50,
            "loss": 0.69 - 0.05 * i,
            "rewards/chosen": 0.1 * i,
            "rewards/rejected": -0.1 * i,
            "rewards/margins": 0.2 * i,
            "rewards/accuracies": 0.5 + 0.05 * i,
            "logps/chosen": -20.0 - i,
            "logps/rejected": -22.0 - 2 * i,
            "learning_rate": 5e-4,
            "grad_norm": 1.5,
        }
        evaluation = {
            "step": step,
            "split": "eval",
            "epoch": step / 50,
            "loss": 0.7 - 0.04 * i,
            "rewards/chosen": 0.1,
            "rewards/rejected": -0.1,
            "rewards/margins": 0.2 * i,
            "rewards/accuracies": acc,
            "logps/chosen": -21.0,
            "logps/rejected": -23.0,
        }
        for k in layers:
            evaluation[f"layers/{k}/rewards/accuracies"] = acc - 0.01 * k
            evaluation[f"layers/{k}/loss"] = 0.69 - 0.01 * i
        rows += [train, evaluation]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if broken_line:
        text += '{"step": 60, "split": "tr'  # a run still writing
    path.write_text(text)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("runs")
    dpo, inter = root / "dpo", root / "intermediate"
    for run in (dpo, inter):
        (run / "eval").mkdir(parents=True)
        (run / "checkpoint-10").mkdir()
        (run / "checkpoint-10" / "trainer_state.json").write_text("{}")
    write_metrics(dpo / "metrics.jsonl", broken_line=True)
    write_metrics(inter / "metrics.jsonl", layers=(2, 3))
    (dpo / "config.yaml").write_text("loss:\n  method: dpo\n  beta: 0.1\ntraining:\n  output_dir: dpo\n")
    (inter / "config.yaml").write_text(
        "loss:\n  method: dpo\n  beta: 0.1\n  intermediate: {layers: [2, 3], gamma: 0.9}\n"
    )
    (dpo / "summary.json").write_text(json.dumps({"best_step": 30, "best_eval_rewards/accuracies": 0.8125}))
    # evaluation results made by the library itself
    a = [Answer(i, i + 1, f"q{i}", c, {}) for i, c in enumerate(["long answer", "s", "longer one"])]
    b = [Answer(i, i + 1, f"q{i}", c, {}) for i, c in enumerate(["short", "much longer", "x"])]
    write_result(dpo / "eval" / "winrate-vs-sft.json", winrate(a, b, LongerJudge(), names=("dpo", "sft")))
    reference = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=3, seed=0)
    policy = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=3, seed=1)
    pairs = [TokenizedPair([0, 10, 11], [20, 21, 1], [20, 30, 1]), TokenizedPair([0, 12], [40, 1], [50, 1])]
    write_result(
        inter / "eval" / "layers.json", analyze_layers({"intermediate": policy}, reference, pairs, beta=0.1)
    )
    write_result(inter / "eval" / "tokens.json", token_analysis({"intermediate": policy}, reference, pairs))
    write_result(
        dpo / "eval" / "forgetting.json",
        forgetting(policy, reference, tokenizer, ["The quick brown fox jumps over the lazy dog."]),
    )
    write_result(
        dpo / "eval" / "tasks.json",
        {
            "kind": "tasks",
            "schema": 1,
            "model": "dpo",
            "tasks": {"arc": {"n": 4, "acc": 0.5, "acc_norm": 0.75}, "gsm8k": {"n": 2, "exact_match": 0.5}},
        },
    )
    (dpo / "eval" / "notes.json").write_text('{"not": "a result"}')
    return dpo, inter


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_report_html_and_markdown(runs, tmp_path):
    files = render_report(list(runs), tmp_path / "out" / "report.html")
    page = files.html.read_text()
    parser = Images()
    parser.feed(page)
    # curves: accuracies, loss, margins, logps x2; per-layer: accuracies, loss; win rates, forgetting, layers, tokens
    assert len(parser.sources) == 11 == len(files.plots)
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.verify()
        assert image.format == "PNG"
    for png in files.plots:
        assert png.exists() and png.parent.name == "report_plots"
    assert "0.8125 @ step 30" in page  # the peak of eval rewards/accuracies
    assert "win rate" in page and "test:longer" in page and "[" in page
    assert "acc_norm" in page and ">0.75<" in page
    assert "Layer-wise DPO likelihood" in page and "Token-level log-probs" in page
    assert "skipped 1 unreadable line(s) (11)" in page  # the half-written metrics line
    assert "notes.json" not in page and "trainer_state" not in page
    markdown = files.markdown.read_text()
    linked = [line[line.index("](") + 2 : -1] for line in markdown.splitlines() if line.startswith("![")]
    assert len(linked) == 11 and all((files.html.parent / p).exists() for p in linked)
    assert "| dpo | dpo | 0.1 | - | 50 | 0.8125 @ step 30 |" in markdown
    assert "| intermediate | dpo | 0.1 | 2,3 | 50 |" in markdown


def test_cli(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out and out.with_suffix(".md").exists()
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_the_report_in_headless_chromium(runs, tmp_path, chromium_layout):
    """As a reader sees it, 800 CSS pixels wide (narrower than the report's widest tables): every
    plot loads, sharp on a 2× screen, none on another, nothing wider than the window (the wide
    tables scroll in their own box), and in the screenshot every plot is painted and the right
    margin is empty (conftest's `assert_layout`)."""
    files = render_report(list(runs), tmp_path / "report.html")
    layout, _ = chromium_layout(files.html, width=800)
    assert len(layout["images"]) == 11
    # the plots are shown at their drawn size (640 CSS pixels for 1280), not stretched or cut
    assert {(i["natural"], round(i["width"])) for i in layout["images"]} >= {(1280, 640)}
    page = files.html.read_text()
    assert page.count("<div class='table'><table>") == page.count("<table>") >= 5  # each in its box


def test_an_sft_run_is_labelled_sft(tmp_path):
    """An SFT run's config carries a loss section it does not use: the table says sft, no β."""
    run = tmp_path / "sft"
    run.mkdir()
    write_metrics(run / "metrics.jsonl")
    (run / "config.yaml").write_text("loss:\n  method: dpo\n  beta: 0.1\ntraining:\n  output_dir: sft\n")
    (run / "summary.json").write_text(json.dumps({"command": "sft", "method": None}))
    markdown = render_report([run], tmp_path / "report.html").markdown.read_text()
    assert "| sft | sft | - | - |" in markdown


def test_the_peak_is_marked_in_the_plot(runs, tmp_path, monkeypatch):
    """A star at each run's eval peak, its value in the legend (beside the star, two runs peaking
    at the same step wrote over each other)."""
    import dpolab.report.plots as plots
    from dpolab.report.runs import load_run

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    plots.plot_curves([load_run(r) for r in runs], "rewards/accuracies", tmp_path / "p.png", mark_peak=True)
    (ax,) = figures[0].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "dpo (eval; ★ peak 0.812 @ 30)" in labels
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == len(runs) and (list(stars[0].get_xdata()), list(stars[0].get_ydata())) == (
        [30],
        [0.8125],
    )


def test_the_win_rate_plot_draws_each_confidence_interval(tmp_path, monkeypatch):
    """Beside the win / tie / loss bars, each win rate as a dot with its bootstrap 95 % interval."""
    import dpolab.report.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    results = [
        {"win_fraction": 0.4, "tie_fraction": 0.2, "loss_fraction": 0.4, "win_rate": 0.5, "ci95": [0.3, 0.7]},
        {
            "win_fraction": 0.7,
            "tie_fraction": 0.0,
            "loss_fraction": 0.3,
            "win_rate": 0.7,
            "ci95": [0.62, 0.79],
        },
    ]
    plots.plot_winrates([("a vs b", results[0]), ("c vs d", results[1])], tmp_path / "w.png")
    (ax,) = figures[0].axes
    spans = []
    for container in ax.containers:
        if getattr(container, "has_xerr", False):
            (segments,) = container.lines[2]
            ((x0, y0), (x1, _)) = segments.get_segments()[0]
            spans.append((round(y0), round(min(x0, x1), 2), round(max(x0, x1), 2)))
    assert spans == [(1, 0.3, 0.7), (0, 0.62, 0.79)]  # the first result on top
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["win rate 0.500\n95% CI [0.30, 0.70]", "win rate 0.700\n95% CI [0.62, 0.79]"]
