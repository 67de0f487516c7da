"""Pairwise win rates: both orders for every pair, agreement required, bootstrap intervals, and a
cache of every judgement so that a re-run costs nothing.

The rule (docs/notes.md, MT-Bench): each pair is judged with A shown first and with B shown first. It
is a win for A only if both orders prefer A, a loss only if both prefer B; anything else (the orders
disagree, or either says tie) is a tie. A pair where either order's reply could not be read is
`unparsed`: it is left out of the rates and counted on its own (never guessed into a tie).

win_rate = (wins + ties/2) / (wins + losses + ties); win_rate_no_ties = wins / (wins + losses).
The 95 % interval is the percentile bootstrap over pairs (resampled with replacement, seeded).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpolab.errors import DpolabError, where
from dpolab.evaluation.answer_files import Answer, check_aligned, messages_text, prompt_text
from dpolab.evaluation.judges import Judge, JudgeError, Judgement, JudgeRequest
from dpolab.evaluation.results import format_table, result_header
from dpolab.storage import append_text

OUTCOMES = ("win", "loss", "tie", "unparsed")
_SHOWN_FIRST = {"first": "A", "second": "B", "tie": "tie"}  # verdict of the A-first order -> winner
_SHOWN_SECOND = {"first": "B", "second": "A", "tie": "tie"}  # verdict of the B-first order -> winner


def combine_orders(a_first: str, b_first: str) -> str:
    """The outcome for A of one pair from the verdicts of its two orders.

    Args:
        a_first: the verdict when A was shown first (`first` means A is better).
        b_first: the verdict when B was shown first (`first` means B is better).
    """
    if "unparsed" in (a_first, b_first):
        return "unparsed"
    w1, w2 = _SHOWN_FIRST[a_first], _SHOWN_SECOND[b_first]
    if w1 == w2 == "A":
        return "win"
    if w1 == w2 == "B":
        return "loss"
    return "tie"


def pair_scores(outcomes: Sequence[str]) -> np.ndarray:
    """1 for a win, 0.5 for a tie, 0 for a loss; unparsed pairs left out."""
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    return np.array([value[o] for o in outcomes if o in value], dtype=np.float64)


def bootstrap_ci(
    scores: np.ndarray, *, samples: int = 1000, seed: int = 0, ties: bool = True
) -> list[float] | None:
    """Percentile-bootstrap 95 % interval of the win rate over pairs.

    Args:
        scores: `(n,)` per-pair scores (1 win, 0.5 tie, 0 loss).
        ties: True for the rate with ties as half; False for wins / (wins + losses), resamples
            without a decided pair being dropped.
    Returns:
        [low, high], or None when there is nothing to resample.
    """
    n = len(scores)
    if n == 0 or samples < 1:
        return None
    rng = np.random.default_rng(seed)
    resampled = scores[rng.integers(0, n, size=(samples, n))]  # (samples, n)
    if ties:
        rates = resampled.mean(axis=1)
    else:
        wins = (resampled == 1.0).sum(axis=1)
        decided = wins + (resampled == 0.0).sum(axis=1)
        rates = wins[decided > 0] / decided[decided > 0]
        if len(rates) == 0:
            return None
    low, high = np.percentile(rates, [2.5, 97.5])
    return [float(low), float(high)]


def winrate_stats(outcomes: Sequence[str], *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Counts, rates (for A against B) and bootstrap intervals of a list of pair outcomes."""
    counts = {o: sum(1 for x in outcomes if x == o) for o in OUTCOMES}
    wins, losses, ties = counts["win"], counts["loss"], counts["tie"]
    n = wins + losses + ties
    scores = pair_scores(outcomes)
    return {
        "n_pairs": len(outcomes),
        "n_judged": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "unparsed": counts["unparsed"],
        "win_rate": (wins + 0.5 * ties) / n if n else None,
        "win_rate_no_ties": wins / (wins + losses) if wins + losses else None,
        "win_fraction": wins / n if n else None,
        "loss_fraction": losses / n if n else None,
        "tie_fraction": ties / n if n else None,
        "ci95": bootstrap_ci(scores, samples=samples, seed=seed),
        "ci95_no_ties": bootstrap_ci(scores, samples=samples, seed=seed, ties=False),
        "bootstrap": {"samples": samples, "seed": seed, "method": "percentile, pairs resampled"},
    }


