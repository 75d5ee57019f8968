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

from plugins.redact.prefilter import compile_database, hyperscan

__all__ = ["SPARSE_BYTES", "LiteralStage", "ascii_transparent"]

SPARSE_BYTES = 3072  # Hyperscan while occurrences are fewer than one in this many bytes
_CUT_TRIES = 8  # a needle that overlaps itself may need more steps back: then match by match
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
        there are more than one per :data:`SPARSE_BYTES` (a callback each costs more than
        ``bytes.split`` then)."""
        ends: list[int] = []
        cap = len(data) // SPARSE_BYTES

        def on_match(_id: int, _start: int, end: int, _flags: int, _ctx: object) -> bool:
            ends.append(end)
            return len(ends) > cap  # True stops the scan

        try:
            self._db.scan(data, match_event_handler=on_match)
        except hyperscan.ScanTerminated:
            return None
        k = self._k
        return [end - k for end in ends]


@functools.lru_cache(maxsize=256)
def _finder(needle: bytes) -> _Finder | None:
    if hyperscan is None:
        return None
    try:
        return _Finder(needle)
    except hyperscan.error:  # pragma: no cover - a plain byte string always compiles
        return None


class LiteralStage:
    """One literal pattern, replaced in a stream of bytes.

    Two ways, picked per chunk by how many occurrences the previous one had (measured on log
    text, 256 KiB chunks: Hyperscan's scan is about 5 GB/s plus ~1 µs per occurrence, for its
    callback and the Python that keeps the leftmost-first ones; ``bytes.split`` then
    ``join`` about 2 GB/s plus ~0.25 µs per occurrence, all in C; they break even near one
    occurrence per 3 KB):

    * sparse: Hyperscan finds the occurrences, the pieces between them are joined;
    * dense: the chunk is cut where no occurrence straddles (:meth:`_cut`), and everything
      before the held tail is split on the pattern and joined with the replacement, counted
      by the number of pieces.
    """

    __slots__ = ("_dense", "_finder", "_held", "_needle", "_replacement", "redactions")

    def __init__(self, needle: bytes, replacement: bytes) -> None:
        assert needle, "an empty pattern is no literal"
        self._needle = needle
        self._replacement = replacement
        self._finder = _finder(needle)
        self._dense = self._finder is None  # without Hyperscan: always split
        self._held = b""
        self.redactions = 0

    @property
    def held(self) -> int:
        """Bytes (here: characters, all ASCII) held back."""
        return len(self._held)

    def feed_after(self, held: bytes, data: bytes) -> tuple[bytes, bytes]:
        """:meth:`feed` of ``data`` with ``held`` in place of what this stage holds (a text
        stage's own held text, handed over); the output, and what is held now (handed back:
        the stage keeps nothing)."""
        self._held = held
        out = self.feed(data)
        held, self._held = self._held, b""
        return out, held

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
        n, k = len(data), len(self._needle)
        if not self._dense and self._finder is not None:
            starts = self._finder.starts(data)
            if starts is not None:
                return self._join_at(data, n, k, starts)
            self._dense = True
        cut = self._cut(data, n, k)
        if cut is None:
            return self._join_at(data, n, k, None)
        return self._split(data, n, k, cut)

    def _cut(self, data: bytes, n: int, k: int) -> int | None:
        """Where ``data`` may be cut: every occurrence starting before it lies within
        ``data`` and none straddles it, so the leftmost-first matches before it are those of
        the whole stream. None when a pattern that overlaps itself (``aa``, ``abab``) leaves
        no such place near the end."""
        cut = n - k + 1
        if cut <= 0:
            return 0
        needle = self._needle
        for _ in range(_CUT_TRIES):  # one step at most unless the pattern overlaps itself
            s = data.rfind(needle, max(0, cut - k + 1), cut + k - 1)
            if s < 0:
                return cut
            cut = s  # an occurrence straddles the cut: cut before it
        return None

    def _split(self, data: bytes, n: int, k: int, cut: int) -> bytes:
        """Split on the pattern and join with the replacement, all before ``cut`` at once; the
        few bytes after it match by match."""
        needle, replacement = self._needle, self._replacement
        i = data.find(needle, cut)
        if i < 0:  # nothing starts after the cut: all of it up to the held tail at once
            j = self._tail(data, n, k, cut)
            self._held = data[j:]
            pieces = (data if j == n else data[:j]).split(needle)
            count = len(pieces) - 1
            self._dense = count * SPARSE_BYTES >= n
            if not count:
                return pieces[0]
            self.redactions += count
            return replacement.join(pieces)
        pieces = data[:cut].split(needle) if cut else [b""]
        count = len(pieces) - 1
        view = memoryview(data)
        parts: list[bytes | memoryview] = [replacement.join(pieces)]
        pos = cut
        while i >= 0:
            parts += (view[pos:i], replacement)
            count += 1
            pos = i + k
            i = data.find(needle, pos)
        j = self._tail(data, n, k, pos)
        self._held = data[j:]
        parts.append(view[pos:j])
        self.redactions += count
        self._dense = count * SPARSE_BYTES >= n
        return b"".join(parts)

    def _join_at(self, data: bytes, n: int, k: int, starts: list[int] | None) -> bytes:
        """The leftmost-first of the occurrences (``starts``, else found with ``bytes.find``)
        replaced, the pieces between them joined straight from the input."""
        needle = self._needle
        view = memoryview(data)
        parts: list[memoryview] = []
        pos = 0
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
        j = self._tail(data, n, k, pos)
        self._held = data[j:]
        if not parts:
            return data if j == n else data[:j]
        self.redactions += len(parts)
        parts.append(view[pos:j])
        return self._replacement.join(parts)

    def _tail(self, data: bytes, n: int, k: int, pos: int) -> int:
        """Where the longest tail after ``pos`` that the pattern may still continue starts
        (it is held back)."""
        needle = self._needle
        j = max(pos, n - k + 1)
        first = needle[:1]
        while j < n:
            j = data.find(first, j)
            if j < 0:
                return n
            if needle.startswith(data[j:]):
                return j
            j += 1
        return n

    def flush(self, data: bytes = b"") -> bytes:
        data, self._held = self._held + data, b""
        pieces = data.split(self._needle)
        if len(pieces) == 1:
            return data
        self.redactions += len(pieces) - 1
        return self._replacement.join(pieces)
