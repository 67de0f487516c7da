"""Final answers of GSM8K-style solutions: the text after the last `####`."""

from __future__ import annotations

import re

_FINAL = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_answer(text: str) -> str | None:
    """The answer after the last `####` (numbers normalised: commas dropped, `8.0` -> `8`), or None."""
    matches = _FINAL.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    number = _NUMBER.search(answer)
    if number is None:
        return answer or None
    value = number.group(0).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def answers_match(prediction: str | None, reference: str | None) -> bool:
    """Exact match of two extracted answers; a missing answer never matches."""
    return prediction is not None and reference is not None and prediction == reference


_LAST_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def extract_last_number(text: str) -> str | None:
    """The last number in a text, normalised like `extract_final_answer` (lm-evaluation-harness's
    "flexible-extract" of GSM8K: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`)."""
    matches = [a or b for a, b in _LAST_NUMBER.findall(text)]
    for candidate in reversed(matches):
        number = _NUMBER.search(candidate.replace("$", ""))
        if number is not None:
            return extract_final_answer("#### " + number.group(0))
    return None
