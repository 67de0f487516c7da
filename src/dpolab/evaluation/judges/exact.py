"""`exact:` — a programmatic judge: the answer with the correct final answer (`#### N`) wins."""

from __future__ import annotations

import json

from dpolab.errors import DpolabError
from dpolab.evaluation.answers import answers_match, extract_final_answer
from dpolab.evaluation.judges.base import Judge, Judgement, JudgeOptions, JudgeRequest


def reference_answer(text: str | None) -> str | None:
    """A reference answer: the part after `####` if there is one, else the text itself (numbers normalised)."""
    if text is None:
        return None
    text = str(text)
    found = extract_final_answer(text)
    return found if found is not None else extract_final_answer("#### " + text.strip())


class ExactJudge(Judge):
    """The answer whose final answer (`#### N`) matches the reference wins; both or neither: a tie."""

    spec = "exact:"
    needs_reference = True

    def judge(self, request: JudgeRequest) -> Judgement:
        reference = reference_answer(request.reference)
        if reference is None:
            raise DpolabError("the exact: judge needs a reference answer for every prompt")
        first, second = extract_final_answer(request.first), extract_final_answer(request.second)
        ok_first, ok_second = answers_match(first, reference), answers_match(second, reference)
        verdict = "tie" if ok_first == ok_second else ("first" if ok_first else "second")
        return Judgement(verdict, json.dumps({"reference": reference, "first": first, "second": second}))


def build(spec: str, target: str, options: JudgeOptions) -> ExactJudge:
    """`exact:` (nothing after the colon)."""
    return ExactJudge()
