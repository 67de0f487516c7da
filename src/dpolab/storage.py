"""Writing that survives a full disk and a kill: appends written whole or not at all, folders
flushed to the disk, and the one line a full disk ends in (the path, the space needed, the space
free). Whole files are written atomically by `dpolab.data.io` (`write_json_atomic`,
`write_text_atomic`, `write_bytes_atomic`), which reports a full disk through this module.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import suppress
from pathlib import Path

from dpolab.errors import DpolabError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
# less than this free after a failed torch.save into a folder: its disk was full (see is_disk_full)
NEARLY_FULL = 1 << 20


def format_size(n: int) -> str:
    """Bytes for a message: `312 bytes`, `4.0 KiB`, `2.5 MiB`, `1.2 GiB`."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> int:
    """Bytes free (for this user) on the disk that holds `path`, or its nearest existing folder."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(err: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether `err`, raised while writing (into `folder`), means that the disk is full: an
    `OSError` ENOSPC or EDQUOT in its chain, or a library's error that says so (safetensors). A
    `torch.save` to a path says only `unexpected pos N vs M`: given the folder it wrote in, such a
    `RuntimeError` counts when less than `NEARLY_FULL` is free there (call this before the partial
    files are removed)."""
    seen, depth = err, 0
    while seen is not None and depth < 20:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if any(text in str(seen) for text in _DISK_FULL_TEXT):
            return True
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return folder is not None and isinstance(err, RuntimeError) and free_space(folder) < NEARLY_FULL


def disk_full_error(
    path: str | os.PathLike,
    needed: int,
    *,
    what: str = "writing it",
    at_least: bool = False,
    about: str = "",
    then: str = "",
) -> DpolabError:
    """The one line for a full disk: `PATH: no space left on device: WHAT needs N, F free there; THEN`.
    `at_least`: N is a lower bound; `about`: N is an estimate, and what it is (`the size of X`). The
    free space is measured now: call this once the partial files are gone."""
    need = f"{'at least ' if at_least else ''}{'about ' if about else ''}{format_size(needed)}"
    if about:
        need += f" ({about})"
    message = (
        f"{path}: no space left on device: {what} needs {need}, {format_size(free_space(path))} free there"
    )
    return DpolabError(message + (f"; {then}" if then else ""))


def append_text(
    path: str | os.PathLike,
    text: str,
    *,
    sync: bool = False,
    what: str = "the text to append",
    then: str = "what the file held is kept",
) -> None:
    """Append `text` (whole lines) to `path`, whole or not at all: a write that fails (a full disk)
    is cut back off, so that the file keeps exactly what it held, and raises a `DpolabError` naming
    the path and the space `text` needs (`what` and `then` word the message). `sync`: fsync before
    returning, for what must survive a power cut, not only a kill (a kill loses nothing written).
    A kill during the write can leave a part of `text` at the end, after the last newline: readers
    of appended files drop such a tail."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _output_error(path, err) from None
    failed = None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        except OSError as err:
            failed = err
            with suppress(OSError):
                os.ftruncate(fd, size)
    finally:
        os.close(fd)
    if failed is not None:
        if is_disk_full(failed):
            raise disk_full_error(path, len(data), what=what, then=then) from None
        raise _output_error(path, failed) from None


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under `folder`, then the folders themselves, to the disk."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync folders
    finally:
        os.close(fd)


def _output_error(path: Path, err: OSError) -> DpolabError:
    from dpolab.data.io import output_error

    return output_error(path, err)
