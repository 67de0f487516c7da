"""Final answers of GSM8K-style solutions.

Two readings, for two uses:
- `extract_final_answer` (the `exact:` judge, the demo's accuracy): the text after the LAST
  `####`; when it starts with a number, that number, normalised (commas dropped, `8.0` -> `8`);
  else the text itself, which then only matches the same text.
- `lm_eval_gsm8k` (`dpolab eval tasks`): lm-evaluation-harness v0.4's gsm8k task as it scores, to
  the letter: its "strict-match" filter (the FIRST `#### N`), its "flexible-extract" filter (the
  last number), and its exact_match metric's normalisation of prediction and reference.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"####[ \t]*([^\n]*)")
_LEADING_NUMBER = re.compile(r"\$?(-?\d[\d,]*(?:\.\d+)?)")


def _normalise_number(value: str) -> str:
    value = value.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def extract_final_answer(text: str) -> str | None:
    """The answer after the last `####` (a leading number normalised: `#### 1,000 apples` -> `1000`,
    `#### 8.0` -> `8`; other text as it is: `#### = 3` -> `= 3`), or None when there is none."""
    matches = _FINAL.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    number = _LEADING_NUMBER.match(answer)
    if number is None:
        return answer or None
    return _normalise_number(number.group(1))


def answers_match(prediction: str | None, reference: str | None) -> bool:
    """Exact match of two extracted answers; a missing answer never matches."""
    return prediction is not None and reference is not None and prediction == reference


# lm-evaluation-harness v0.4, tasks/gsm8k/gsm8k.yaml
LM_EVAL_INVALID = "[invalid]"  # what its filters return when nothing matches
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # "strict-match", group_select 0: the first match
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # "flexible-extract", group_select -1: the last
# exact_match's regexes_to_ignore, applied in this order to prediction and reference, then ignore_case
_IGNORE = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))


def lm_eval_normalise(text: str) -> str:
    """lm-eval's exact_match normalisation: `,` `$` everything up to the last `#### ` and a final `.`
    removed, lower case (a reference `"... #### 1,000"` becomes `"1000"`)."""
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def _filter(pattern: re.Pattern, text: str, select: int) -> str:
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_INVALID
    match = matches[select]
    if isinstance(match, tuple):  # several groups: the first that matched, as lm-eval takes it
        match = next((m for m in match if m), LM_EVAL_INVALID)
    return match.strip()


def lm_eval_gsm8k(output: str, reference: str) -> dict[str, str | float]:
    """The generated `output` scored against a GSM8K `answer` field as lm-eval scores it.

    Returns `strict` and `flexible` (the filters' extractions, normalised; `[invalid]` when nothing
    matched), `reference` (normalised), and `exact_match`, `exact_match_flexible` (0.0 or 1.0)."""
    gold = lm_eval_normalise(reference)
    strict = _filter(_STRICT, output, 0)
    flexible = _filter(_FLEXIBLE, output, -1)
    out: dict[str, str | float] = {"reference": gold}
    for name, found in (("strict", strict), ("flexible", flexible)):
        out[name] = found if found == LM_EVAL_INVALID else lm_eval_normalise(found)
    out["exact_match"] = float(strict != LM_EVAL_INVALID and out["strict"] == gold)
    out["exact_match_flexible"] = float(flexible != LM_EVAL_INVALID and out["flexible"] == gold)
    return out
