"""Reading the small files users write (variant, task, study files): one clear error per fault.

Every fault — unreadable, too large, not UTF-8 — is one `UnipetlError` that names the file and,
for a bad byte, its offset and line. Lives in `spaces` (the bottom layer) so variant files here
and task / study files in `evaluators` / `search` share it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from unipetl.spaces.registry import UnipetlError

MAX_SPEC_FILE = 1_000_000  # bytes; larger task / study files are refused before parsing (hostile or wrong file)

def bad_utf8(data: bytes, err: UnicodeDecodeError, *, offset: int = 0, line: int = 1) -> str:
    """Where a UTF-8 decode error of `data` sits: 'byte 0xe9 at offset 18 (line 2)'.

    `offset` / `line` are those of data[0] in the file (for chunked reads)."""
    lines = line + data.count(b"\n", 0, err.start)
    return f"byte 0x{data[err.start]:02x} at offset {offset + err.start} (line {lines})"


def read_text_file(path: str | Path, what: str, *, limit: int = MAX_SPEC_FILE) -> str:
    """A small user file as text: one UnipetlError naming the file when it cannot be read, is
    larger than `limit` bytes or is not UTF-8 (with the offset of the first bad byte). A UTF-8
    byte-order mark is dropped."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as err:
        raise UnipetlError(f"cannot read {what} {str(path)!r}: {err.strerror}.") from None
    if len(raw) > limit:
        raise UnipetlError(f"{what} {str(path)!r} is larger than {limit} bytes; a {what} is a few lines of YAML / JSON.")
    skip = 3 if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnipetlError(f"{what} {str(path)!r} is not a UTF-8 text file: {bad_utf8(raw[skip:], err, offset=skip)}.") from None
