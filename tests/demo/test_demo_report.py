"""The demo's report as people look at it: the chart of accuracy and win rates (each win rate with
its 95 % interval) under the tables, and the page in headless Chromium (conftest's checks)."""

from __future__ import annotations

from dpolab.demo.report import COLUMNS, write_demo_report

ACCURACY = {"sft": 0.62, "dpo-low": 0.41, "dpop-low": 0.6, "dpo-high": 0.64}
WINRATES = {
    "dpo-low vs sft": {"wins": 5, "losses": 14, "ties": 13, "win_rate": 0.359, "ci95": [0.25, 0.47]},
    "dpop-low vs sft": {"wins": 9, "losses": 8, "ties": 15, "win_rate": 0.516, "ci95": [0.41, 0.62]},
    "dpo-high vs sft": {"wins": 10, "losses": 9, "ties": 13, "win_rate": 0.516, "ci95": [0.39, 0.64]},
}


def results():
    table = {}
    for name, accuracy in ACCURACY.items():
        row = {key: 0.5 for key, _ in COLUMNS}
        row.update({"pairs": 64, "accuracy/greedy": accuracy, "accuracy/sampled": accuracy - 0.05})
        table[name] = row
    return {"models": table, "winrates": WINRATES}


def write(tmp_path):
    return write_demo_report(
        tmp_path,
        results(),
        run_dirs={},
        task={"edit_distance": {"low/mean": 0.05, "high/mean": 0.4}},
        timings={"sft": 1.0},
        command="dpolab demo",
        intermediate_layers=[2],
    )


def test_the_report_has_the_chart_of_accuracy_and_win_rates(tmp_path, monkeypatch):
    import dpolab.demo.report as report

    drawn = []
    real = report.plot_accuracy_and_winrates
    monkeypatch.setattr(report, "plot_accuracy_and_winrates", lambda *args: drawn.append(args) or real(*args))
    write(tmp_path)
    (table, winrates, path) = drawn[0]
    assert list(table) == list(ACCURACY) and winrates == WINRATES and path.exists()
    markdown = (tmp_path / "report.md").read_text()
    assert "![Held-out accuracy of each model; the win rate of each comparison" in markdown
    # the chart comes after the tables it draws, the table of models is as before
    assert markdown.index("| model | trained on |") < markdown.index("](plots/accuracy-winrates.png)")


def test_the_chart_draws_each_win_rate_with_its_interval(tmp_path, monkeypatch):
    import dpolab.demo.report as report

    figures = []
    original = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig) or original(fig, path))
    report.plot_accuracy_and_winrates(results()["models"], WINRATES, tmp_path / "chart.png")
    (fig,) = figures
    accuracy, rates = fig.axes
    heights = sorted(round(p.get_height(), 3) for p in accuracy.patches)
    assert heights == sorted(
        [round(a, 3) for a in ACCURACY.values()] + [round(a - 0.05, 3) for a in ACCURACY.values()]
    )
    # each comparison's error bar spans its ci95 around its win rate
    bars = [c for c in rates.containers if hasattr(c, "has_yerr") and c.has_yerr]
    spans = []
    for container in bars:
        (segments,) = container.lines[2]
        (low, high) = sorted(segments.get_segments()[0][:, 1])
        spans.append((round(low, 3), round(high, 3)))
    assert spans == [tuple(v["ci95"]) for v in WINRATES.values()]


def test_the_demo_report_in_headless_chromium(tmp_path, chromium_layout):
    write(tmp_path)
    layout, _ = chromium_layout(tmp_path / "report.html", width=800)
    assert len(layout["images"]) == 1
