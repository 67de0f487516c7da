"""`dpolab data build|convert|stats` end to end on the fixtures (through `dpolab.cli.main`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
        f"wrote 15 pairs to {out_path}",
        f"{FIXTURES / 'metamathqa.json'}: skipped 6 rows (6 × response: no intermediate result to corrupt)",
        "  response: no intermediate result to corrupt: rows 7, 11, 13, 17, 18, 19",
    ]
    rows = read_jsonl(out_path)
    assert len(rows) == 15 and set(rows[0]) == {"prompt", "chosen", "rejected"}
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
        f"1, 2, 3, 4 (fix the row, or pass --on-bad-rows skip to skip such rows and count them)\n"
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
    assert lines[0] == f"{out_path}: 15 pairs"
    assert lines[1].startswith("lengths in tokens:")
    assert lines[6].startswith("normalised edit distance (tokenizer tokens): mean ")
    assert len(lines) == 7 + 10  # ten histogram bins
    code, _, err = run(capsys, "stats", out_path, "--tokenizer", tmp_path / "nothing-here")
    assert code == 2 and "tokenizer" in err and "no such folder" in err


def test_stats_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "stats", tmp_path / "nope.jsonl")
    assert code == 2 and err == f"dpolab data: error: {tmp_path / 'nope.jsonl'}: no such file\n"


def test_every_row_bad_and_skipped_says_how_many_and_why(tmp_path, capsys):
    source = write_jsonl(tmp_path / "arc.jsonl", [{"question": 1}, {"question": "q"}, {"question": "r"}])
    out_path = tmp_path / "arc_dpo.jsonl"
    code, out, err = run(
        capsys, "build", "arc", "--input", source, "--output", out_path, "--on-bad-rows", "skip"
    )
    assert code == 2 and out == "" and not out_path.exists()
    assert err == (
        f"dpolab data: error: {source}: no pairs to write (skipped 3 rows: 2 × choices: missing; "
        f"1 × question: expected a string, found int)\n"
    )
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    code, _, err = run(capsys, "convert", "hh", "--input", empty, "--output", out_path)
    assert code == 2 and err == f"dpolab data: error: {empty}: no pairs to write (it has no rows)\n"


def test_one_skipped_row_is_one_row(tmp_path, capsys):
    rows = read_jsonl(FIXTURES / "hh_rlhf_train.jsonl")
    rows[4]["rejected"] = rows[4]["chosen"]
    source = write_jsonl(tmp_path / "hh.jsonl", rows)
    code, out, _ = run(
        capsys, "convert", "hh", "--input", source, "--output", tmp_path / "o.jsonl", "--on-bad-rows", "skip"
    )
    assert code == 0
    assert out.splitlines()[1:] == [
        f"{source}: skipped 1 row (1 × rejected: identical to chosen)",
        "  rejected: identical to chosen: rows 5",
    ]
    code, out, _ = run(
        capsys,
        "convert",
        "hh",
        "--input",
        write_jsonl(tmp_path / "one.jsonl", rows[:1]),
        "--output",
        tmp_path / "one_out.jsonl",
    )
    assert code == 0 and out == f"wrote 1 pair to {tmp_path / 'one_out.jsonl'}\n"


def test_stats_bad_row_hint_names_the_flag(tmp_path, capsys):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "c"}])
    code, _, err = run(capsys, "stats", source)
    assert code == 2 and err == (
        f"dpolab data: error: {source}, row 1, field 'rejected': identical to chosen "
        f"(fix the row, or pass --on-bad-rows skip to skip such rows and count them)\n"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_output_in_a_folder_that_cannot_exist_is_one_line(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "build",
        "arc",
        "--input",
        FIXTURES / "arc_challenge_train.jsonl",
        "--output",
        "/proc/x/y.jsonl",
    )
    assert code == 2 and out == ""
    assert err == (
        "dpolab data: error: /proc/x/y.jsonl: cannot write this file: No such file or directory (/proc/x)\n"
    )


def test_output_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, out, err = run(
        capsys, "convert", "hh", "--input", FIXTURES / "hh_rlhf_train.jsonl", "--output", tmp_path / "out"
    )
    assert code == 2 and out == ""
    assert err == f"dpolab data: error: {tmp_path / 'out'}: is a folder; give the name of the file to write\n"
    assert list((tmp_path / "out").iterdir()) == []


def test_split_with_a_single_file_is_refused(tmp_path, capsys):
    source = FIXTURES / "arc_challenge_train.jsonl"
    code, _, err = run(
        capsys, "build", "arc", "--input", source, "--split", "test", "--output", tmp_path / "o.jsonl"
    )
    assert code == 2 and not (tmp_path / "o.jsonl").exists()
    assert err == (
        f"dpolab data: error: {source}: --split test given, but a single file has no splits; drop --split "
        f"(it picks a split of a hub dataset or of a folder saved with save_to_disk)\n"
    )
    code, _, err = run(capsys, "stats", FIXTURES / "hh_rlhf_train.jsonl", "--split", "train")
    assert code == 2 and "a single file has no splits" in err


def test_split_of_a_saved_dataset_folder_is_honoured(tmp_path, capsys):
    import datasets

    records = read_jsonl(FIXTURES / "hh_rlhf_train.jsonl")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records[:5]), "test": datasets.Dataset.from_list(records[5:8])}
    ).save_to_disk(str(tmp_path / "hh"))
    out_path = tmp_path / "hh.jsonl"
    code, out, _ = run(
        capsys, "convert", "hh", "--input", tmp_path / "hh", "--split", "test", "--output", out_path
    )
    assert code == 0 and out == f"wrote 3 pairs to {out_path}\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_stats_into_a_closed_pipe_exits_quietly(tmp_path, unbuffered):
    """`dpolab data stats f | head -1`: the reader has gone before dpolab writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dpolab", "data", "stats", FIXTURES / "hh_rlhf_train.jsonl", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr.decode()) == (141, "")


def test_a_broken_pipe_other_than_stdout_keeps_its_traceback(monkeypatch, capsys):
    import dpolab.commands.data as data_command

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data_command, "run_stats", broken)
    with pytest.raises(BrokenPipeError):
        main(["data", "stats", "x.jsonl"])  # stdout here is no broken pipe: a bug, not `| head`
