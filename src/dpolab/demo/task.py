"""A generated task with verifiable answers, in the style of the Smaug paper's MetaMath pairs.

Each problem is a short arithmetic word problem: a start value and a few steps, each adding,
taking away or multiplying. Its solution is the chain of intermediate results, one line per step,
ending in a GSM8K-style final line (read by `dpolab.evaluation.answers.extract_final_answer`):

    prompt    Tom has 14 pens . He gets 9 more . He sells 1 . He multiplies them by 3 .
              How many pens does Tom have now ?
    chosen    14 + 9 = 23
              23 - 1 = 22
              22 * 3 = 66
              #### 66

Two dispreferred solutions come with each problem:

- LOW edit distance (Smaug's MetaMath construction): the result of ONE intermediate step (not the
  last) is written wrong on its own line (`14 + 9 = 27`); the next line still starts from the
  right value and nothing else changes, so the final answer stays right. One or two tokens of 20–27 differ: normalised edit distance
  3.7–9.5 %, mean ≈ 5.7 % at the default knobs (the paper's MetaMath pairs: 6.5 %).
- HIGH edit distance: a wrong chain to a wrong answer, as if every operand had been misread:
  each step's operand is another number and about a third of the operations are others, the chain is
  carried through consistently from the right start value, and it ends in a different answer.
  Normalised edit distance 26–75 %, mean ≈ 53 % at the default knobs (the paper's ARC: 90 %).

Texts are written so that `task_tokens` (the split the demo tokenizer uses) sees one token per
word, symbol and digit; the edit distances are measured on those tokens.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OPERATIONS = ("+", "-", "*")
_MAX_ATTEMPTS = 100  # redraws before a generator gives up on knobs that leave it no room
_MAX_REPEATS = 1000  # repeated prompts in a row before `make_splits` decides the knobs allow no more

# The token split of the demo tokenizer: `####`, single digits, words, any other single character;
# each may carry the one space before it. `"".join(task_tokens(t)) == t` for every task text.
TOKEN_PATTERN = r" ?(?:####|\d|[A-Za-z]+|\n|[^\s\dA-Za-z])"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

NAMES = (
    ("Mia", "She", "her"),
    ("Tom", "He", "his"),
    ("Ana", "She", "her"),
    ("Sam", "He", "his"),
    ("Lea", "She", "her"),
    ("Ben", "He", "his"),
    ("Zoe", "She", "her"),
    ("Max", "He", "his"),
)
ITEMS = ("apples", "coins", "books", "cards", "pens", "shells", "stamps", "marbles")

# What the problem says for each operation; `{n}` is the operand, `{P}` the pronoun.
_PHRASES = {
    "+": ("{P} finds {n} more .", "{P} buys {n} more .", "{P} gets {n} more ."),
    "-": ("{P} gives away {n} .", "{P} loses {n} .", "{P} sells {n} ."),
    "*": ("{P} ends up with {n} times as many .", "{P} multiplies them by {n} ."),
}


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs.

    min_steps, max_steps: number of operations per problem (each at least 2, so that there is an
        intermediate result to corrupt).
    max_start: the start value is drawn from 1..max_start.
    max_operand: operands of + and - are drawn from 1..max_operand.
    max_multiplier: operands of * are drawn from 2..max_multiplier.
    max_value: every intermediate result stays within 0..max_value.
    operations: the operations used, a subset of `OPERATIONS`.
    """

    min_steps: int = 3
    max_steps: int = 3
    max_start: int = 20
    max_operand: int = 9
    max_multiplier: int = 3
    max_value: int = 99
    operations: tuple[str, ...] = OPERATIONS

    def __post_init__(self) -> None:
        if not 2 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 2 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not self.operations or not set(self.operations) <= set(OPERATIONS):
            raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations}")
        if not 1 <= self.max_start <= self.max_value or self.max_operand < 1 or self.max_multiplier < 2:
            raise ValueError("need 1 <= max_start <= max_value, max_operand >= 1 and max_multiplier >= 2")


@dataclass(frozen=True)
class Step:
    op: str
    operand: int
    before: int
    after: int

    def line(self, result: int | None = None) -> str:
        """`a op n = b`, or with `result` written in place of the true `b`."""
        return f"{self.before} {self.op} {self.operand} = {self.after if result is None else result}"


