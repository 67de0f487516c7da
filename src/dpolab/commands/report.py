"""`dpolab report RUN_DIR... --out report.html`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="one HTML page (and a Markdown twin) of training curves and evaluation results",
        description="Gathers each run directory's metrics.jsonl, summary.json, config.yaml and every evaluation "
        "result JSON below it (e.g. RUN_DIR/eval/*.json) into one self-contained HTML page; the plots are also "
        "written as PNG files beside it.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run directories")
    p.add_argument(
        "--out", default="report.html", help="HTML file (default: report.html); the .md twin beside it"
    )
    p.add_argument("--title", default="dpolab report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpolab.report import render_report

    files = render_report(args.runs, args.out, title=args.title)
    print(
        f"report: {files.html} (Markdown: {files.markdown}; {len(files.plots)} plots in {files.html.stem}_plots/)"
    )
    return 0
