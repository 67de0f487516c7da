"""`dpolab report`: one self-contained HTML page (and a Markdown twin) of training curves and
evaluation results of one or more run directories.

    from dpolab.report import render_report
    paths = render_report(["runs/dpo", "runs/dpop"], "report.html")
"""

from dpolab.report.render import ReportFiles, render_report, write_report

__all__ = ["ReportFiles", "render_report", "write_report"]
