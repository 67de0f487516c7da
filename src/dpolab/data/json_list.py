"""A file holding one JSON list, read element by element: a MetaMathQA-size list (395k rows) never
exists whole as Python objects, only a chunk of its text (`_CHUNK` characters) and one element.

Each element is decoded by the standard library's decoder (`json.JSONDecoder.raw_decode`), so it
is what `json.loads` of the whole file would give; a syntax error names its line and column in
the whole file, as `json.loads` would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from dpolab.data.io import Row
from dpolab.errors import DpolabError

_CHUNK = 1 << 20  # characters read at a time
_AFTER_ELEMENT = (" ", "\t", "\r", "\n", ",", "]")  # what may follow an element of a list


class _JsonText:
    """The text of a JSON file read in chunks, with what was dropped from the front counted, so
    that an error names its line and column in the whole file."""

    def __init__(self, handle):
        self.handle, self.buf, self.pos, self.eof = handle, "", 0, False
        self.dropped, self.dropped_lines, self.last_newline = 0, 0, -1

    def more(self) -> bool:
        """Read another chunk (dropping what was read already); False at the end of the file."""
        if self.eof:
            return False
        newlines = self.buf.count("\n", 0, self.pos)
        if newlines:
            self.dropped_lines += newlines
            self.last_newline = self.dropped + self.buf.rindex("\n", 0, self.pos)
        self.dropped += self.pos
        chunk = self.handle.read(_CHUNK)
        self.buf, self.pos, self.eof = self.buf[self.pos :] + chunk, 0, not chunk
        return bool(chunk)

    def skip_space(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos : self.pos + 1]

    def error(self, path: Path, msg: str, at: int) -> DpolabError:
        newline = self.buf.rfind("\n", 0, at)
        line = self.dropped_lines + self.buf.count("\n", 0, at) + 1
        column = at - newline if newline >= 0 else self.dropped + at - self.last_newline
        return DpolabError(f"{path}: not valid JSON ({msg} at line {line}, column {column})")


def read_json_list(path: Path, parse: bool = True) -> Iterator[Row]:
    """The elements of a file holding one JSON list, decoded one at a time."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as handle:
        text = _JsonText(handle)
        text.skip_space()
        text.pos += 1  # the "["
        number = 0
        if text.skip_space() == "]":
            text.pos += 1
        else:
            while True:
                text.skip_space()
                try:
                    value, end = decoder.raw_decode(text.buf, text.pos)
                    if not text.eof and text.buf[end : end + 1] not in _AFTER_ELEMENT:
                        raise json.JSONDecodeError("cut", text.buf, end)  # a number cut by the chunk
                except json.JSONDecodeError as err:
                    if not text.eof:
                        text.more()
                        continue  # the element may go on in the next chunk
                    raise text.error(path, err.msg, err.pos) from None
                number += 1
                if not parse:
                    yield Row(number, None, text=text.buf[text.pos : end])
                elif isinstance(value, dict):
                    yield Row(number, value)
                else:
                    yield Row(number, None, f"not a JSON object but {type(value).__name__}")
                text.pos = end
                separator = text.skip_space()
                if separator == "]":
                    text.pos += 1
                    break
                if separator != ",":
                    raise text.error(path, "Expecting ',' delimiter", text.pos)
                text.pos += 1
        if text.skip_space():
            raise text.error(path, "Extra data", text.pos)
