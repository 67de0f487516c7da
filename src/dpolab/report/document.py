"""A report as a list of blocks (headings, paragraphs, tables, images, code), rendered twice: as a
self-contained HTML page (images inlined as base64 PNG) and as Markdown (images linked to the PNG
files written beside it). `dpolab report` and the demo's report both build on it."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpolab.evaluation.results import fmt


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    summary: str
    text: str


Block = Heading | Para | Table | Image | Code


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}div.table{overflow-x:auto;max-width:100%}"""


def display_width(path: Path) -> int | None:
    """The CSS width a plot is meant to be shown at: its pixels at the 100 per inch it was drawn
    at, from the resolution saved in the PNG (plots are saved with 2 pixels per CSS pixel, sharp
    on high-resolution screens). None when the file says no resolution."""
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        dpi = image.info.get("dpi")
        width = image.width
    if not dpi or not dpi[0]:
        return None
    from dpolab.analysis.plots import DISPLAY_DPI

    return round(width * DISPLAY_DPI / float(dpi[0]))


def _cell(value: Any) -> str:
    return fmt(value, 4)


def to_html(blocks: Sequence[Block], title: str) -> str:
    out = [
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td class='num'>{_cell(v)}</td>"
                    if isinstance(v, int | float)
                    else f"<td>{html.escape(_cell(v))}</td>"
                    for v in row
                )
                + "</tr>"
                for row in b.rows
            )
            # in a box that scrolls sideways: a wide table never widens the page
            out.append(
                f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
            )
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            width = display_width(b.path)
            size = f" width='{width}'" if width else ""
            out.append(
                f"<figure><img src='data:image/png;base64,{data}'{size} alt='{html.escape(b.caption, quote=True)}'>"
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            out.append(
                f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(f"{b.text}\n")
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append(
                "|"
                + "|".join(
                    "---:"
                    if all(isinstance(r[i], int | float) for r in b.rows if r[i] is not None)
                    and any(r[i] is not None for r in b.rows)
                    else "---"
                    for i in range(len(b.headers))
                )
                + "|"
            )
            out.extend("| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b.rows)
            out.append("")
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({os.path.relpath(b.path, base).replace(os.sep, '/')})\n")
        elif isinstance(b, Code):
            out.append(f"<details><summary>{b.summary}</summary>\n\n```yaml\n{b.text}```\n\n</details>\n")
    return "\n".join(out)
