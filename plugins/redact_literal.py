"""``redact`` for literal ASCII patterns, on the bytes themselves: no decoding, no regex.

When every pattern of a ``redact`` is a plain string of ASCII characters (``password=hunter2``;
no flags that change matching, no groups) and the body's charset is one in which an ASCII byte
always stands for that ASCII character and nothing else does (UTF-8, ASCII, the ISO-8859 and
Windows-125x single-byte sets), then finding the pattern in the decoded text is finding its
bytes in the body, and decoding then encoding with ``surrogateescape`` gives back the very same
bytes. ``re.sub`` of a literal replaces its leftmost non-overlapping occurrences, which is what a
``bytes.find`` loop does; the replacement is the same for every match. So these stages give the
reference's bytes without the decode, the regex and the encode.

Held back: only a tail of the input that is a proper prefix of the pattern (fewer bytes than the
pattern), so a stage never holds more than the pattern's length.
"""

from __future__ import annotations

import codecs
import functools
import re

from plugins.redact_prefilter import compile_database, hyperscan, scan

__all__ = ["LiteralStage", "ascii_transparent"]

_SINGLE_BYTE = re.compile(r"(iso8859-\d+|cp125\d|ascii)")


def ascii_transparent(codec: str) -> bool:
    """True for a charset where ASCII bytes decode to themselves and no other byte sequence
    decodes to an ASCII character (so an ASCII pattern's bytes are found exactly where the
    pattern is found in the text)."""
    name = codecs.lookup(codec).name
    return name == "utf-8" or _SINGLE_BYTE.fullmatch(name) is not None


class _Finder:
    """Every occurrence of one byte string, by Hyperscan (several GB/s; bytes.find manages
    about 2 GB/s on text like logs)."""

    __slots__ = ("_db", "_k")

    def __init__(self, needle: bytes) -> None:
        self._k = len(needle)
        self._db = compile_database("".join(f"\\x{b:02x}" for b in needle), False)

    def starts(self, data: bytes) -> list[int] | None:
        """Start offsets of every occurrence (overlapping ones too), ascending; None when
        there are too many to be worth it."""
        hits = scan(self._db, data)
        if hits is None:
            return None
        k = self._k
        return [end - k for _start, end in hits]


@functools.lru_cache(maxsize=256)
def _finder(needle: bytes) -> _Finder | None:
    if hyperscan is None:
        return None
    try:
        return _Finder(needle)
    except hyperscan.error:  # pragma: no cover - a plain byte string always compiles
        return None


class LiteralStage:
    """One literal pattern, replaced in a stream of bytes."""

    __slots__ = ("_finder", "_held", "_needle", "_replacement", "redactions")

    def __init__(self, needle: bytes, replacement: bytes) -> None:
        assert needle, "an empty pattern is no literal"
        self._needle = needle
        self._replacement = replacement
        self._finder = _finder(needle)
        self._held = b""
        self.redactions = 0

    @property
    def held(self) -> int:
        """Bytes (here: characters, all ASCII) held back."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
        needle = self._needle
        n, k = len(data), len(needle)
        view = memoryview(data)  # the pieces are joined straight from the input, uncopied
        parts: list[memoryview] = []
        pos = 0
        starts = None if self._finder is None else self._finder.starts(data)
        if starts is not None:
            for i in starts:  # leftmost first, skipping those overlapping the one taken
                if i >= pos:
                    parts.append(view[pos:i])
                    pos = i + k
        else:
            i = data.find(needle)
            while i >= 0:
                parts.append(view[pos:i])
                pos = i + k
                i = data.find(needle, pos)
        # hold the longest tail after the last match that the pattern may still continue
        j = max(pos, n - k + 1)
        first = needle[:1]
        while j < n:
            j = data.find(first, j)
            if j < 0:
                j = n
                break
            if needle.startswith(data[j:]):
                break
            j += 1
        self._held = data[j:]
        if not parts:
            return data if j == n else data[:j]
        self.redactions += len(parts)
        parts.append(view[pos:j])
        return self._replacement.join(parts)

    def flush(self, data: bytes = b"") -> bytes:
        data, self._held = self._held + data, b""
        count = data.count(self._needle)
        if not count:
            return data
        self.redactions += count
        return data.replace(self._needle, self._replacement)