# ----------------------------------------------------------------------------------------------
# Judgement cache
# ----------------------------------------------------------------------------------------------


def judgement_key(judge_id: str, request: JudgeRequest) -> str:
    """Identifies one judgement: the judge (model, prompt, settings), the prompt, both answers in
    their order, and the reference answer."""
    text = json.dumps(
        [judge_id, request.prompt, request.first, request.second, request.reference], ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgementCache:
    """Judgements in a JSONL file, one per line, appended as each one arrives, whole or not at all
    (`append_text`: a full disk stops the run with one line, the file keeps what it held; a line
    torn by a kill is dropped when the file is read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a line half written when a run was killed: drop it
            with self.path.open("r+b") as handle:
                handle.truncate(cut)
        for number, line in enumerate(data[:cut].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                raise DpolabError(
                    f"{where(self.path, number)}: not a judgement; delete the line or the file"
                ) from None

    def get(self, key: str) -> Judgement | None:
        entry = self.entries.get(key)
        return None if entry is None else Judgement(entry["verdict"], entry.get("raw", ""))

    def put(self, key: str, judge_id: str, request: JudgeRequest, judgement: Judgement) -> None:
        entry = {
            "key": key,
            "judge": judge_id,
            "prompt": request.prompt,
            "first": request.first,
            "second": request.second,
            "reference": request.reference,
            "verdict": judgement.verdict,
            "raw": judgement.raw,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        append_text(
            self.path,
            json.dumps(entry, ensure_ascii=False) + "\n",
            what="the next judgement",
            then="the judgements before it are kept: free some space and run the same command again to continue",
        )
        self.entries[key] = entry


# ----------------------------------------------------------------------------------------------
# The win rate of two answer sets
# ----------------------------------------------------------------------------------------------


def reference_of(a: Answer, b: Answer) -> str | None:
    """A reference answer for a pair: the `answer` field of A's row or B's, else the chosen
    response of a preference row (B a preference file, or A generated from one)."""
    for record in (a.record, b.record):
        if record.get("answer") not in (None, ""):
            return str(record["answer"])
    for record in (a.record, b.record):
        chosen = record.get("chosen")
        if isinstance(chosen, list):
            return messages_text(chosen)
        if isinstance(chosen, str) and chosen.strip():
            return chosen
    return None


def winrate(
    a: list[Answer],
    b: list[Answer],
    judge: Judge,
    *,
    cache: JudgementCache | str | os.PathLike | None = None,
    samples: int = 1000,
    seed: int = 0,
    retry_unparsed: bool = False,
    names: tuple[str, str] = ("A", "B"),
    sources: tuple[str, str] = ("A", "B"),
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Judge every pair in both orders (cached judgements reused) and count for A against B.

    Raises `DpolabError` if the prompts do not line up, and `JudgeError` if the judge stops; the
    judgements made until then are in the cache, so running again continues where it stopped.
    Returns the result dict (kind `winrate`).
    """
    check_aligned(a, b, *sources)
    if isinstance(cache, str | os.PathLike):
        cache = JudgementCache(cache)
    requests: list[JudgeRequest] = []
    for x, y in zip(a, b):
        reference = reference_of(x, y) if judge.needs_reference else None
        if judge.needs_reference and reference is None:
            raise DpolabError(
                f"{where(sources[0], x.row, 'answer')}: the {judge.spec} judge needs a reference answer: an 'answer' "
                f"field in either answer file (or B a preference file whose chosen response holds it)"
            )
        prompt = prompt_text(x.prompt)
        requests.append(JudgeRequest(prompt, x.completion, y.completion, reference))
        requests.append(JudgeRequest(prompt, y.completion, x.completion, reference))
    keys = [judgement_key(judge.cache_id, r) for r in requests]
    verdicts: list[Judgement | None] = [cache.get(k) if cache is not None else None for k in keys]
    if retry_unparsed:
        verdicts = [None if v is not None and v.verdict == "unparsed" else v for v in verdicts]
    todo = [i for i, v in enumerate(verdicts) if v is None]
    cached = len(requests) - len(todo)

    def on_result(j: int, judgement: Judgement) -> None:
        i = todo[j]
        verdicts[i] = judgement
        if cache is not None:
            cache.put(keys[i], judge.cache_id, requests[i], judgement)
        if on_progress is not None:
            on_progress(sum(v is not None for v in verdicts), len(requests))

    try:
        judge.judge_many([requests[i] for i in todo], on_result)
    except JudgeError as err:
        made = sum(v is not None for v in verdicts) - cached
        raise JudgeError(
            _stopped_message(err, todo, a, b, sources, made=made, cached=cached, cache=cache)
        ) from None
    pairs, outcomes = [], []
    for p, (x, y) in enumerate(zip(a, b)):
        ab, ba = verdicts[2 * p], verdicts[2 * p + 1]
        outcome = combine_orders(ab.verdict, ba.verdict)
        outcomes.append(outcome)
        pairs.append(
            {
                "index": p,
                "row_a": x.row,
                "row_b": y.row,
                "outcome": outcome,
                "a_first": ab.verdict,
                "b_first": ba.verdict,
            }
        )
    result = result_header("winrate")
    result.update(
        {
            "a": {"name": names[0], "path": str(sources[0])},
            "b": {"name": names[1], "path": str(sources[1])},
            "judge": judge.spec,
            "judge_id": judge.cache_id,
            "rule": "both orders; win/loss only when they agree, else tie; unparsed pairs excluded",
            **winrate_stats(outcomes, samples=samples, seed=seed),
            "judgements": {"total": len(requests), "from_cache": cached, "new": len(todo)},
            "cache": str(cache.path) if cache is not None else None,
            "pairs": pairs,
        }
    )
    return result


def _stopped_message(
    err: JudgeError,
    todo: list[int],
    a: list[Answer],
    b: list[Answer],
    sources: tuple[str, str],
    *,
    made: int,
    cached: int,
    cache: JudgementCache | None,
) -> str:
    """The judge's error, the pair it stopped at (when known), and what became of the judgements."""
    lines = [str(err)]
    if err.request_index is not None:
        i = todo[err.request_index]
        p, order = i // 2, ("A shown first" if i % 2 == 0 else "B shown first")
        lines.append(
            f"it stopped at pair {p + 1} of {len(a)} ({where(sources[0], a[p].row)} and "
            f"{where(sources[1], b[p].row)}; {order})"
        )
        if err.about_request:
            limit = f" (--limit {p} judges only the pairs before it)" if p else ""
            lines.append(
                "the judge refused that request itself (e.g. longer than its context): shorten that answer "
                f"or leave that row out of both files{limit}"
            )
    if made == 0:
        kept = "no new judgement was made before it stopped"
    elif cache is None:
        kept = f"{made} new judgement(s) made before it stopped, not kept (no cache file)"
    else:
        kept = f"{made} new judgement(s) made before it stopped, kept in {cache.path}"
    from_cache = f" ({cached} from the cache {cache.path})" if cached and cache is not None else ""
    lines.append(f"{kept}{from_cache}; run the same command again to continue")
    return "\n".join(lines)


def winrate_table(result: dict[str, Any]) -> str:
    """The result as a text table, counted for A against B."""
    ci = result.get("ci95")
    row = [
        f"{result['a']['name']} vs {result['b']['name']}",
        result["wins"],
        result["losses"],
        result["ties"],
        result["unparsed"],
        result["win_rate"],
        f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
        result["win_rate_no_ties"],
    ]
    headers = ["pair", "wins", "losses", "ties", "unparsed", "win rate", "95% CI", "win rate (no ties)"]
    return format_table(headers, [row], digits=3) + f"\njudge: {result['judge']}"


def print_progress(done: int, total: int) -> None:
    print(f"\rjudged {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
