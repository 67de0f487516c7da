"""Telling a mistyped local path from a hub id, before anything asks the hub about it."""

from __future__ import annotations

import difflib
import os


def missing_local_path(name: str) -> str | None:
    """Why `name`, which can only mean a local path, names nothing there; None when it exists or
    may be a hub id (`org/name`).

    A name means a local path when it starts like one (`/`, `.`, `~`), has more than one `/` (a hub
    id has one), uses the system's own separator, or its first part is a folder here
    (`runs/sft-typo` with a `runs/` folder present: that is no hub organisation). Otherwise a
    mistyped folder would go to the hub first, which retries for half a minute before it fails."""
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return None
    local = (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or ("/" in name and os.path.isdir(name.split("/", 1)[0]))
    )
    if not local:
        return None
    parent = os.path.dirname(expanded) or "."
    hint = ""
    if os.path.isdir(parent):
        close = difflib.get_close_matches(os.path.basename(expanded), os.listdir(parent), n=1)
        if close:
            hint = f"; did you mean {os.path.join(os.path.dirname(name), close[0])!r}?"
    what = "file" if name.lower().endswith(".gguf") else "folder"
    return f"no such {what}{hint} (a relative path is read from the current directory, {os.getcwd()})"
