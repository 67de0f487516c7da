"""Rows on Arrow tables: the three tables data preparation writes and the batched functions that
`datasets.map` runs from one to the next, in as many processes as `data.num_proc` says.

    source file ──write_raw_rows──▶ raw rows ──examples_batch──▶ examples ──pairs_batch──▶ token ids
    (row, text, error)              (row, status, field, reason, prompt, chosen, rejected as JSON)

`examples_batch` calls the row function of the source (`dpolab.data.formats.normalise`, or a
builder's), `pairs_batch` the stage's tokenisation (`dpolab.data.tokenize`): the per-row
functions stay pure, and the tables keep, in row order, every row that could not be used with
its field and reason, so that the first bad row is the same however many processes did the work.
Tables are Arrow IPC files, memory-mapped when read (`open_table`): no row lives in Python
objects for longer than a batch.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpolab.data.builders import NoPair
from dpolab.data.formats import BadRow, PreferenceExample
from dpolab.data.io import Row, parse_record, read_rows

# the status of a row of the examples and pairs tables
OK, BAD, NO_PAIR = 0, 1, 2
BATCH = 1000  # rows per batch of `datasets.map`, and per batch written
TOKENISE_BATCH = 256  # pairs tokenised together: 768 texts per tokenizer call, ~40 MB of Python objects
MAX_DEFAULT_PROCESSES = 8
MIN_ROWS_PER_PROCESS = 2000  # by default, fewer rows are not worth a process of their own
PROGRESS_MIN_ROWS = 10_000  # progress bars for larger tables only
GATHER = 4096  # rows gathered at a time to write the prepared tables (a shuffled mixture visits many batches)

RAW = pa.schema([("row", pa.int64()), ("text", pa.string()), ("error", pa.string())])
_STATUS = {"row": datasets.Value("int64"), "status": datasets.Value("int8")}
_WHY = {"field": datasets.Value("string"), "reason": datasets.Value("string")}
EXAMPLES = datasets.Features(
    {**_STATUS, **_WHY, **{k: datasets.Value("string") for k in ("prompt", "chosen", "rejected")}}
)
_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")
PAIRS = datasets.Features(
    {
        **{k: datasets.List(datasets.Value("int32")) for k in _IDS},
        "length": datasets.Value("int64"),
        "prompt_truncated": datasets.Value("bool"),
        "completion_truncated": datasets.Value("bool"),
        "content": datasets.Value("binary"),  # a digest of the three id lists (the hold-out's key)
        **_STATUS,
        **_WHY,
    }
)
# the columns of the prepared train and eval tables, as the collator receives them
PREPARED = ("prompt_ids", "chosen_ids", "rejected_ids", "row", "length", "index")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def processes(requested: int | None, rows: int) -> int:
    """How many processes to map `rows` rows with: `requested` (`data.num_proc`) up to one per row,
    or by default the CPUs available, at most 8, and no more than one per MIN_ROWS_PER_PROCESS
    rows (starting a process and sending it the tokenizer costs more than a few rows save)."""
    if requested is None:
        return max(1, min(available_cpus(), MAX_DEFAULT_PROCESSES, rows // MIN_ROWS_PER_PROCESS))
    return max(1, min(requested, rows))


def _batches(rows: Iterator[Row]) -> Iterator[pa.RecordBatch]:
    numbers, texts, errors = [], [], []
    for row in rows:
        if row.text is not None:
            text = row.text
        elif row.record is not None:
            text = json.dumps(row.record, default=str)  # a Parquet file's or hub dataset's row
        else:
            text = None
        numbers.append(row.number)
        texts.append(text)
        errors.append(row.error)
        if len(numbers) == BATCH:
            yield pa.record_batch([numbers, texts, errors], schema=RAW)
            numbers, texts, errors = [], [], []
    if numbers:
        yield pa.record_batch([numbers, texts, errors], schema=RAW)


def write_raw_rows(source: str, split: str | None, path: Path) -> int:
    """Write the rows of `source` (`dpolab.data.io.read_rows`, unparsed where the file holds JSON
    text) to the Arrow file `path`, a batch at a time; returns how many there are."""
    count = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, RAW) as writer:
        for batch in _batches(read_rows(source, split=split, parse=False)):
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def open_table(path: Path) -> datasets.Dataset:
    """The Arrow file `path` as a memory-mapped dataset."""
    return datasets.Dataset.from_file(str(path))


def column(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """One column of a dataset that `map` wrote (no indices mapping) as a numpy array; the rows
    skipped hold no value in a pair's columns: a flag reads False there."""
    values = dataset.data.column(name)
    if values.null_count and pa.types.is_boolean(values.type):
        values = pc.fill_null(values, False)
    return values.to_numpy()


