"""The demo task: its pairs are built as the Smaug paper's MetaMath pairs, seeded, measurable."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpolab.demo.task import (
    OPERATIONS,
    Problem,
    SplitSizes,
    TaskConfig,
    edit_distance_stats,
    generate_problem,
    make_splits,
    task_edit_distance,
    task_tokens,
    write_splits,
)
from dpolab.evaluation.answers import extract_final_answer

LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")


def parse_chain(solution: str) -> tuple[list[tuple[int, str, int, int]], str]:
    """The step lines `(a, op, n, b)` and the final line of a solution, read from its text."""
    *lines, final = solution.split("\n")
    steps = []
    for line in lines:
        match = LINE.match(line)
        assert match, f"not a step line: {line!r}"
        a, op, n, b = match.groups()
        steps.append((int(a), op, int(n), int(b)))
    assert final.startswith("#### ")
    return steps, final


def evaluate(a: int, op: str, n: int) -> int:
    return {"+": a + n, "-": a - n, "*": a * n}[op]


def problem_from_seed(seed: int, config: TaskConfig) -> Problem:
    return generate_problem(random.Random(seed), config)


configs = st.builds(
    lambda lo, extra, max_start, max_value, ops: TaskConfig(
        min_steps=lo,
        max_steps=lo + extra,
        max_start=min(max_start, max_value),
        max_value=max_value,
        operations=ops,
    ),
    st.integers(2, 4),
    st.integers(0, 2),
    st.integers(1, 30),
    # at least 50: with "+" alone, 6 steps of at least 1 from a start of up to 30 must stay in range
    # (a smaller ceiling is a config that no problem fits, which generate_problem refuses)
    st.integers(50, 500),
    st.sampled_from([("+", "-", "*"), ("+", "-"), ("+",), ("-", "*"), ("+", "*")]),
)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs)
def test_chosen_is_a_correct_chain_to_the_answer(seed, config):
    problem = problem_from_seed(seed, config)
    steps, _ = parse_chain(problem.chosen)
    assert config.min_steps <= len(steps) <= config.max_steps
    # each line is right, and each starts from the previous line's result
    for (a, op, n, b), previous in zip(steps, [None, *steps]):
        assert evaluate(a, op, n) == b
        assert previous is None or a == previous[3]
        assert 0 <= b <= config.max_value
    # the operands are the ones the prompt states, in order; the start value comes first
    prompt_numbers = [int(x) for x in re.findall(r"\d+", problem.prompt)]
    assert prompt_numbers == [steps[0][0]] + [n for _, _, n, _ in steps]
    assert extract_final_answer(problem.chosen) == str(steps[-1][3]) == str(problem.answer)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs)
def test_low_edit_rejected_differs_in_exactly_one_intermediate_result(seed, config):
    problem = problem_from_seed(seed, config)
    chosen, chosen_final = parse_chain(problem.chosen)
    rejected, rejected_final = parse_chain(problem.rejected_low)
    assert len(chosen) == len(rejected)
    differing = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r]
    assert len(differing) == 1
    (i,) = differing
    assert i < len(chosen) - 1, "the last step's result is the answer, not an intermediate result"
    assert i == problem.corrupted_step
    # same a, op, n: only the stated result b is wrong
    assert chosen[i][:3] == rejected[i][:3]
    assert rejected[i][3] != chosen[i][3]
    # the final answer is left as it was
    assert rejected_final == chosen_final
    assert extract_final_answer(problem.rejected_low) == extract_final_answer(problem.chosen)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs)
def test_high_edit_rejected_is_a_wrong_chain_to_a_wrong_answer(seed, config):
    problem = problem_from_seed(seed, config)
    chosen, _ = parse_chain(problem.chosen)
    rejected, _ = parse_chain(problem.rejected_high)
    assert extract_final_answer(problem.rejected_high) != extract_final_answer(problem.chosen)
    assert extract_final_answer(problem.rejected_high) == str(problem.wrong_answer)
    # same start, every operand misread, the wrong chain carried through consistently
    assert rejected[0][0] == chosen[0][0]
    assert all(r[2] != c[2] for r, c in zip(rejected, chosen))
    for (a, op, n, b), previous in zip(rejected, [None, *rejected]):
        assert evaluate(a, op, n) == b >= 0
        assert previous is None or a == previous[3]


def test_task_edit_distance_by_hand():
    # 7 + 5 = 1 2 \n #### 1 2 is 10 tokens; stating 15 for 12 changes one of them: 1/10
    assert task_tokens("7 + 5 = 12\n#### 12") == ["7", " +", " 5", " =", " 1", "2", "\n", "####", " 1", "2"]
    assert task_edit_distance("7 + 5 = 12\n#### 12", "7 + 5 = 15\n#### 12") == pytest.approx(0.1)
    # one token dropped from 10: distance 1 over the longer length 10
    assert task_edit_distance("7 + 5 = 12\n#### 12", "7 + 5 = 1\n#### 12") == pytest.approx(0.1)


def test_edit_distances_are_measured_and_land_in_their_ranges():
    problems = make_splits(seed=3, sizes=SplitSizes(train=500, eval=0, test=0))["train"]
    for p in problems:
        assert p.low_edit_distance == task_edit_distance(p.chosen, p.rejected_low)
        assert p.high_edit_distance == task_edit_distance(p.chosen, p.rejected_high)
        # one number of ~25 tokens: 1 or 2 digit tokens changed (a 2-digit result may become 1 digit)
        assert 0.03 <= p.low_edit_distance <= 0.10
        assert p.high_edit_distance >= 0.2
    stats = edit_distance_stats(problems)
    # MetaMath pairs in the Smaug paper: 6.5 %; ARC: 90 %
    assert 0.05 <= stats["low/mean"] <= 0.08
    assert stats["high/mean"] >= 0.4
    assert stats["low/max"] < stats["high/min"]


def test_splits_are_seeded_and_disjoint():
    sizes = SplitSizes(train=300, eval=50, test=50)
    first = make_splits(seed=7, sizes=sizes)
    again = make_splits(seed=7, sizes=sizes)
    other = make_splits(seed=8, sizes=sizes)
    assert {k: [p.to_dict() for p in v] for k, v in first.items()} == {
        k: [p.to_dict() for p in v] for k, v in again.items()
    }
    assert [p.prompt for p in first["test"]] != [p.prompt for p in other["test"]]
    assert [len(first[k]) for k in ("train", "eval", "test")] == [300, 50, 50]
    prompts = [p.prompt for split in first.values() for p in split]
    assert len(prompts) == len(set(prompts))
    # the held-out problems do not depend on how many training problems are drawn
    bigger = make_splits(seed=7, sizes=SplitSizes(train=600, eval=50, test=50))
    for split in ("eval", "test"):
        assert [p.prompt for p in bigger[split]] == [p.prompt for p in first[split]]
    assert list(first) == ["train", "eval", "test"]


def test_knobs_change_the_problems():
    easy = make_splits(
        seed=0, sizes=SplitSizes(200, 0, 0), config=TaskConfig(min_steps=2, max_steps=2, operations=("+",))
    )["train"]
    for p in easy:
        steps, _ = parse_chain(p.chosen)
        assert len(steps) == 2 and {op for _, op, _, _ in steps} == {"+"}
    hard = make_splits(seed=0, sizes=SplitSizes(200, 0, 0), config=TaskConfig(min_steps=4, max_steps=5))[
        "train"
    ]
    ops = {op for p in hard for _, op, _, _ in parse_chain(p.chosen)[0]}
    assert ops == set(OPERATIONS)
    assert {len(parse_chain(p.chosen)[0]) for p in hard} == {4, 5}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_steps=1, max_steps=1),
        dict(min_steps=3, max_steps=2),
        dict(operations=("/",)),
        dict(operations=()),
        dict(max_start=200, max_value=99),
    ],
)
def test_bad_knobs_are_refused(kwargs):
    with pytest.raises(ValueError):
        TaskConfig(**kwargs)


def test_too_many_problems_for_the_knobs_fail_clearly():
    # one start value, one operand: only the 8 names x 8 items x 3 x 3 phrasings = 576 prompts exist
    tiny = TaskConfig(min_steps=2, max_steps=2, max_start=1, max_operand=1, max_value=3, operations=("+",))
    with pytest.raises(ValueError, match="distinct"):
        make_splits(seed=0, sizes=SplitSizes(train=600, eval=0, test=0), config=tiny)


def test_write_splits_writes_standard_pairs(tmp_path):
    from dpolab.data.io import read_rows

    splits = make_splits(seed=1, sizes=SplitSizes(train=5, eval=2, test=2))
    paths = write_splits(tmp_path, splits)
    rows = [r.record for r in read_rows(paths["train.low"])]
    assert rows == [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected_low} for p in splits["train"]
    ]
    rows = [r.record for r in read_rows(paths["test.high"])]
    assert [r["rejected"] for r in rows] == [p.rejected_high for p in splits["test"]]
    problems = [r.record for r in read_rows(paths["eval.problems"])]
    assert [p["answer"] for p in problems] == [p.answer for p in splits["eval"]]
