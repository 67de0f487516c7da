"""The judges package: each judge module imports only `judges.base` (no import circle), importing
the package costs neither the HTTP client nor torch, and a new judge is one module plus one entry
in `JUDGES`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dpolab.evaluation.judges as judges
from dpolab.errors import DpolabError
from dpolab.evaluation.judges import JUDGES, JudgeKind, JudgeRequest, build_judge

PACKAGE = Path(judges.__file__).parent
JUDGE_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "base"))


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_each_judge_module_imports_only_base():
    assert JUDGE_MODULES == ["exact", "local", "openai"]
    package = "dpolab.evaluation.judges"
    for name in JUDGE_MODULES:
        inside = {m for m in imported_modules(PACKAGE / f"{name}.py") if m.startswith(package)}
        # `from dpolab.evaluation.judges.base import Judge` records the module and module.Judge
        assert {m for m in inside if not m.startswith(f"{package}.base")} == set(), name
    base = {m for m in imported_modules(PACKAGE / "base.py") if m.startswith(package)}
    assert base == set()


@pytest.mark.parametrize("module", ["base", "exact", "local", "openai"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    code = f"import dpolab.evaluation.judges.{module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_importing_the_package_loads_no_http_client_and_no_torch():
    code = (
        "import sys, dpolab.evaluation.judges, dpolab.evaluation.winrate\n"
        "print(sorted(m for m in ('httpx2', 'torch', 'dpolab.evaluation.judges.openai') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_entry_names_a_builder():
    for name, kind in JUDGES.items():
        module, _, function = kind.builder.partition(":")
        assert module.startswith("dpolab.evaluation.judges.") and callable(
            getattr(__import__(module, fromlist=[function]), function)
        ), name


def test_an_option_of_another_kind_is_an_error_not_ignored():
    with pytest.raises(
        DpolabError, match=r"the judge exact: does not take base_url \(an option of openai:MODEL"
    ):
        build_judge("exact:", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(DpolabError, match=r"the judge openai:m does not take colour$"):
        build_judge("openai:m", base_url="http://127.0.0.1:9/v1", colour="red")
    with pytest.raises(DpolabError, match="unknown judge 'hf:'; write openai:MODEL, hf:PATH_OR_ID, rm:"):
        build_judge("hf:")


def test_a_new_judge_is_one_module_and_one_entry(tmp_path, monkeypatch):
    (tmp_path / "echo_judge.py").write_text(
        "from dpolab.evaluation.judges.base import Judge, Judgement\n"
        "class EchoJudge(Judge):\n"
        "    def __init__(self, spec, word):\n"
        "        self.spec, self.word = spec, word\n"
        "    def judge(self, request):\n"
        "        return Judgement('first' if self.word in request.first else 'second', self.word)\n"
        "def build(spec, target, options):\n"
        "    return EchoJudge(spec, target)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(JUDGES, "echo", JudgeKind("echo:WORD", "echo_judge:build"))
    judge = build_judge("echo:yes")
    assert judge.spec == "echo:yes"
    assert judge.judge(JudgeRequest("q", "no", "yes")).verdict == "second"
    with pytest.raises(DpolabError, match=r"or echo:WORD$"):
        build_judge("nothing:")
