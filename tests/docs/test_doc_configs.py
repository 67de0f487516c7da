"""Every YAML block of README.md and docs/*.md is a config that loads through dpolab's own reader
and the checks `dpolab train` (or, marked `<!-- docs-test: sft -->`, `dpolab sft`) runs before a
model loads; so does every example config in examples/. A block with a `model:` section loads as
printed; a block of other sections (a `loss:` section, a `data:` mixture) loads over a minimal
model and data. `<!-- docs-test: skip: WHY -->` exempts a block that is not a dpolab config."""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_blocks import REPO, Block, all_blocks

from dpolab.config import load_yaml
from dpolab.config.schema import SECTIONS
from dpolab.errors import DpolabError
from dpolab.training import config_from_dict, load_config

YAML_BLOCKS = [b for b in all_blocks(("yaml", "yml")) if not b.marker.startswith("skip")]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# what a block of other sections sits in
MINIMAL = {"model": {"name_or_path": "./runs/sft"}, "data": {"train": "data/pairs.jsonl"}}


def _merged(base: dict, values: dict) -> dict:
    out = dict(base)
    for key, value in values.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_block(block: Block):
    """The config a YAML block shows, loaded and checked for its stage."""
    assert block.marker in ("", "sft"), f"{block.where}: unknown marker {block.marker!r} for a yaml block"
    values = load_yaml(block.text)
    assert isinstance(values, dict), f"{block.where}: not a mapping of sections"
    unknown = [key for key in values if key not in SECTIONS]
    assert not unknown, (
        f"{block.where}: {unknown} are not sections of a dpolab config; mark the block "
        f"`<!-- docs-test: skip: WHY -->` if it is not one"
    )
    whole = values if "model" in values else _merged(MINIMAL, values)
    return config_from_dict(whole, stage=block.marker or "train")


def test_the_docs_show_configs():
    assert len(YAML_BLOCKS) >= 10


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_every_yaml_block_loads(block):
    try:
        load_block(block)
    except DpolabError as err:
        pytest.fail(f"{block.where}: {err}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path):
    config = load_config(path, stage="sft" if path.stem == "sft" else "train")
    assert config.model.name_or_path and (config.data.train or config.data.builder)


def test_a_block_with_a_conflict_fails(tmp_path):
    """The check catches what the README's old config block did: a key its method does not read."""
    block = Block(tmp_path / "page.md", 1, "yaml", "loss:\n  method: dpo\n  dpop_lambda: 50.0\n", "")
    with pytest.raises(DpolabError, match=r"only used by loss\.method dpop"):
        load_block(block)
