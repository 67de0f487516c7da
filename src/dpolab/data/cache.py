"""The data cache: a run's prepared pairs on disk, keyed by everything they depend on, so that the
next run of the same config reads them instead of tokenising again.

An entry is a folder `<cache>/<key>/` with `train.arrow`, `eval.arrow` (if any; Arrow files,
memory-mapped when read) and `meta.json` (the settings the key was made of, the size and SHA-256
of each file, the bad-row reports and truncation counts of the preparation). It is built in a
temporary folder beside it and renamed into place when complete, so that a run that stops half
way leaves no entry; it is checked when read (every file there, of its size and hash), and an
entry that fails the check is removed, with a warning, and prepared again: never used.

The key (`dpolab.data.prepare.cache_settings`) covers the content of every data file
(`source_fingerprint`), the tokenizer (`tokenizer_fingerprint`: its vocabulary, merges,
normaliser, special tokens and chat template, not its name), every data setting and the seeds
the preparation draws with. Where the cache lives: `data.cache_dir`, else `$DPOLAB_CACHE/data`,
else `~/.cache/dpolab/data` (docs/data.md).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from dpolab.data.io import looks_like_path
from dpolab.errors import DpolabError

log = logging.getLogger("dpolab")

VERSION = 1  # of the entries' layout and of what preparation writes in them
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPOLAB_CACHE", Path.home() / ".cache" / "dpolab")).expanduser() / "data"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(source: str, split: str | None) -> dict[str, Any]:
    """What identifies the content of a data source: the SHA-256 of a file, of every file of a
    folder saved by `datasets`, or a hub dataset's fingerprint (`datasets`' own, from its files
    and revision). A source that cannot be read gets none: reading it fails with its own message."""
    path = Path(source).expanduser()
    if path.is_file():
        return {"sha256": file_sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"files": {str(p.relative_to(path)): file_sha256(p) for p in files}}
    if looks_like_path(source):
        return {"missing": True}
    repo, _, config = source.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None, split=split or "train")
    except Exception:  # reading it later says why
        return {"hub": source, "unavailable": True}
    return {"hub": source, "split": split or "train", "fingerprint": loaded._fingerprint}


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer makes of a text: the whole `tokenizer.json` of a fast tokenizer
    (vocabulary, merges, normaliser, pre-tokeniser, the special tokens the post-processor adds,
    added tokens), or every file `save_pretrained` writes for another kind; its class, special
    tokens and chat template. Two copies of one tokenizer in different folders hash the same."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            for file in sorted(Path(folder).rglob("*")):
                if file.is_file():
                    digest.update(f"{file.relative_to(folder)}\0".encode() + file.read_bytes())
    described = {
        "class": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "add_bos_token": getattr(tokenizer, "add_bos_token", None),
        "add_eos_token": getattr(tokenizer, "add_eos_token", None),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def key_of(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Entry:
    folder: Path
    meta: dict[str, Any]
    train: datasets.Dataset
    eval: datasets.Dataset | None


class DamagedEntry(Exception):
    """An entry that is not as it was written (a file missing, cut short or changed)."""


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def open_entry(folder: Path, *, verify: bool = True) -> Entry:
    """The entry in `folder`; with `verify`, each of its files checked against its size and hash
    first. Raises `DamagedEntry` saying what is wrong."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != VERSION:
            raise DamagedEntry(f"written by another version ({meta.get('version')})")
        for name, expected in meta["files"].items():
            path = folder / name
            if not path.is_file():
                raise DamagedEntry(f"{name} is missing")
            if path.stat().st_size != expected["size"]:
                raise DamagedEntry(f"{name} has {path.stat().st_size} bytes, not {expected['size']}")
            if verify and file_sha256(path) != expected["sha256"]:
                raise DamagedEntry(f"{name} is not as it was written (its SHA-256 differs)")
        tables = {name: datasets.Dataset.from_file(str(folder / name)) for name in meta["files"]}
        for name, table in tables.items():
            if len(table) != meta["pairs"][name]:
                raise DamagedEntry(f"{name} holds {len(table)} pairs, not {meta['pairs'][name]}")
    except DamagedEntry:
        raise
    except Exception as err:  # a missing or unreadable meta.json, an Arrow file that does not open
        raise DamagedEntry(
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        ) from None
    return Entry(folder, meta, tables["train.arrow"], tables.get("eval.arrow"))


def _remove(path: Path) -> None:
    """Remove an entry or a temporary folder: renamed aside first, so that nobody reads it half gone."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.removed")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def lookup(folder: Path, *, repair: bool = True) -> Entry | None:
    """The verified entry in `folder`, or None when there is none; a damaged entry is reported
    and (with `repair`) removed, and None returned: it is prepared again, never used."""
    if not folder.exists():
        return None
    try:
        return open_entry(folder)
    except DamagedEntry as err:
        log.warning("data cache: %s is damaged (%s); preparing the data again", folder, err)
        if repair:
            _remove(folder)
        return None


def _errno(err: OSError) -> int | None:
    """The error number of an OSError, also where pyarrow has only put it in the message
    ("Error writing bytes to file. Detail: [errno 28] No space left on device")."""
    if err.errno is not None:
        return err.errno
    found = re.search(r"\[errno (\d+)\]", str(err), flags=re.IGNORECASE)
    return int(found.group(1)) if found else None


def write_error(folder: Path, err: OSError) -> DpolabError:
    code = _errno(err)
    reason = os.strerror(code) if code is not None else str(err).strip().splitlines()[0]
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = "free space there, or set data.cache_dir or DPOLAB_CACHE to a folder on another disk"
    else:
        advice = "set data.cache_dir or DPOLAB_CACHE to a folder you can write"
    return DpolabError(f"{folder}: cannot write the data cache: {reason} ({advice})")


def _is_write_error(err: OSError, tmp: Path) -> bool:
    """An error of writing the entry (a full disk, a quota, a read-only folder), not of reading the data."""
    if _errno(err) in _DISK_ERRNOS:
        return True
    return err.filename is not None and str(err.filename).startswith(str(tmp))


def write_entry(folder: Path, build: Callable[[Path], dict[str, Any]], settings: dict[str, Any]) -> Entry:
    """Build the entry in a temporary folder beside `folder` (`build(tmp)` writes the Arrow files
    and returns `{"pairs": {file name: rows}, ...}` for meta.json) and rename it into place.

    Any failure removes the temporary folder: no partial entry is ever left. A full disk (or a
    folder that cannot be written) is a `DpolabError` naming `folder`. If another process put the
    same entry in place first, that one is used."""
    tmp = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise write_error(folder, err) from None
    try:
        meta = {"version": VERSION, "key": folder.name, "settings": settings, **build(tmp)}
        meta["files"] = {name: _describe(tmp / name) for name in meta["pairs"]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
            _remove(tmp)  # another process finished the same entry first
            return open_entry(folder)
    except OSError as err:
        _remove(tmp)
        if _is_write_error(err, tmp):
            raise write_error(folder, err) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    return open_entry(folder, verify=False)
