"""docs/config.md is what `dpolab.config.reference` generates from the schema, so it cannot drift:
every key of every section with its type and default, in the schema's own words."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from docs_blocks import DOCS

from dpolab.config import reference, schema

PAGE = DOCS / "config.md"


def test_the_committed_page_is_the_generated_one():
    assert PAGE.read_text(encoding="utf-8") == reference.render(), (
        f"docs/config.md is out of date with the config schema; regenerate it: {reference.COMMAND}"
    )


def _rows() -> dict[str, list[str]]:
    """{key: its cells} of the page's tables."""
    rows = {}
    for line in reference.render().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`") and "." in cells[0]:
            rows[cells[0].strip("`")] = cells
    return rows


def _keys(prefix: str, cls) -> list[tuple[str, dataclasses.Field]]:
    return [(f"{prefix}.{f.name}", f) for f in dataclasses.fields(cls) if f.name != "explicit"]


@pytest.mark.parametrize(
    ("prefix", "cls"),
    [
        ("model", schema.ModelSection),
        ("model.lora", schema.LoraSettings),
        ("data", schema.DataSection),
        ("loss", schema.LossSection),
        ("loss.intermediate", schema.IntermediateSettings),
        ("reference", schema.ReferenceSection),
        ("early_stopping", schema.EarlyStoppingSection),
    ],
)
def test_every_key_is_listed_with_its_default(prefix, cls):
    rows = _rows()
    for key, f in _keys(prefix, cls):
        assert key in rows, f"{key} is missing from the reference"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if not dataclasses.is_dataclass(default):
            assert rows[key][2] == reference._value(default), key
        assert rows[key][3], f"{key} has no description"


def test_training_defaults_are_listed():
    rows = _rows()
    for key, value in schema.TRAINING_DEFAULTS.items():
        assert rows[f"training.{key}"][1] == reference._value(value)


def test_the_loss_keys_name_the_methods_that_read_them():
    rows = _rows()
    assert rows["loss.dpop_lambda"][4] == "dpop"
    assert rows["loss.simpo_gamma"][4] == "simpo"
    assert "orpo" in rows["loss.beta"][4].split(", ")


@dataclass
class _Example:
    """An example section."""

    # the comment above
    # on two lines
    first: int = 1
    second: str | None = None  # the comment beside
    third: list[int] = field(default_factory=list)  # beside
    bare: float = 0.5


def test_comments_above_and_beside_a_field_are_its_words():
    docs = reference.field_docs(_Example)
    assert docs["first"] == ("int", "the comment above on two lines")
    assert docs["second"] == ("str | None", "the comment beside")
    assert docs["third"] == ("list[int]", "beside")
    assert docs["bare"] == ("float", "")
    assert reference.class_doc(_Example) == "An example section."


def test_a_key_without_words_is_reported():
    out, missing = [], []
    reference._section("example", _Example, out, missing)
    assert missing == ["example.bare"]
    assert "| `example.first` | `int` | `1` | the comment above on two lines |" in out
