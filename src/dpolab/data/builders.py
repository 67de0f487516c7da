"""The Smaug paper's paired datasets, built from the raw MetaMathQA, ARC and HellaSwag rows.

- metamath (`query`, `response`): prompt = the query; chosen = the response; rejected = the
  response with ONE intermediate calculation's result changed to a plausible wrong number. Later
  uses of that number and the final answer line (`The answer is: X`, `#### X`) stay as they were,
  and an equation whose result is the final answer is never the one changed. A row with nothing
  to corrupt is skipped and reported (row numbers and count), whatever `on_bad_rows` says: it is
  a valid row this builder can make no pair from, not bad input.
- arc (`question`, `choices: {text, label}`, `answerKey`): one pair per wrong choice (three for
  four choices); chosen = the correct choice's text.
- hellaswag (`ctx`, `endings`, `label`): one pair per wrong ending; chosen = the labelled ending.

Prompt format (override with `template=` / `--template`, `delimiter=` / `--delimiter`): the prompt
is `template` filled with the row's fields, each completion is `delimiter` + its text. Defaults:
metamath `"{query}"` + `"\\n"`; arc `"Question: {question}\\nAnswer:"` + `" "` (the
lm-evaluation-harness ARC format); hellaswag `"{ctx}"` + `" "` (the ending continues the sentence).
The delimiter sits at the start of the completions, as TRL's `extract_prompt` leaves it, so that a
leading space joins the first word's token.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dpolab.data.formats import BadRow, PreferenceExample
from dpolab.data.io import read_rows
from dpolab.data.pairs import BadRowPolicy, BadRowReport, SkippedRow, no_pairs_error
from dpolab.errors import DpolabError

BUILDER_NAMES = ("metamath", "arc", "hellaswag")
TEMPLATES = {"metamath": "{query}", "arc": "Question: {question}\nAnswer:", "hellaswag": "{ctx}"}
DELIMITERS = {"metamath": "\n", "arc": " ", "hellaswag": " "}

NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
# `= 24`, `= $110`, `=\$5.50`, `=-3` (not `<=`, `>=`, `!=`, `==`); group 1 the number without sign
_RESULT = re.compile(r"(?<![<>!=])=(?!=)[ \t]*(?:\\?\$)?[ \t]*-?(" + NUMBER + r")")
# what may not follow a result: the expression goes on (`= 5 * 2`, `= 3/4`, `= 2^3`, `= 2:30`)
_CONTINUES = re.compile(r"[ \t]*(?:[-+*/×÷^(:]\s*[\d($\\]|\\times|\\cdot|\\div|[x×][ \t]*\d|\d)")
# an arithmetic step in the left-hand side
_OPERATION = re.compile(
    r"[\d)%}][ \t]*(?:[-+*/×÷^]|\\times|\\cdot|\\div|x(?=[ \t]*\\?\$?\d))|\\frac|\\sqrt|\d%? of "
)
# a one-letter unknown in an equation (`2x + 3 = 11`, `(x - 12) / 2 = 42`, `y = 5`): a letter
# standing alone (not in a word, not a LaTeX command) next to an operator, a bracket or (after it) a
# coefficient; `x` between numbers is a multiplication (`5 x 3`, `2x3`), not an unknown
_UNKNOWN = re.compile(
    r"(?<![A-Za-z\\])(?:(?<=[-+*/^(=\d])|(?<=[-+*/^(=\d][ \t]))(?!x[ \t]*\d)[A-Za-z](?![A-Za-z])"
    r"|(?<![A-Za-z\\])(?!x[ \t]*\d)[A-Za-z](?![A-Za-z(])(?=[ \t]*[-+*/^)])"
)
_FINAL_LINE = re.compile(r"^[ \t]*(?:The answer is:|####)(.*)$", re.MULTILINE)
_NUMBER_RE = re.compile(NUMBER)


@dataclass
class Corruption:
    """Where a response was changed: `text[start:end]` was `original` and became `replacement`."""

    start: int
    end: int
    original: str
    replacement: str


def _value(number: str) -> Decimal:
    return Decimal(number.replace(",", ""))


def final_answer_values(response: str) -> set[Decimal]:
    """The numbers on the final answer lines (`The answer is: 72`, `#### 72`)."""
    values = set()
    for match in _FINAL_LINE.finditer(response):
        values.update(_value(n) for n in _NUMBER_RE.findall(match.group(1)))
    return values


def result_candidates(response: str) -> list[tuple[int, int]]:
    """Spans `(start, end)` of the numbers that are the result of an intermediate calculation:
    the right-hand side of an equation whose left-hand side holds an arithmetic step on numbers
    only (no unknown such as `x`), not followed by more of the expression, not on a final answer
    line and not equal to the final answer."""
    finals = final_answer_values(response)
    final_lines = [(m.start(), m.end()) for m in _FINAL_LINE.finditer(response)]
    spans = []
    for match in _RESULT.finditer(response):
        start, end = match.span(1)
        if any(lo <= start < hi for lo, hi in final_lines):
            continue
        if _CONTINUES.match(response, end):
            continue
        line_start = response.rfind("\n", 0, match.start()) + 1
        lhs = response[line_start : match.start()]
        lhs = lhs[lhs.rfind("=") + 1 :]  # chained `a + b = c * d = e`: the step just before this `=`
        if not _OPERATION.search(lhs):
            continue  # `x = 5` states a value; it is not a calculation's result
        if _UNKNOWN.search(lhs):
            continue  # `2x + 32 = 48` is the problem's given equation, solved later: not a result
        if _value(match.group(1)) in finals:
            continue  # the final answer's own equation stays correct
        spans.append((start, end))
    if not final_lines and spans:
        spans.pop()  # no answer line: the last result is taken for the final answer
    return spans


def wrong_number(number: str, rng: random.Random) -> str:
    """A plausible wrong value for `number` (digits, optional `,` groups and decimals, no sign),
    in the same format: as many decimals, commas kept for values ≥ 1000, never equal, never ≤ 0.

    Either the last digit is changed (numbers without trailing zeros), or the value moves by
    1–10 %, at least one step, in steps of its last significant place: `27.00` moves in whole
    units (`26.00`), `0.20` in tenths (`0.30`), `4,000` in hundreds (`4,300`), `24` in units.
    """
    digits, _, fraction = number.replace(",", "").partition(".")
    decimals = len(fraction)
    if fraction.rstrip("0"):
        step = Decimal(1).scaleb(-len(fraction.rstrip("0")))
    elif fraction:
        step = Decimal(1)
    else:
        trailing_zeros = len(digits) - len(digits.rstrip("0"))
        step = Decimal(1).scaleb(max(0, trailing_zeros - 1))
    last_digit_changes = not number.endswith("0")
    value = _value(number)
    for _ in range(100):
        if last_digit_changes and rng.random() < 0.4:
            new = _value(number[:-1] + rng.choice([d for d in "0123456789" if d != number[-1]]))
        else:
            steps = max(1, int(value * Decimal(rng.uniform(0.01, 0.10)) / step))
            new = value + rng.choice((-1, 1)) * steps * step
        if new != value and new > 0:
            return f"{new:,.{decimals}f}" if "," in number else f"{new:.{decimals}f}"
    raise AssertionError(f"no wrong value found for {number!r}")  # unreachable: + one step always works


def corrupt_intermediate_result(response: str, rng: random.Random) -> tuple[str, Corruption] | None:
    """The response with one intermediate result (chosen at random) replaced by a wrong number, and
    where; None when there is no intermediate result to corrupt.

    In GSM8K's calculator style `48/2 = <<48/2=24>>24`, the annotation and the number after it
    are one result and change together."""
    spans = result_candidates(response)
    if not spans:
        return None
    start, end = rng.choice(spans)
    original = response[start:end]
    replacement = wrong_number(original, rng)
    text = response[:start] + replacement + response[end:]
    after = f">>{original}"
    if text.startswith(after, start + len(replacement)):  # <<...=24>>24: the visible copy too
        at = start + len(replacement) + 2
        text = text[:at] + replacement + text[at + len(original) :]
    return text, Corruption(start, end, original, replacement)


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if value is None:
        raise BadRow(field, "missing")
    if not isinstance(value, str):
        raise BadRow(field, f"expected a string, found {type(value).__name__}")
    if not value.strip():
        raise BadRow(field, "empty")
    return value


def _prompt(record: dict[str, Any], template: str) -> str:
    fields = {k: v for k, v in record.items() if isinstance(v, str)}
    try:
        return template.format_map(fields)
    except KeyError as err:
        raise BadRow(str(err.args[0]), "missing (the prompt template uses it)") from None


class NoPair(Exception):
    """A valid row from which the builder can make no pair (reported, never an error)."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def metamath_pairs(
    record: dict[str, Any],
    *,
    rng: random.Random,
    template: str = TEMPLATES["metamath"],
    delimiter: str = DELIMITERS["metamath"],
) -> list[tuple[str, str, str]]:
    """[(prompt, chosen, rejected)] for one MetaMathQA row; raises BadRow or NoPair."""
    _text(record, "query")
    response = _text(record, "response")
    corrupted = corrupt_intermediate_result(response, rng)
    if corrupted is None:
        raise NoPair("response", "no intermediate result to corrupt")
    return [(_prompt(record, template), delimiter + response, delimiter + corrupted[0])]


