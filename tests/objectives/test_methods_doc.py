"""docs/methods.md: every YAML block loads as a config, and its table lists every registered
method with the keys its spec reads (so the table cannot drift from the registry)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dpolab.objectives.registry import LOSSES, get_loss_spec
from dpolab.training import config_from_dict

DOC = Path(__file__).parents[2] / "docs" / "methods.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, flags=re.S)
# the model and data a `loss:`-only block sits in (the doc's first block shows them)
REST = {"model": {"name_or_path": "./runs/sft"}, "data": {"train": "data/pairs.jsonl"}}


def test_the_doc_has_yaml_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_yaml_block_loads(index):
    values = yaml.safe_load(BLOCKS[index])
    assert isinstance(values, dict) and "loss" in values
    config = config_from_dict({**REST, **values})
    assert config.loss.method


def _table_rows():
    rows = {}
    for line in TEXT.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        match = re.match(r"`(\w+)`", cells[0]) if cells else None
        if match and len(cells) == 6:
            keys = () if cells[3] == "—" else tuple(k.strip() for k in cells[3].split(","))
            rows[match.group(1)] = keys
    return rows


def test_the_table_lists_every_method_with_its_keys():
    rows = _table_rows()
    assert set(rows) == {spec.name for spec in LOSSES.values()}
    for name, keys in rows.items():
        assert keys == get_loss_spec(name).keys, name