@dataclass
class Problem:
    """One generated problem with its three solutions and the pairs' measured edit distances."""

    prompt: str
    chosen: str
    rejected_low: str
    rejected_high: str
    answer: int
    wrong_answer: int  # the answer the high-edit rejected solution ends in
    corrupted_step: int  # 0-based index of the step whose result the low-edit rejected states wrongly
    steps: list[Step] = field(default_factory=list)
    low_edit_distance: float = 0.0
    high_edit_distance: float = 0.0

    def pair(self, kind: str) -> dict[str, str]:
        """The standard-format preference record (`prompt`, `chosen`, `rejected`) of `kind` low|high."""
        if kind not in ("low", "high"):
            raise ValueError(f"kind must be 'low' or 'high', got {kind!r}")
        rejected = self.rejected_low if kind == "low" else self.rejected_high
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": rejected}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Tokens and edit distance
# ----------------------------------------------------------------------------------------------


def task_tokens(text: str) -> list[str]:
    """The tokens the demo tokenizer makes of `text` (spaces kept on the token they precede)."""
    return _TOKEN_RE.findall(text)


def task_edit_distance(a: str, b: str) -> float:
    """Token-level Levenshtein distance of two texts divided by the longer one's length (Smaug; docs/notes.md)."""
    from dpolab.data.stats import normalised_edit_distance as token_distance

    return token_distance(task_tokens(a), task_tokens(b))


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _apply(op: str, a: int, n: int) -> int:
    return a + n if op == "+" else a - n if op == "-" else a * n