def gather(table: pa.Table, positions: np.ndarray, batches: list[pa.RecordBatch] | None = None) -> pa.Table:
    """The rows at `positions` of a table of many record batches, in that order, one batch of them.

    Not `Table.take`: on a column of lists it first concatenates the whole column (the whole table
    in memory, and its time, at every call); here each batch gives the rows it holds. `batches`:
    `table.to_batches()`, when the caller gathers from the same table many times."""
    batches = table.to_batches() if batches is None else batches
    if len(positions) == 0 or not batches:
        return table.schema.empty_table()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    which = np.searchsorted(starts, positions, side="right") - 1
    parts = [
        batches[b].take(pa.array(positions[which == b] - starts[b], pa.int64())) for b in np.unique(which)
    ]
    gathered = pa.Table.from_batches(parts, schema=table.schema).combine_chunks()
    # the rows are in the order of their batches now; put them back in the order asked
    inverse = np.empty(len(positions), np.int64)
    inverse[np.argsort(which, kind="stable")] = np.arange(len(positions))
    return gathered.take(pa.array(inverse))


def take(dataset: datasets.Dataset, positions: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """The rows at `positions` of a dataset that `map` wrote, `names` columns only, as dicts."""
    return gather(dataset.data.table.select(names), np.asarray(positions, np.int64)).to_pylist()


class RowList(Sequence):
    """The rows of a dataset as a read-only sequence of dicts (a slice gives a list of them), for
    code that takes a list of pairs."""

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            columns = self.dataset[index]
            return [dict(zip(columns, values)) for values in zip(*columns.values())]
        return self.dataset[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.dataset.iter(batch_size=BATCH):
            for values in zip(*batch.values()):
                yield dict(zip(batch, values))


def map_batches(
    dataset: datasets.Dataset,
    fn: Callable[[dict[str, list]], dict[str, list]],
    *,
    features: datasets.Features,
    path: Path,
    num_proc: int | None,
    desc: str,
    batch_size: int = BATCH,
) -> datasets.Dataset:
    """`dataset.map(fn)` in batches of `batch_size` rows, written to `path` (one file per process),
    in row order."""
    if len(dataset) == 0:
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    n = processes(num_proc, len(dataset))
    silence = len(dataset) < PROGRESS_MIN_ROWS and datasets.is_progress_bar_enabled()
    if silence:
        datasets.disable_progress_bars()  # a bar for a few rows is only noise
    if n > 1:
        # the processes are forked: without this, their garbage collector would visit (and so
        # copy) every object this process holds, and each would grow to this process's size
        gc.freeze()
    try:
        return dataset.map(
            fn,
            batched=True,
            batch_size=batch_size,
            writer_batch_size=BATCH,
            num_proc=n if n > 1 else None,
            remove_columns=dataset.column_names,
            features=features,
            cache_file_name=str(path),
            load_from_cache_file=False,
            new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:32],
            desc=desc,
        )
    finally:
        if n > 1:
            gc.unfreeze()
        if silence:
            datasets.enable_progress_bars()


def _empty(columns) -> dict[str, list]:
    return {k: [] for k in columns}


def _skipped(out: dict[str, list], row: int, status: int, field: str | None, reason: str) -> None:
    for k, v in (("row", row), ("status", status), ("field", field), ("reason", reason)):
        out[k].append(v)
    for k in out.keys() - {"row", "status", "field", "reason"}:
        out[k].append(None)


def examples_batch(
    batch: dict[str, list], *, fn: Callable[[dict[str, Any], int], list[PreferenceExample]]
) -> dict[str, list]:
    """Raw rows → examples: `fn(record, row)` (a format's normalisation or a builder) gives each
    row's examples; a row it cannot use (`BadRow`, unreadable) or makes no pair of (`NoPair`)
    becomes one row with its status, field and reason."""
    out = _empty(EXAMPLES)
    for number, text, error in zip(batch["row"], batch["text"], batch["error"]):
        record, error = parse_record(text) if text is not None else (None, error)
        if record is None:
            _skipped(out, number, BAD, None, error or "unreadable")
            continue
        try:
            examples = fn(record, number)
        except BadRow as err:
            _skipped(out, number, BAD, err.field, err.reason)
            continue
        except NoPair as err:
            _skipped(out, number, NO_PAIR, err.field, err.reason)
            continue
        for example in examples:
            for k, v in (("row", number), ("status", OK), ("field", None), ("reason", None)):
                out[k].append(v)
            for k in ("prompt", "chosen", "rejected"):
                out[k].append(json.dumps(getattr(example, k)))
    return out


def _digest(ids: tuple[list[int], ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in ids:
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(array("q", part).tobytes())
    return digest.digest()


def pairs_batch(
    batch: dict[str, list],
    *,
    tokenize: Callable[..., list],
    tokenizer,
    max_length: int | None,
    max_prompt_length: int | None,
) -> dict[str, list]:
    """Examples → token ids, truncated: `tokenize(examples, tokenizer, ...)` (a stage's batched
    tokenisation, `dpolab.data.tokenize.batched`) on the batch; a pair that cannot be trained on
    keeps its row with its field and reason."""
    examples = [
        PreferenceExample(json.loads(p), json.loads(c), json.loads(r), row=n)
        for n, p, c, r in zip(batch["row"], batch["prompt"], batch["chosen"], batch["rejected"])
    ]
    results = tokenize(examples, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    out = _empty(PAIRS)
    for example, result in zip(examples, results):
        if isinstance(result, BadRow):
            _skipped(out, example.row, BAD, result.field, result.reason)
            continue
        ids = (result.prompt_ids, result.chosen_ids, result.rejected_ids)
        for k, v in zip(_IDS, ids):
            out[k].append(v)
        out["length"].append(sum(map(len, ids)))
        out["prompt_truncated"].append(result.prompt_truncated)
        out["completion_truncated"].append(result.completion_truncated)
        out["content"].append(_digest(ids))
        for k, v in (("row", example.row), ("status", OK), ("field", None), ("reason", None)):
            out[k].append(v)
    return out


PREPARED_SCHEMA = pa.schema(
    [
        *((k, pa.list_(pa.int32())) for k in _IDS),
        ("row", pa.int64()),
        ("length", pa.int64()),
        ("index", pa.int64()),
    ]
)


def write_prepared(path: Path, pairs: datasets.Dataset, positions: np.ndarray) -> int:
    """Write the pairs at `positions` (rows of the pairs table, in training order, repeats
    allowed) to the Arrow file `path` with the columns the collator receives (`PREPARED`:
    `index` numbers them from 0); a batch at a time. Returns the number of rows."""
    table = pairs.data.table.select(list(PREPARED[:-1]))
    batches = table.to_batches()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, PREPARED_SCHEMA) as writer:
        for start in range(0, len(positions), GATHER):
            part = gather(table, positions[start : start + GATHER], batches)
            index = pa.array(np.arange(start, start + part.num_rows, dtype=np.int64))
            writer.write_table(part.append_column("index", index).cast(PREPARED_SCHEMA), max_chunksize=BATCH)
    return len(positions)
