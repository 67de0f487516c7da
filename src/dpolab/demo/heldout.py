"""Held-out text the demo measures forgetting on (the practitioner study measured its DPO models'
loss on their pre-training validation text, SlimPajama).

- A pretrained model: docstrings of the Python standard library, real English prose that every
  machine with Python has, none of it in the demo's training data. (A model pre-trained on code
  may have read some of it; what the demo compares is the loss of models that all start from the
  same weights, before and after preference training, on the same tokens.)
- The tiny model: its vocabulary holds only the task's words and digits, so English text is
  nothing but unknown tokens to it. What it learned before preference training (its
  "pre-training") is SFT on the task's solved problems, the solutions given the problems (SFT
  scores the completion only); the held-out version of that text is the correct solutions of the
  test problems, which no training stage saw, each scored given its problem.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

# modules whose docstrings are plain prose (no long tables of options), in a fixed order
STDLIB_MODULES = (
    "json",
    "argparse",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "textwrap",
    "heapq",
    "bisect",
    "statistics",
    "fractions",
    "difflib",
    "shutil",
    "tempfile",
    "string",
)


def stdlib_docstrings(modules: Sequence[str] = STDLIB_MODULES) -> list[str]:
    """Each module's docstring and those of its public functions and classes defined in it, in a
    fixed order (dedented by `inspect.getdoc`; empty ones left out)."""
    documents = []
    for name in modules:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(dir(module)):
            value = getattr(module, attr)
            if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value) or inspect.isclass(value):
                docs.append(inspect.getdoc(value))
        documents += [d for d in docs if d and d.strip()]
    return documents


def task_texts(problems: Sequence[dict]) -> list[tuple[str, str]]:
    """The held-out problems as the tiny model learned the task in SFT: (problem, correct solution),
    the solution the text that is scored."""
    return [(p["prompt"], p["chosen"]) for p in problems]