def _operand_range(op: str, value: int, config: TaskConfig) -> range:
    """The operands that keep `value op n` within 0..max_value."""
    if op == "+":
        return range(1, min(config.max_operand, config.max_value - value) + 1)
    if op == "-":
        return range(1, min(config.max_operand, value) + 1)
    return range(2, min(config.max_multiplier, config.max_value // max(value, 1)) + 1)


class _DeadEnd(Exception):
    """No operation keeps the value within the knobs' range (e.g. only `-` at 0)."""


def _random_steps(rng: random.Random, start: int, num_steps: int, config: TaskConfig) -> list[Step]:
    steps, value = [], start
    for _ in range(num_steps):
        ops = [op for op in config.operations if len(_operand_range(op, value, config)) > 0]
        if not ops:
            raise _DeadEnd
        op = rng.choice(ops)
        n = rng.choice(_operand_range(op, value, config))
        steps.append(Step(op, n, value, _apply(op, value, n)))
        value = steps[-1].after
    return steps


def _solution(steps: Sequence[Step], *, answer: int, corrupt: tuple[int, int] | None = None) -> str:
    """The solution text; `corrupt = (step index, wrong result)` states that step's result wrongly."""
    lines = [s.line(corrupt[1] if corrupt and corrupt[0] == i else None) for i, s in enumerate(steps)]
    return "\n".join([*lines, f"#### {answer}"])


def _wrong_result(rng: random.Random, value: int, config: TaskConfig) -> int:
    """A plausible wrong result near `value` (a slip of 1..9), never negative, never `value`."""
    candidates = [value + d for d in range(-9, 10) if d != 0 and 0 <= value + d <= config.max_value]
    return rng.choice(candidates)


def _wrong_chain(rng: random.Random, steps: Sequence[Step], config: TaskConfig) -> list[Step]:
    """The chain with every operand misread (another number) and each operation kept or swapped,
    carried through consistently from the right start value; never below 0."""
    wrong: list[Step] = []
    value = steps[0].before
    for s in steps:
        ops = [op for op in config.operations if len(_operand_range(op, value, config)) > 0]
        op = s.op if s.op in ops and rng.random() < 0.5 else rng.choice(ops) if ops else "+"
        choices = [n for n in _operand_range(op, value, config) if n != s.operand]
        if not choices:  # the only operand in range is the right one: misread it as one more, added
            op, choices = "+", [s.operand + 1]
        n = rng.choice(choices)
        wrong.append(Step(op, n, value, _apply(op, value, n)))
        value = wrong[-1].after
    return wrong


def _prompt(rng: random.Random, start: int, steps: Sequence[Step]) -> str:
    name, pronoun, _ = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    sentences = [f"{name} has {start} {item} ."]
    sentences += [rng.choice(_PHRASES[s.op]).format(P=pronoun, n=s.operand) for s in steps]
    sentences.append(f"How many {item} does {name} have now ?")
    return " ".join(sentences) + "\n"


def generate_problem(rng: random.Random, config: TaskConfig = TaskConfig()) -> Problem:
    """One problem drawn with `rng` (all randomness comes from it)."""
    for _ in range(_MAX_ATTEMPTS):
        num_steps = rng.randint(config.min_steps, config.max_steps)
        start = rng.randint(1, config.max_start)
        try:
            steps = _random_steps(rng, start, num_steps, config)
            break
        except _DeadEnd:
            continue
    else:
        raise ValueError(f"{config} keeps running out of operations that stay in range; loosen the knobs")
    answer = steps[-1].after
    prompt = _prompt(rng, start, steps)
    chosen = _solution(steps, answer=answer)

    # low: one intermediate result (any step but the last) stated wrongly; the answer is kept
    corrupted_step = rng.randrange(num_steps - 1)
    wrong_value = _wrong_result(rng, steps[corrupted_step].after, config)
    rejected_low = _solution(steps, answer=answer, corrupt=(corrupted_step, wrong_value))

    # high: a consistent but wrong chain, redrawn until it ends in another answer
    for _ in range(_MAX_ATTEMPTS):
        wrong = _wrong_chain(rng, steps, config)
        if wrong[-1].after != answer:
            break
    else:
        raise ValueError(f"{config}: every misread chain ends in the right answer; widen the knobs")
    rejected_high = _solution(wrong, answer=wrong[-1].after)

    return Problem(
        prompt=prompt,
        chosen=chosen,
        rejected_low=rejected_low,
        rejected_high=rejected_high,
        answer=answer,
        wrong_answer=wrong[-1].after,
        corrupted_step=corrupted_step,
        steps=list(steps),
        low_edit_distance=task_edit_distance(chosen, rejected_low),
        high_edit_distance=task_edit_distance(chosen, rejected_high),
    )


@dataclass(frozen=True)
class SplitSizes:
    train: int = 4000
    eval: int = 200
    test: int = 200


def make_splits(
    *, seed: int, sizes: SplitSizes = SplitSizes(), config: TaskConfig = TaskConfig()
) -> dict[str, list[Problem]]:
    """Train / eval / test problems, seeded. No prompt occurs twice, within or across splits (a
    repeated prompt is drawn again), so held-out problems are unseen in training.

    Test is drawn first, then eval, then train: the held-out problems of a seed stay the same
    whatever the training set's size."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    for name, size in (("test", sizes.test), ("eval", sizes.eval), ("train", sizes.train)):
        problems: list[Problem] = []
        repeats = 0  # draws in a row that gave an existing prompt
        while len(problems) < size:
            problem = generate_problem(rng, config)
            if problem.prompt in seen:
                repeats += 1
                if repeats > _MAX_REPEATS:
                    raise ValueError(
                        f"cannot draw {size} distinct {name} problems ({len(seen)} drawn so far); widen the task's knobs"
                    )
                continue
            repeats = 0
            seen.add(problem.prompt)
            problems.append(problem)
        splits[name] = problems
    return {name: splits[name] for name in ("train", "eval", "test")}


def edit_distance_stats(problems: Sequence[Problem]) -> dict[str, float]:
    """Mean, min and max normalised edit distance of the low- and high-edit pairs."""
    stats: dict[str, float] = {}
    for kind in ("low", "high"):
        values = [getattr(p, f"{kind}_edit_distance") for p in problems]
        stats[f"{kind}/mean"] = sum(values) / len(values) if values else float("nan")
        stats[f"{kind}/min"] = min(values, default=float("nan"))
        stats[f"{kind}/max"] = max(values, default=float("nan"))
    return stats


def write_splits(out_dir: str | Path, splits: dict[str, list[Problem]]) -> dict[str, Path]:
    """Write `{split}.problems.jsonl` (everything) and `{split}.{low,high}.jsonl` (standard-format
    pairs that `dpolab train` reads) under `out_dir`; returns the paths by name."""
    from dpolab.data.io import write_jsonl_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, problems in splits.items():
        paths[f"{split}.problems"] = out / f"{split}.problems.jsonl"
        write_jsonl_atomic(paths[f"{split}.problems"], [p.to_dict() for p in problems])
        for kind in ("low", "high"):
            paths[f"{split}.{kind}"] = out / f"{split}.{kind}.jsonl"
            write_jsonl_atomic(paths[f"{split}.{kind}"], [p.pair(kind) for p in problems])
    return paths
