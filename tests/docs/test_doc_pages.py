"""The pages hang together: every page of docs/ is in mkdocs.yml's nav and every nav entry exists,
docs/index.md and the README link every page, every relative link of README.md and docs/ leads to
a file of the repository, and `mkdocs build` ends without a warning."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from docs_blocks import DOCS, PAGES, REPO

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


NAV = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are examples, not links)."""
    text = re.sub(r"^(\s*)(`{3,}|~{3,}).*?^\1\2", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    """The relative link targets of a page, without their #anchor."""
    found = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    targets = [t.split("#")[0] for t in found if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    return [t for t in targets if t]


def test_every_page_is_in_the_nav_once():
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(set(NAV)) == sorted(NAV), "a page is listed twice in mkdocs.yml"
    missing = [p for p in pages if p not in NAV]
    assert not missing, f"add to mkdocs.yml's nav: {', '.join(missing)}"


def test_every_nav_entry_exists():
    absent = [p for p in NAV if not (DOCS / p).exists()]
    assert not absent, f"mkdocs.yml's nav lists pages that docs/ lacks: {', '.join(absent)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path = (page.parent / target).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to what does not exist: {', '.join(broken)}"


@pytest.mark.parametrize("index", [REPO / "README.md", DOCS / "index.md"], ids=lambda p: p.name)
def test_the_readme_and_the_index_link_every_page(index):
    linked = {(index.parent / t).resolve() for t in links(index)}
    pages = {p.resolve() for p in DOCS.glob("*.md")}
    unlinked = sorted(p.name for p in pages - linked if p != index.resolve())
    assert not unlinked, f"{index.name} does not link {', '.join(unlinked)}"


def test_the_links_are_found():
    """The link reader itself: inline links found, code and URLs left alone."""
    page = "[a](training.md#resuming) `[b](nope.md)` [c](https://x.org)\n```\n[d](gone.md)\n```\n[e](../README.md)"
    assert [t.split("#")[0] for t in _LINK.findall(_prose(page))] == [
        "training.md",
        "https://x.org",
        "../README.md",
    ]


def test_the_site_builds_without_warnings(tmp_path, caplog):
    """`mkdocs build` over mkdocs.yml: no warning."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(config_file=str(REPO / "mkdocs.yml"), site_dir=str(tmp_path / "site"))
    with caplog.at_level(logging.WARNING, logger="mkdocs"):
        build(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "training" / "index.html").is_file()
