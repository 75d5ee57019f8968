"""A Hyperscan prefilter for ``redact``: where in a text a pattern's match may start.

Python's ``re`` tries a pattern at every position of the text unless the pattern begins with a
literal; ``\\b\\d{4}-\\d{4}`` or ``(?i)authorization:`` then scan at well under 100 MB/s. The
prefilter runs a *superset* of the pattern's leading part (its ``head``: the first nodes, which
read at most a few dozen characters) in Hyperscan, at gigabytes per second, and ``re`` is only
asked to match at the positions it reports.

The superset is built from ``re``'s own parse tree:

* every character test (literal, class, ``.``, ``\\w``...) becomes the set of ASCII characters
  that ``re`` itself says it matches under the flags in force there (so case folding, ``(?a)``,
  ``(?s)`` are ``re``'s, not Hyperscan's), plus, in the form for text that is not pure ASCII,
  any one UTF-8 encoded character outside ASCII when the test may match one (erring on yes:
  ``k`` under ``(?i)`` matches the Kelvin sign);
* zero-width tests (``\\b``, ``^``, ``$``, lookarounds) are dropped, atomic groups and possessive
  repeats become plain ones, a conditional becomes an alternation: each only widens the set of
  matched strings.

So wherever ``re`` matches the head at ``q``, reading ``text[q:e]``, Hyperscan reports a match
ending at ``e`` that starts at or before ``q`` (its leftmost start). With the head's minimum
width ``w`` (in characters, so also a bound in bytes), every start ``re`` could take lies in
some reported ``[from, e - w]``. Pure ASCII text is scanned as it is; other text is encoded as
UTF-8 (``surrogatepass``, so the undecodable bytes kept as surrogates are characters too) and
the byte offsets found are turned back into character positions. Heads that may match the empty
string, hold a backreference, or that Hyperscan cannot compile are not prefiltered, nor is a
text where the candidates pass :data:`MAX_HITS`. Hyperscan is an optional dependency: without it
(platforms with no wheel) nothing is prefiltered.
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

__all__ = ["Prefilter", "build_prefilter", "compile_database", "scan"]

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


# Any one character outside ASCII, in UTF-8 (lone surrogates encoded with "surrogatepass"
# included): a lead byte and its continuation bytes. A match never starts on a continuation byte.
_NON_ASCII = "[\\xc0-\\xff][\\x80-\\xbf]{1,3}"


def _may_match_non_ascii(op: Any, av: Any, flags: int) -> bool:
    """Whether a character test may match some character outside ASCII (erring on yes)."""
    if op is sre.LITERAL:
        return av >= 128 or (bool(flags & re.IGNORECASE) and chr(av).lower() != chr(av).upper())
    if op is not sre.IN:
        return True  # NOT_LITERAL and ANY
    for item, value in av:
        if item is sre.LITERAL:
            if _may_match_non_ascii(item, value, flags):
                return True
        elif item is sre.RANGE:
            lo, hi = value
            if hi >= 128 or (
                flags & re.IGNORECASE and any(chr(c).isalpha() for c in range(lo, hi + 1))
            ):
                return True
        else:  # NEGATE, CATEGORY
            return True
    return False


class _Builder:
    def __init__(self, atom_source: Callable[[Any, Any], str], utf8: bool) -> None:
        self.atom_source = atom_source
        self.utf8 = utf8  # text encoded as UTF-8, not only ASCII

    def seq(self, sub: Iterable[tuple[Any, Any]], flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in sub)

    def node(self, op: Any, av: Any, flags: int) -> str:
        if op in _ATOMS:
            chars = _ascii_set(self.atom_source(op, av), flags & ~re.VERBOSE)
            if self.utf8 and _may_match_non_ascii(op, av, flags):
                return f"(?:{_class(chars)}|{_NON_ASCII})" if chars else f"(?:{_NON_ASCII})"
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


def _stop(_id: int, _start: int, _end: int, _flags: int, _ctx: object) -> bool:
    return True  # the first report is enough


def compile_database(source: str, start_of_match: bool = True) -> Any:
    """A Hyperscan block-mode database of one pattern (``\\xHH`` escapes, bytes semantics);
    ``start_of_match`` makes its reports carry the leftmost start, not only the end."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flags = hyperscan.HS_FLAG_SOM_LEFTMOST if start_of_match else 0
    db.compile(expressions=[source.encode("ascii")], ids=[0], flags=[flags])
    return db