def arc_pairs(
    record: dict[str, Any], *, template: str = TEMPLATES["arc"], delimiter: str = DELIMITERS["arc"]
) -> list[tuple[str, str, str]]:
    """One (prompt, correct, wrong) per wrong choice of an ARC row; raises BadRow."""
    _text(record, "question")
    choices = record.get("choices")
    if choices is None:
        raise BadRow("choices", "missing")
    if (
        not isinstance(choices, dict)
        or not isinstance(choices.get("text"), list)
        or not isinstance(choices.get("label"), list)
    ):
        raise BadRow("choices", "expected {'text': [...], 'label': [...]}")
    texts, labels = choices["text"], [str(label) for label in choices["label"]]
    if len(texts) != len(labels):
        raise BadRow("choices", f"{len(texts)} texts but {len(labels)} labels")
    if len(texts) < 2:
        raise BadRow("choices", f"{len(texts)} choice(s); a pair needs at least two")
    for label, text in zip(labels, texts):
        if not isinstance(text, str) or not text.strip():
            raise BadRow("choices", f"choice {label} is empty or not a string")
    key = record.get("answerKey")
    if key is None:
        raise BadRow("answerKey", "missing")
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise BadRow("answerKey", f"expected a string, found {type(key).__name__}")
    if str(key) not in labels:
        raise BadRow("answerKey", f"{key!r} is not one of the choice labels {', '.join(labels)}")
    correct = texts[labels.index(str(key))]
    prompt = _prompt(record, template)
    pairs = []
    for label, text in zip(labels, texts):
        if label == str(key):
            continue
        if text == correct:
            raise BadRow("choices", f"wrong choice {label} has the same text as the answer {key}")
        pairs.append((prompt, delimiter + correct, delimiter + text))
    return pairs


