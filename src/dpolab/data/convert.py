"""Converting the preference datasets people have to dpolab's (and TRL's) formats.

- hh (Anthropic/hh-rlhf: `chosen`, `rejected` whole conversations "\\n\\nHuman: ... \\n\\nAssistant: ...")
  -> standard. The prompt is the shared beginning cut back to its last "\\n\\nAssistant:", so it
  ends on the assistant cue and both completions start with the reply (leading space included).
  Where the two conversations already differ in an earlier turn, the completions hold the turns
  from the first differing one.
- ultrafeedback (HuggingFaceH4/ultrafeedback_binarized: `prompt`, `chosen`/`rejected` as full
  conversations, `score_chosen`, `score_rejected`) -> conversational: the shared leading messages
  are the prompt, the rest the completions. The scores may be left out; given, they must be
  numbers (a score written as a string, `"8"`, is a bad row), and a row whose chosen score is
  below its rejected score is a bad row (columns swapped somewhere).
- shp (stanfordnlp/SHP: `history`, `human_ref_A`, `human_ref_B`, `labels` = 1 when A is preferred)
  -> standard: prompt = history, chosen = the preferred reference, each completion `delimiter` +
  its text (default "\\n\\n").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dpolab.data.builders import iter_examples
from dpolab.data.formats import BadRow, PreferenceExample, _check_text, common_prefix_length, normalise
from dpolab.data.pairs import BadRowPolicy, BadRowReport
from dpolab.errors import DpolabError

CONVERTER_NAMES = ("hh", "ultrafeedback", "shp")
ASSISTANT_CUE = "\n\nAssistant:"


def convert_hh(record: dict[str, Any], row: int = 0) -> PreferenceExample:
    """A standard pair from an Anthropic HH row; raises `BadRow`."""
    chosen = _check_text("chosen", record.get("chosen"))
    rejected = _check_text("rejected", record.get("rejected"))
    if chosen == rejected:
        raise BadRow("rejected", "identical to chosen")
    shared = chosen[: common_prefix_length(chosen, rejected)]
    cut = shared.rfind(ASSISTANT_CUE)
    if cut < 0:
        raise BadRow("chosen", f"chosen and rejected share no {ASSISTANT_CUE!r} turn to end the prompt on")
    cut += len(ASSISTANT_CUE)
    if not chosen[cut:].strip():
        raise BadRow("chosen", "empty reply after the shared prompt")
    if not rejected[cut:].strip():
        raise BadRow("rejected", "empty reply after the shared prompt")
    return PreferenceExample(chosen[:cut], chosen[cut:], rejected[cut:], row=row)


def convert_ultrafeedback(record: dict[str, Any], row: int = 0) -> PreferenceExample:
    """A conversational pair from an UltraFeedback-binarized row; raises `BadRow`."""
    for field in ("chosen", "rejected"):
        if not isinstance(record.get(field), list):
            found = "missing" if record.get(field) is None else type(record[field]).__name__
            raise BadRow(field, f"expected a list of messages, found {found}")
    for field in ("score_chosen", "score_rejected"):
        score = record.get(field)
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
        ):
            raise BadRow(field, f"expected a number, found {type(score).__name__} {score!r}")
    scores = record.get("score_chosen"), record.get("score_rejected")
    if None not in scores and scores[0] < scores[1]:
        raise BadRow("score_chosen", f"{scores[0]} is below score_rejected {scores[1]}")
    example = normalise(
        {k: record[k] for k in ("prompt", "chosen", "rejected") if k in record}, "conversational", row=row
    )
    if not isinstance(example.prompt, list):
        raise BadRow("prompt", "expected the prompt as messages")
    return example


def convert_shp(record: dict[str, Any], row: int = 0, *, delimiter: str = "\n\n") -> PreferenceExample:
    """A standard pair from an SHP row: the preferred reference by `labels`; raises `BadRow`."""
    history = _check_text("history", record.get("history"))
    ref_a = _check_text("human_ref_A", record.get("human_ref_A"))
    ref_b = _check_text("human_ref_B", record.get("human_ref_B"))
    label = record.get("labels")
    if label is None:
        raise BadRow("labels", "missing")
    if isinstance(label, bool) or label not in (0, 1):
        raise BadRow("labels", f"expected 1 (A preferred) or 0 (B preferred), found {label!r}")
    chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
    if chosen == rejected:
        raise BadRow("human_ref_B", "identical to human_ref_A")
    return PreferenceExample(history, delimiter + chosen, delimiter + rejected, row=row)


def converter_fn(
    kind: str, *, delimiter: str | None = None
) -> Callable[[dict[str, Any], int], list[PreferenceExample]]:
    """`fn(record, row) -> [PreferenceExample]` for a converter name."""
    if kind == "hh":
        return lambda record, row: [convert_hh(record, row)]
    if kind == "ultrafeedback":
        return lambda record, row: [convert_ultrafeedback(record, row)]
    if kind == "shp":
        kwargs = {} if delimiter is None else {"delimiter": delimiter}
        return lambda record, row: [convert_shp(record, row, **kwargs)]
    raise DpolabError(f"unknown dataset kind {kind!r}; use one of {', '.join(CONVERTER_NAMES)}")


def convert_rows(
    kind: str, source, *, split: str | None = None, on_bad_rows: str = "error", delimiter: str | None = None
) -> tuple[list[PreferenceExample], BadRowReport]:
    """All pairs converted from a source (file or hub id), with the report of skipped rows.
    Raises `DpolabError` at the first bad row (`on_bad_rows="error"`) and when none is usable."""
    policy = BadRowPolicy(source, on_bad_rows)
    examples = list(iter_examples(source, converter_fn(kind, delimiter=delimiter), policy, split=split))
    if not examples:
        raise DpolabError(f"{source}: no usable rows to convert as {kind} ({policy.report.summary()})")
    return examples, policy.report


def example_record(example: PreferenceExample) -> dict[str, Any]:
    """The `{"prompt", "chosen", "rejected"}` record written to a JSONL file."""
    return {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
