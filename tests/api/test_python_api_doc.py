"""docs/python-api.md runs as printed: its Python blocks, executed in order in one namespace (as a
notebook runs its cells), on a tiny model saved where the page says the base model is, with the
example config `dpolab config example dpo` writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from dpolab.commands.config import example_text

DOC = Path(__file__).parents[2] / "docs" / "python-api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
ROWS = [
    {"prompt": f"Question: {a} + {b} = ?", "chosen": f" Answer: {a + b}", "rejected": f" Answer: {a + b + 1}"}
    for a in range(4)
    for b in range(3)
]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_every_python_block_of_the_page_runs(tmp_path, monkeypatch, model_dir, capsys):
    assert len(BLOCKS) == 4
    shutil.copytree(model_dir, tmp_path / "models" / "base")
    write_jsonl(tmp_path / "data" / "train.jsonl", ROWS[:8])
    write_jsonl(tmp_path / "data" / "eval.jsonl", ROWS[8:])
    (tmp_path / "dpo.yaml").write_text(example_text("dpo"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in BLOCKS:
        exec(compile(block, str(DOC), "exec"), namespace)

    runs = tmp_path / "runs"
    for name in ("sft", "dpo-beta0.3", "ipo", "ipo-notebook", "dpo-lora"):
        assert (runs / name / "summary.json").is_file(), name
    # the first two blocks: SFT, then DPO from its model with β from the override
    assert json.loads((runs / "sft" / "summary.json").read_text())["command"] == "sft"
    assert "beta: 0.3" in (runs / "dpo-beta0.3" / "config.yaml").read_text()
    assert "method: ipo" in (runs / "ipo" / "config.yaml").read_text()
    # PreferenceTrainer: the datasets written where config.yaml says, the run's files as the CLI's
    notebook = (runs / "ipo-notebook" / "config.yaml").read_text()
    assert (
        f"train: {Path('runs/ipo-notebook/data/train.jsonl')}" in notebook
        and "max_prompt_length: 1024" in notebook
    )
    assert len((runs / "ipo-notebook" / "data" / "train.jsonl").read_text().splitlines()) == 8
    assert namespace["result"].summary["output_dir"] == "runs/ipo-notebook"
    assert (runs / "dpo-lora" / "adapter_config.json").is_file()  # peft_config: a LoRA adapter saved
    lora = (runs / "dpo-lora" / "config.yaml").read_text()
    assert "learning_rate: 5.0e-06" in lora and "r: 16" in lora
    # the log, on stderr as on the command line
    err = capsys.readouterr().err
    assert "dpolab: learning rate 1e-06" in err  # dpo.yaml sets 5e-7: this is the IPO notebook run's default
    assert "dpolab: reference: the policy with its LoRA adapters disabled" in err
