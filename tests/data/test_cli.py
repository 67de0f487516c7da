"""`dpolab data build|convert|stats` end to end on the fixtures (through `dpolab.cli.main`)."""

from __future__ import annotations

import json

import pytest

from dpolab.cli import main
from dpolab.data.pairs import load_pairs

from .helpers import FIXTURES, read_jsonl, write_jsonl


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_metamath_reports_rows_with_nothing_to_corrupt(tmp_path, capsys):
    out_path = tmp_path / "metamath_dpo.jsonl"
    code, out, _ = run(
        capsys,
        "build",
        "metamath",
        "--input",
        FIXTURES / "metamathqa.json",
        "--output",
        out_path,
        "--seed",
        3,
    )
    assert code == 0
    assert out.splitlines() == [
        f"wrote 18 pairs to {out_path}",
        f"{FIXTURES / 'metamathqa.json'}: skipped 3 rows (3 × response: no intermediate result to corrupt)",
        "  response: no intermediate result to corrupt: rows 17, 18, 19",
    ]
    rows = read_jsonl(out_path)
    assert len(rows) == 18 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    examples, _ = load_pairs(out_path)  # the output is a standard preference file
    assert examples[0].prompt.startswith("Natalia sold clips")


def test_build_arc_template_and_delimiter_from_the_command_line(tmp_path, capsys):
    out_path = tmp_path / "arc.jsonl"
    code, _, _ = run(
        capsys,
        "build",
        "arc",
        "--input",
        FIXTURES / "arc_challenge_train.jsonl",
        "--output",
        out_path,
        "--template",
        "{question}\\nA:",
        "--delimiter",
        "\\t",
    )
    assert code == 0
    first = read_jsonl(out_path)[0]
    assert first["prompt"].endswith("produce the most heat?\nA:") and first["chosen"] == "\tdry palms"


def test_build_hellaswag_from_parquet(tmp_path, capsys):
    out_path = tmp_path / "hs.jsonl"
    assert (
        run(
            capsys,
            "build",
            "hellaswag",
            "--input",
            FIXTURES / "hellaswag_train.parquet",
            "--output",
            out_path,
        )[0]
        == 0
    )
    assert len(read_jsonl(out_path)) == 60


def test_bad_row_stops_with_one_message_and_leaves_no_file(tmp_path, capsys):
    rows = read_jsonl(FIXTURES / "arc_challenge_train.jsonl")
    rows[6]["answerKey"] = "E"
    del rows[11]["choices"]
    source = write_jsonl(tmp_path / "arc.jsonl", rows)
    out_path = tmp_path / "out" / "arc_dpo.jsonl"
    code, out, err = run(capsys, "build", "arc", "--input", source, "--output", out_path)
    assert code == 2 and out == ""
    assert err == (
        f"dpolab data: error: {source}, row 7, field 'answerKey': 'E' is not one of the choice labels "
        f"1, 2, 3, 4 (fix the row, or set data.on_bad_rows=skip to skip such rows and count them)\n"
    )
    assert not out_path.exists() and list(out_path.parent.iterdir()) == []  # no half file, no temporary

    code, out, _ = run(
        capsys, "build", "arc", "--input", source, "--output", out_path, "--on-bad-rows", "skip"
    )
    assert code == 0 and len(read_jsonl(out_path)) == 54
    assert out.splitlines()[1:] == [
        f"{source}: skipped 2 rows (1 × answerKey: 'E' is not one of the choice labels 1, 2, 3, 4; "
        f"1 × choices: missing)",
        "  answerKey: 'E' is not one of the choice labels 1, 2, 3, 4: rows 7",
        "  choices: missing: rows 12",
    ]


def test_interrupted_build_leaves_the_old_file(tmp_path, capsys, monkeypatch):
    import dpolab.data.builders as builders

    out_path = tmp_path / "arc.jsonl"
    out_path.write_text("old\n")
    real = builders.arc_pairs

    def interrupted(record, **kwargs):
        if record["id"] == "Mercury_SC_401169":  # row 6
            raise KeyboardInterrupt
        return real(record, **kwargs)

    monkeypatch.setattr(builders, "arc_pairs", interrupted)
    code, _, err = run(
        capsys, "build", "arc", "--input", FIXTURES / "arc_challenge_train.jsonl", "--output", out_path
    )
    assert code == 130 and "interrupted" in err
    assert out_path.read_text() == "old\n" and list(tmp_path.iterdir()) == [out_path]


def test_hub_id_input_fails_offline_with_its_name(tmp_path, capsys):
    code, _, err = run(
        capsys,
        "build",
        "arc",
        "--input",
        "no-such-org/ai2_arc",
        "--split",
        "train",
        "--output",
        tmp_path / "o.jsonl",
    )
    assert code == 2
    assert err.startswith(
        "dpolab data: error: no-such-org/ai2_arc: not a local file, and loading it as a hub "
        "dataset (split 'train') failed"
    )


@pytest.mark.parametrize(
    ("kind", "source", "conversational"),
    [
        ("hh", "hh_rlhf_train.jsonl", False),
        ("ultrafeedback", "ultrafeedback_binarized_train_prefs.jsonl", True),
        ("shp", "shp_train.json", False),
    ],
)
def test_convert_writes_a_loadable_preference_file(tmp_path, capsys, kind, source, conversational):
    out_path = tmp_path / f"{kind}.jsonl"
    code, out, _ = run(capsys, "convert", kind, "--input", FIXTURES / source, "--output", out_path)
    assert code == 0 and out == f"wrote 20 pairs to {out_path}\n"
    examples, report = load_pairs(out_path, fmt="conversational" if conversational else "standard")
    assert len(examples) == 20 and not report.skipped


def test_stats_json(tmp_path, capsys):
    out_path = tmp_path / "arc.jsonl"
    run(capsys, "build", "arc", "--input", FIXTURES / "arc_challenge_train.jsonl", "--output", out_path)
    code, out, _ = run(capsys, "stats", out_path, "--json", "--bins", 5)
    assert code == 0
    stats = json.loads(out)
    assert stats["rows"] == 60 and stats["unit"] == "characters" and stats["source"] == str(out_path)
    assert set(stats["prompt_length"]) == {"p5", "p25", "p50", "p75", "p95", "p100"}
    assert stats["edit_distance"]["median"] == 1.0 and stats["edit_distance"]["mean"] > 0.75
    assert sum(b["count"] for b in stats["edit_distance"]["histogram"]) == 60
    assert len(stats["edit_distance"]["histogram"]) == 5
    assert stats["skipped"]["skipped"] == 0


def test_stats_text_with_a_tokenizer(tmp_path, capsys, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    out_path = tmp_path / "mm.jsonl"
    run(capsys, "build", "metamath", "--input", FIXTURES / "metamathqa.json", "--output", out_path)
    code, out, _ = run(capsys, "stats", out_path, "--tokenizer", tmp_path / "tok")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{out_path}: 18 pairs"
    assert lines[1].startswith("lengths in tokens:")
    assert lines[6].startswith("normalised edit distance (tokenizer tokens): mean ")
    assert len(lines) == 7 + 10  # ten histogram bins
    code, _, err = run(capsys, "stats", out_path, "--tokenizer", tmp_path / "nothing-here")
    assert code == 2 and "cannot load a tokenizer" in err


def test_stats_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "stats", tmp_path / "nope.jsonl")
    assert code == 2 and err == f"dpolab data: error: {tmp_path / 'nope.jsonl'}: no such file\n"
