"""A Hyperscan prefilter for ``redact``: where in ASCII text a pattern's match may start.

Python's ``re`` tries a pattern at every position of the text unless the pattern begins with a
literal; ``\\b\\d{4}-\\d{4}`` or ``(?i)authorization:`` then scan at well under 100 MB/s. The
prefilter runs a *superset* of the pattern's leading part (its ``head``: the first nodes, which
read at most a few dozen characters) in Hyperscan, at gigabytes per second, and ``re`` is only
asked to match at the positions it reports.

The superset is built from ``re``'s own parse tree, over ASCII only:

* every character test (literal, class, ``.``, ``\\w``...) becomes the set of ASCII characters
  that ``re`` itself says it matches under the flags in force there (so case folding, ``(?a)``,
  ``(?s)`` are ``re``'s, not Hyperscan's);
* zero-width tests (``\\b``, ``^``, ``$``, lookarounds) are dropped, atomic groups and possessive
  repeats become plain ones, a conditional becomes an alternation: each only widens the set of
  matched strings.

So wherever ``re`` matches the head at ``q`` in ASCII text, reading ``text[q:e]``, Hyperscan
reports a match ending at ``e`` that starts at or before ``q`` (its leftmost start). With the
head's minimum width ``w``, every start ``re`` could take lies in some reported ``[from, e - w]``.
Text that is not pure ASCII is not prefiltered (``re`` scans it as before); nor are heads that
may match the empty string, hold a backreference, or that Hyperscan cannot compile. Hyperscan is
an optional dependency: without it (platforms with no wheel) nothing is prefiltered.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from re import _constants as sre  # type: ignore[attr-defined]
from typing import Any

try:
    import hyperscan
except ImportError:  # pragma: no cover - platforms without a Hyperscan wheel
    hyperscan = None

__all__ = ["Prefilter", "build_prefilter"]

_ATOMS = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN)
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_MAXREPEAT = sre.MAXREPEAT
_ZERO_WIDTH = (sre.AT, sre.ASSERT, sre.ASSERT_NOT)
MAX_HITS = 512  # more reports than this in one scan: the head is not selective, re scans instead


class _Never(Exception):
    """This part of the head can match no ASCII text at all."""


class _Unfit(Exception):
    """This head cannot be turned into a Hyperscan superset."""


@functools.lru_cache(maxsize=4096)
def _ascii_set(source: str, flags: int) -> frozenset[int]:
    """The ASCII characters the one-character pattern ``source`` matches, as ``re`` decides."""
    compiled = re.compile(source, flags)
    return frozenset(c for c in range(128) if compiled.fullmatch(chr(c)))


def _class(chars: frozenset[int]) -> str:
    codes = sorted(chars)
    if len(codes) == 1:
        return f"\\x{codes[0]:02x}"
    ranges: list[str] = []
    start = prev = codes[0]
    for c in [*codes[1:], -1]:
        if c == prev + 1:
            prev = c
            continue
        ranges.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = c
    return "[" + "".join(ranges) + "]"


class _Builder:
    def __init__(self, atom_source: Callable[[Any, Any], str]) -> None:
        self.atom_source = atom_source

    def seq(self, sub: Iterable[tuple[Any, Any]], flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in sub)

    def node(self, op: Any, av: Any, flags: int) -> str:
        if op in _ATOMS:
            chars = _ascii_set(self.atom_source(op, av), flags & ~re.VERBOSE)
            if not chars:
                raise _Never
            return _class(chars)
        if op in _ZERO_WIDTH:
            return ""
        if op is sre.BRANCH:
            return self.alternatives([(alt, flags) for alt in av[1]])
        if op is sre.SUBPATTERN:
            _group, add, delete, sub = av
            return f"(?:{self.seq(sub, (flags | add) & ~delete)})"
        if op is sre.ATOMIC_GROUP:
            return f"(?:{self.seq(av, flags)})"
        if op is sre.GROUPREF_EXISTS:
            _group, yes, no = av
            return self.alternatives([(yes, flags), (no or [], flags)])
        if op in _REPEATS:
            lo, hi, item = av
            try:
                inner = self.seq(item, flags)
            except _Never:
                if lo == 0:
                    return ""
                raise
            upper = "" if hi == _MAXREPEAT else str(hi)
            return f"(?:{inner}){{{lo},{upper}}}"
        raise _Unfit(f"regex construct {op}")  # backreferences and anything unknown

    def alternatives(self, alts: list[tuple[Any, int]]) -> str:
        kept: list[str] = []
        for sub, flags in alts:
            try:
                kept.append(self.seq(sub, flags))
            except _Never:
                continue
        if not kept:
            raise _Never
        return "(?:" + "|".join(kept) + ")"


def _collect(_id: int, start: int, end: int, _flags: int, hits: list[tuple[int, int]]) -> bool:
    hits.append((start, end))
    return len(hits) > MAX_HITS  # True stops the scan


class Prefilter:
    """The possible match starts of one pattern's head in ASCII text."""

    __slots__ = ("_db", "min_width", "source")

    def __init__(self, source: str | None, min_width: int) -> None:
        self.source = source  # None: the head matches no ASCII text
        self.min_width = min_width
        self._db: Any = None
        if source is not None:
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(
                expressions=[source.encode("ascii")],
                ids=[0],
                flags=[hyperscan.HS_FLAG_SOM_LEFTMOST],
            )
            self._db = db

    def starts(self, text: str, begin: int, end: int) -> list[int] | None:
        """Every position in ``[begin, end)`` where a match of the head may start, ascending.

        ``None`` when this text cannot be prefiltered (not ASCII, or too many candidates): then
        every position is possible.
        """
        if self._db is None:
            return [] if text.isascii() or text[begin:end].isascii() else None
        segment = text[begin:end]
        if not segment.isascii():
            return None
        hits: list[tuple[int, int]] = []
        try:
            self._db.scan(segment.encode("ascii"), match_event_handler=_collect, context=hits)
        except hyperscan.ScanTerminated:  # _collect stopped it: too many candidates
            return None
        w = self.min_width
        positions: set[int] = set()
        for start, stop in hits:
            positions.update(range(begin + start, begin + stop - w + 1))
        return sorted(positions)


def build_prefilter(
    head: list[tuple[Any, Any]],
    flags: int,
    min_width: int,
    atom_source: Callable[[Any, Any], str],
) -> Prefilter | None:
    """The prefilter of a head (``re`` parse-tree nodes), or None where none can be built."""
    if hyperscan is None or not head or min_width < 1:
        return None
    try:
        source: str | None = _Builder(atom_source).seq(head, flags)
    except _Never:
        source = None
    except (_Unfit, RecursionError):
        return None
    try:
        return Prefilter(source, min_width)
    except hyperscan.error:
        return None