def _database(source: str | None) -> Any:
    return None if source is None else compile_database(source)


def scan(db: Any, data: bytes) -> list[tuple[int, int]] | None:
    """Every (start, end) ``db`` reports in ``data``, in the order of their ends; None past
    :data:`MAX_HITS` (too many to be worth it)."""
    hits: list[tuple[int, int]] = []
    try:
        db.scan(data, match_event_handler=_collect, context=hits)
    except hyperscan.ScanTerminated:  # _collect stopped it: too many candidates
        return None
    return hits


class Prefilter:
    """The possible match starts of one pattern's head in a text.

    Pure ASCII text is scanned as it is; other text as UTF-8 (``surrogatepass``), with the
    byte offsets found turned back into character positions.
    """

    __slots__ = ("_ascii", "_utf8", "min_width", "source", "source_utf8")

    def __init__(self, source: str | None, source_utf8: str | None, min_width: int) -> None:
        self.source = source  # None: the head matches no ASCII text
        self.source_utf8 = source_utf8  # None: the head matches no text at all
        self.min_width = min_width
        self._ascii = _database(source)
        self._utf8 = _database(source_utf8)

    def finds(self, data: bytes) -> bool:
        """Whether a match of the head may start anywhere in ``data`` (a text encoded as
        UTF-8, ``surrogatepass``): False only where :meth:`starts` would find nothing."""
        db = self._ascii if data.isascii() else self._utf8
        if db is None:
            return False
        try:
            db.scan(data, match_event_handler=_stop)
        except hyperscan.ScanTerminated:
            return True
        return False

    def starts(
        self, text: str, begin: int, end: int, data: bytes | None = None
    ) -> list[int] | None:
        """Every position in ``[begin, end)`` where a match of the head may start, ascending.

        ``data``, when given, is ``text[begin:end]`` encoded as UTF-8 (``surrogatepass``)
        already. ``None`` when there are too many candidates to be worth it: then every
        position is possible.
        """
        w = self.min_width
        if data is None:
            data = text[begin:end].encode("utf-8", "surrogatepass")
        if data.isascii():
            if self._ascii is None:
                return []
            hits = scan(self._ascii, data)
            if hits is None:
                return None
            positions: set[int] = set()
            for start, stop in hits:
                positions.update(range(begin + start, begin + stop - w + 1))
            return sorted(positions)
        if self._utf8 is None:
            return []
        hits = scan(self._utf8, data)
        if hits is None:
            return None
        offsets: set[int] = set()
        for start, stop in hits:  # a character is at least one byte: stop - w still bounds
            offsets.update(range(start, stop - w + 1))
        # byte offsets to character positions, counting the characters between them
        found: list[int] = []
        index = previous = 0
        for offset in sorted(offsets):
            if data[offset] & 0xC0 == 0x80:
                continue  # inside a character: no match starts there
            index += len(data[previous:offset].decode("utf-8", "surrogatepass"))
            previous = offset
            found.append(begin + index)
        return found


def build_prefilter(
    head: list[tuple[Any, Any]],
    flags: int,
    min_width: int,
    atom_source: Callable[[Any, Any], str],
) -> Prefilter | None:
    """The prefilter of a head (``re`` parse-tree nodes), or None where none can be built."""
    if hyperscan is None or not head or min_width < 1:
        return None
    sources: list[str | None] = []
    for utf8 in (False, True):
        try:
            sources.append(_Builder(atom_source, utf8).seq(head, flags))
        except _Never:
            sources.append(None)
        except (_Unfit, RecursionError):
            return None
    try:
        return Prefilter(sources[0], sources[1], min_width)
    except hyperscan.error:
        return None
