"""Reading rows with their numbers, and writing JSONL files atomically.

Every row keeps the number a user would look for: the line number in a JSONL file, the 1-based
index in a JSON list, a Parquet file or a hub dataset split. A row that cannot be parsed is
returned with its error instead of being skipped, so that the caller decides (stop or count).

Files are read as streams: a JSONL file line by line, a JSON list element by element (a
MetaMathQA-size list never exists whole as Python objects), a Parquet file batch by batch.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpolab.errors import DpolabError
from dpolab.storage import disk_full_error, is_disk_full

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Row:
    """One input row: its 1-based number, and either the parsed record or why it has none; or,
    read with `parse=False` from a file that holds rows as JSON text (JSONL, a JSON list), that
    text, for `parse_record` to parse later (in another process)."""

    number: int
    record: dict[str, Any] | None
    error: str | None = None
    text: str | None = None


def looks_like_path(source: str | os.PathLike) -> bool:
    """A file name rather than a hub id (`org/name`): it has a data suffix or starts like a path."""
    text = str(source)
    return text.lower().endswith(FILE_SUFFIXES) or text.startswith((".", "/", "~"))


def read_rows(source: str | os.PathLike, *, split: str | None = None, parse: bool = True) -> Iterator[Row]:
    """Rows of a `.jsonl`, `.json` or `.parquet` file, a folder saved by `datasets`, or a hub id.
    A `.json` file holds a list of objects, a dict of columns, `{"data": [...]}`, a single object
    (one row), or JSON Lines (see `_records_of_dict` for how an object is read).

    With `parse=False`, the rows of a JSONL file or a JSON list come back as their JSON `text`,
    unparsed (`parse_record` gives the record or the error `parse=True` would have given).

    Raises `DpolabError` for a missing file, an unknown suffix or an unreachable hub dataset; rows
    that are not JSON objects come back as `Row(number, None, error)`.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        yield from _read_saved_dataset(path, split)
    elif path.exists():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _read_jsonl(path, parse)
        elif suffix == ".json":
            yield from _read_json(path, parse)
        elif suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            raise DpolabError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    elif looks_like_path(text):
        raise DpolabError(f"{text}: no such file")
    else:
        yield from _read_hub(text, split)


def parse_record(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for the JSON text of an object, else (None, why not)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg})"
    if isinstance(record, dict):
        return record, None
    return None, f"not a JSON object but {type(record).__name__}"


def _row(number: int, text: str, parse: bool) -> Row:
    if not parse:
        return Row(number, None, text=text)
    record, error = parse_record(text)
    return Row(number, record, error)


def _read_jsonl(path: Path, parse: bool = True) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of row 1
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines hold no row
            yield _row(number, line, parse)


_FIRST_LINE = 1 << 20  # characters of a first line read to tell JSON Lines from JSON


def _first_line_is_a_row(path: Path) -> bool:
    """Whether the file is JSON Lines: its first line (if under `_FIRST_LINE`) is a whole JSON value
    and more follows (a pretty-printed list or object starts with a line that is not)."""
    with path.open(encoding="utf-8-sig") as handle:
        first = handle.readline(_FIRST_LINE)
        if not first.endswith("\n"):
            return False
        try:
            json.loads(first)
        except json.JSONDecodeError:
            return False
        while chunk := handle.read(_FIRST_LINE):
            if chunk.strip():
                return True
    return False


def _read_json(path: Path, parse: bool = True) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as handle:
        start = handle.read(4096).lstrip()[:1]
    if _first_line_is_a_row(path):  # JSON Lines under a .json name (as SHP's files are)
        yield from _read_jsonl(path, parse)
        return
    if start == "[":
        from dpolab.data.json_list import read_json_list  # which reads `Row`s

        yield from read_json_list(path, parse)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines whose first line is not a whole value on its own
            yield from _read_jsonl(path, parse)
            return
        raise DpolabError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    if isinstance(data, dict):
        data = _records_of_dict(path, data)
    if not isinstance(data, list):
        raise DpolabError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        if isinstance(record, dict):
            yield Row(number, record)
        else:
            yield Row(number, None, f"not a JSON object but {type(record).__name__}")


