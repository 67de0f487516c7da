"""docs/models.md is what `python -m dpolab.modeling.coverage --write docs/models.md` produces: the
page lists every causal-LM model type of transformers' auto mapping, each row is what checking
that model type gives now (one test per model type), and the summary and fallbacks are rendered
from the rows. A page made with another transformers version is not compared row by row (the
mapping and the models change with it): regenerate it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as MAPPING

from dpolab.modeling.coverage import Coverage, check, parse_rows, render, versions
from dpolab.testing import FAMILIES

PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"
TEXT = PAGE.read_text(encoding="utf-8")
ROWS = parse_rows(TEXT)
MADE_WITH = re.search(r"Made with (transformers [^;]+);", TEXT).group(1)
SAME_VERSIONS = versions() == MADE_WITH
REGENERATE = f"docs/models.md was made with {MADE_WITH}, this is {versions()}: regenerate it"


def test_the_page_is_rendered_from_its_rows():
    rows = [Coverage.from_cells(cells) for cells in ROWS.values()]
    assert render(rows, MADE_WITH) == TEXT


def test_the_issue_families_train_with_the_exact_loss():
    for family in FAMILIES:
        assert ROWS[family][2] == "exact", ROWS[family]
        assert ROWS[family][6] == "yes", ROWS[family]  # the logit lens too
    assert ROWS["bloom"][3].startswith("separate")


@pytest.mark.skipif(not SAME_VERSIONS, reason=REGENERATE)
def test_the_page_lists_every_causal_lm_model_type():
    assert list(ROWS) == sorted(MAPPING)


@pytest.mark.skipif(not SAME_VERSIONS, reason=REGENERATE)
@pytest.mark.parametrize("model_type", sorted(MAPPING))
def test_each_row_is_what_the_code_produces(model_type):
    assert check(model_type, MAPPING[model_type]).cells() == ROWS[model_type]