def hellaswag_pairs(
    record: dict[str, Any],
    *,
    template: str = TEMPLATES["hellaswag"],
    delimiter: str = DELIMITERS["hellaswag"],
) -> list[tuple[str, str, str]]:
    """One (prompt, correct ending, wrong ending) per wrong ending of a HellaSwag row; raises BadRow."""
    _text(record, "ctx")
    endings = record.get("endings")
    if endings is None:
        raise BadRow("endings", "missing")
    if not isinstance(endings, list):
        raise BadRow("endings", f"expected a list of strings, found {type(endings).__name__}")
    for i, ending in enumerate(endings):
        if not isinstance(ending, str) or not ending.strip():
            raise BadRow("endings", f"ending {i} is empty or not a string")
    label = record.get("label")
    if label is None:
        raise BadRow("label", "missing")
    if label == "":
        raise BadRow("label", "empty (HellaSwag's test split has no labels; use train or validation)")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip().isdigit():
        raise BadRow("label", f"expected the index of the right ending, found {label!r}")
    index = int(str(label).strip())
    if index >= len(endings):
        raise BadRow("label", f"{index} is no ending's index (there are {len(endings)})")
    prompt = _prompt(record, template)
    correct = endings[index]
    pairs = []
    for i, ending in enumerate(endings):
        if i == index:
            continue
        if ending == correct:
            raise BadRow("endings", f"wrong ending {i} is the same as the right one")
        pairs.append((prompt, delimiter + correct, delimiter + ending))
    return pairs


RowFn = Callable[[dict[str, Any], int], list[PreferenceExample]]


def iter_examples(
    source, fn: RowFn, policy: BadRowPolicy, *, split: str | None = None
) -> Iterator[PreferenceExample]:
    """The examples `fn(record, row_number)` makes from each row of `source`; bad rows go to
    `policy` (raise or count), rows with no pair (`NoPair`) are counted in `policy.report`."""
    for row in read_rows(source, split=split):
        if row.record is None:
            policy.bad(row.number, None, row.error or "unreadable")
            continue
        try:
            examples = fn(row.record, row.number)
        except BadRow as err:
            policy.bad(row.number, err.field, err.reason)
        except NoPair as err:
            policy.report.skipped.append(SkippedRow(row.number, err.field, err.reason))
        else:
            for example in examples:
                example.source = str(source)
                yield example


def builder_fn(
    builder: str, *, seed: int = 0, template: str | None = None, delimiter: str | None = None
) -> RowFn:
    """`fn(record, row) -> [PreferenceExample]` for a builder name. MetaMath draws its corruption
    from a generator seeded by (seed, row), so a row's pair does not depend on the rows before it."""
    if builder not in BUILDER_NAMES:
        raise DpolabError(f"unknown builder {builder!r}; use one of {', '.join(BUILDER_NAMES)}")
    kwargs = {
        "template": TEMPLATES[builder] if template is None else template,
        "delimiter": DELIMITERS[builder] if delimiter is None else delimiter,
    }

    def fn(record: dict[str, Any], row: int) -> list[PreferenceExample]:
        if builder == "metamath":
            triples = metamath_pairs(record, rng=random.Random(f"{seed}:{row}"), **kwargs)
        elif builder == "arc":
            triples = arc_pairs(record, **kwargs)
        else:
            triples = hellaswag_pairs(record, **kwargs)
        return [PreferenceExample(p, c, r, row=row) for p, c, r in triples]

    return fn


def build_pairs(
    builder: str,
    source,
    *,
    split: str | None = None,
    seed: int = 0,
    on_bad_rows: str = "error",
    template: str | None = None,
    delimiter: str | None = None,
) -> tuple[list[PreferenceExample], BadRowReport]:
    """All pairs a builder makes from a raw source (file or hub id), with the report of the rows
    that gave none. Raises `DpolabError` at the first bad row (`on_bad_rows="error"`) and when no
    pair at all comes out."""
    policy = BadRowPolicy(source, on_bad_rows)
    fn = builder_fn(builder, seed=seed, template=template, delimiter=delimiter)
    examples = list(iter_examples(source, fn, policy, split=split))
    if not examples:
        raise no_pairs_error(policy.report, builder)
    return examples, policy.report