def _is_message_list(value: Any) -> bool:
    """A non-empty list of chat messages (objects with a `role`), as a conversational row holds."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _records_of_dict(path: Path, data: dict[str, Any]) -> list[Any]:
    """The rows of a `.json` file holding one object, read as the first of these that fits:

    1. one conversational row, if any value is a list of messages (objects with a `role`): a
       dict of columns holds the rows' values in its lists, and no row's value is a single
       message (for conversational columns each element is itself a list of messages);
    2. a wrapper `{"data": [...], ...}`: exactly one list, and it holds objects: the rows;
    3. a dict of columns (`Dataset.to_dict()`, pandas `to_dict("list")`): every value a list, all
       of one length (else an error), row i made of their i-th elements;
    4. one row (a standard row has no lists; a HellaSwag row has a list of strings beside its
       scalar fields).

    Only an object whose values are all lists of equal length, none of them messages, can be
    read both as columns and as one row (with list-valued fields); it is read as columns, the
    reading that can give valid rows: no preference format has a field that is a list of strings,
    and the raw rows the builders read keep scalar fields beside their lists."""
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    if any(_is_message_list(v) for v in lists.values()):
        return [data]
    if len(lists) == 1:
        (values,) = lists.values()
        if values and all(isinstance(v, dict) for v in values):
            return values
    if lists and len(lists) == len(data):
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) != 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise DpolabError(
                f"{path}: a dict of columns must give every column the same length ({shown}); or write a "
                f"JSON list of objects"
            )
        n = next(iter(lengths.values()))
        return [{k: v[i] for k, v in lists.items()} for i in range(n)]
    return [data]


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield Row(number, record)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DpolabError(f"{path}: cannot read as Parquet ({err})") from None


def _read_saved_dataset(path: Path, split: str | None) -> Iterator[Row]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DpolabError(f"{path}: not a dataset saved with `save_to_disk` ({err})") from None
    if isinstance(data, datasets.DatasetDict):
        split = split or ("train" if "train" in data else next(iter(data)))
        if split not in data:
            raise DpolabError(f"{path}: no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    for number, record in enumerate(data, start=1):
        yield Row(number, dict(record))


def _read_hub(name: str, split: str | None) -> Iterator[Row]:
    """A hub dataset `org/name`, or `org/name:config` for one of its configurations
    (`allenai/ai2_arc:ARC-Challenge`)."""
    import datasets

    split = split or "train"
    repo, _, config = name.partition(":")
    try:
        data = datasets.load_dataset(repo, config or None, split=split)
    except Exception as err:
        what = f"split {split!r}" + (f", config {config!r}" if config else "")
        raise DpolabError(
            f"{name}: not a local file, and loading it as a hub dataset ({what}) failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    for number, record in enumerate(data, start=1):
        yield Row(number, dict(record))


def output_error(path: str | os.PathLike, err: OSError) -> DpolabError:
    """The one-line error for an output file that cannot be written (`err` from writing it)."""
    path = Path(path)
    reason = err.strerror or str(err)
    if err.filename is not None and Path(err.filename) in path.parents:  # the folder it needs
        reason += f" ({err.filename})"
    return DpolabError(f"{path}: cannot write this file: {reason}")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new temporary file next to `path`, opened for writing. It is created with mode 0o666, less
    the umask, as `open(path, "w")` would create `path` itself (the kernel applies the umask, so it
    is never read or changed; `tempfile.mkstemp` would make it 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(tmp))


class _OutputFailed(Exception):
    """An `OSError` of the output itself, carried out of the `with` block to be reported once the
    temporary is gone (so that the free space it names is what the disk really has)."""

    def __init__(self, err: OSError, written: int, complete: bool):
        self.err, self.written, self.complete = err, written, complete


@contextmanager
def _atomic_output(
    path: str | os.PathLike,
    *,
    binary: bool = False,
    total: int | None = None,
    then: str = "the file was left as it was",
) -> Iterator[Callable[[Any], None]]:
    """`write(text)` (bytes if `binary`) into a temporary file next to `path`, flushed to the disk
    (fsync) and renamed onto `path` when the block ends; on any exception the temporary is removed
    and an existing `path` is left as it was.

    An `OSError` of the output itself (its folder, the writes, the rename) becomes a `DpolabError`
    naming `path` (for a full disk: the space the file needs, `total` bytes when the caller knows
    it, and the space free; `then` ends that message); an exception of the block's own (reading
    the input, say) passes unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise DpolabError(f"{path}: is a folder; give the name of the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as err:
        raise output_error(path, err) from None
    handle = os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"}))
    written = 0  # bytes handed to `write`: what the file needs

    def write(data) -> None:
        nonlocal written
        written += len(data) if binary else len(data.encode("utf-8"))
        try:
            handle.write(data)
        except OSError as err:
            raise _OutputFailed(err, written, complete=written == total) from None

    try:
        yield write
        try:
            handle.flush()  # a full disk shows here
            os.fsync(handle.fileno())  # on the disk before it takes the name
            handle.close()
            os.replace(tmp, path)
        except OSError as err:
            raise _OutputFailed(err, written, complete=True) from None
    except BaseException as exc:
        with suppress(OSError):
            handle.close()
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, _OutputFailed):
            if is_disk_full(exc.err):
                raise disk_full_error(path, exc.written, at_least=not exc.complete, then=then) from None
            raise output_error(path, exc.err) from None
        raise


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL through a temporary file renamed into place: an interrupted write
    leaves no half file. The file gets the permissions `open(path, "w")` would give a new file.
    Returns the number of records written; raises `DpolabError` naming `path` if it cannot be
    written."""
    count = 0
    with _atomic_output(path) as write:
        for record in records:
            write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically (temporary file + rename), as `write_jsonl_atomic` does."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file + fsync + rename), as `write_jsonl_atomic` does."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(
    path: str | os.PathLike, data: bytes, *, then: str = "the file was left as it was"
) -> None:
    """Write a binary file atomically (temporary file + fsync + rename), as `write_jsonl_atomic` does;
    `then` ends the message of a full disk."""
    with _atomic_output(path, binary=True, total=len(data), then=then) as write:
        write(data)
