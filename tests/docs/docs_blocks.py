"""The code blocks of README.md and docs/*.md, their markers, and the commands in them.

A block's marker is an HTML comment on the line before its fence (blank lines between allowed),
invisible on GitHub and in MkDocs:

    <!-- docs-test: run -->        a bash block: its commands are executed, in page order;
                                   a console block: each `$ ` command is executed and its
                                   output must be the lines shown (`...` stands for any lines)
    <!-- docs-test: sft -->        a yaml block: a config for `dpolab sft` (default: `dpolab train`)
    <!-- docs-test: skip: WHY -->  a block that is not checked at all (an accelerate config, say)

and one marker for a whole page, anywhere in it:

    <!-- docs-test: after README.md -->   the page's runnable blocks start in a copy of the
                                          folder the README's runnable blocks left (runs/sft ...)

Everything else is checked without running it (tests/docs/test_doc_commands.py). The rules are
written out for contributors in docs/contributing.md.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

_MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SHELLS = ("bash", "sh", "shell", "console")
# shell operators: a command holding one of these runs under bash, not in-process
OPERATORS = {"|", "||", "&&", ";", "&", "<", ">>", "(", ")", "<<"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # "" when unmarked

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def page_markers(page: Path) -> list[str]:
    """The page-level markers (`after PAGE`) of a page."""
    found = _MARKER.findall(page.read_text(encoding="utf-8"))
    return [m for m in found if m.startswith("after ")]


def read_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a page, with the marker right before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, marker, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        found = _MARKER.fullmatch(line.strip())
        fence = _FENCE.match(line)
        if found and not found.group(1).startswith("after "):
            marker = found.group(1)
        elif fence:
            indent, ticks, lang = fence.groups()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(ticks):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
                j += 1
            blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", marker))
            marker, i = "", j
        elif line.strip():
            marker = ""  # a marker belongs to the block right after it
        i += 1
    return blocks


def all_blocks(langs: tuple[str, ...]) -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page) if b.lang in langs]


def split_tokens(command: str) -> list[str]:
    """A command's words as the shell splits them, operators (`>`, `|`, `&&`) as words of their own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def shell_commands(text: str) -> list[str]:
    """The commands of a bash block: lines continued with a backslash joined, comments and blank
    lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if split_tokens(line)]


@dataclass(frozen=True)
class ConsoleStep:
    command: str
    output: list[str]  # the lines shown after it


def console_steps(text: str) -> list[ConsoleStep]:
    """A console block's `$ command` lines (continued with a backslash) and the output shown."""
    steps: list[ConsoleStep] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if not steps:
                raise ValueError(f"console block: output before the first `$ ` command: {lines[i]!r}")
            steps[-1].output.append(lines[i])
            i += 1
            continue
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        steps.append(ConsoleStep(command.strip(), []))
        i += 1
    return steps


def block_commands(block: Block) -> list[str]:
    if block.lang == "console":
        return [step.command for step in console_steps(block.text)]
    return shell_commands(block.text)


def dpolab_argv(tokens: list[str]) -> list[str] | None:
    """The arguments of the dpolab command a command line runs, if it runs one (up to the first
    shell operator): `dpolab ...`, `.venv/bin/dpolab ...`, `VAR=x dpolab ...`,
    `python -m dpolab ...`, `accelerate launch ... -m dpolab ...`, `torchrun ... -m dpolab ...`."""
    start = 0
    while start < len(tokens) and re.match(r"^[A-Za-z_]\w*=", tokens[start]):
        start += 1  # environment assignments
    argv = None
    if start < len(tokens) and Path(tokens[start]).name == "dpolab":
        argv = tokens[start + 1 :]
    else:
        for i in range(start, len(tokens) - 1):
            if tokens[i] in OPERATORS | {">"}:
                break
            if tokens[i] == "-m" and tokens[i + 1] == "dpolab":
                argv = tokens[i + 2 :]
                break
    if argv is None:
        return None
    ends = [i for i, token in enumerate(argv) if token in OPERATORS | {">"}]
    return argv[: ends[0]] if ends else argv


def _line_matches(expected: str, actual: str) -> bool:
    """One line against one: `...` inside a line stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.rstrip().split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether the output lines shown equal the actual ones: a line `...` stands for any number of
    lines, `...` inside a line for any text."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and _line_matches(expected[0], actual[0]) and matches(expected[1:], actual[1:])
