r"""The built-in ``redact`` transform: regex redaction of a streamed text body.

Reference result (:func:`redact_reference`): decode the whole body with its charset
(``errors='surrogateescape'``, so undecodable bytes survive), apply
``re.sub(pattern, replacement, text)`` for each pattern in order, encode back the same way. The
stream produces exactly that, byte for byte, however the body is split, as long as deciding a
match needs at most ``max_match`` characters of held-back text.

Each pattern is a *stage* fed with decoded text; stage ``k + 1`` reads stage ``k``'s output. A
stage keeps a buffer: some already consumed text (context, so that ``^``, ``\b`` and
lookbehinds see what they would see in the whole text: searches start at ``pos=``) followed by
the held, undecided text.

When is a match final?
----------------------
``re`` finds matches by trying paths in a fixed order and taking the first that succeeds. A
result found in the text available so far may change once more text arrives only if some path
tried before the successful one (or that one itself) needed to read past the end of the available
text: a greedy ``a+`` asking for one more ``a``, ``abcd`` in ``abcd|ab`` running into the end,
``$``, ``\b`` or a lookahead looking at the next character.

To know where that happens, each pattern is compiled a second time (still with ``re``, so with
exactly the same character classes and the same order of paths) with a sentinel character Σ (one
that does not occur in the text) appended to the text:

* every character test ``C`` becomes ``(?:C|Σ|(?<=Σ))``: reading past the end consumes Σ, and
  past Σ everything matches without consuming;
* ``$``, ``\Z``, ``\b``, ``\B`` consume Σ when their answer depends on the next character;
  a lookahead whose first successful path went past the end makes the whole path go past the
  end (a named marker group records it); a backreference may end up past the end when the text
  ends within the group's width; a lookbehind with an end assertion in it, near the end.

A match of this rewritten pattern is the first path, in ``re``'s order, that either succeeds
within the text or reaches past its end. If it ends within the text, it is exactly the match ``re``
finds on the whole body: final. If it ends past the end, its start is the *frontier*: the text
before it can never be part of a match and is released at once; the rest is held. Matches and
their groups are taken from ``re`` itself in lock-step (and checked against the rewritten
pattern's). ``re.sub``'s rules for empty matches are kept by restarting ``finditer`` where an
empty match was committed and skipping that match.

Speed: the rewritten form blocks ``re``'s fast literal search, so the pattern searched over the
whole chunk keeps its leading part unchanged (the longest prefix that looks at most 64 characters
ahead, e.g. ``password=``) and its next node too if it is a repeated single character test
(``\S+``), with Σ added to the class; only positions within that many characters of the end are
then checked with the fully rewritten pattern. The common path (no match near the end of the
chunk) is one ``re`` search over the chunk and one over its last few characters. That search is
replaced by a Hyperscan scan for where the leading part may match
(:mod:`plugins.redact_prefilter`), and ``re`` only matches there: patterns without a literal
prefix (``\b\d{4}-…``, ``(?i)token=``) no longer make ``re`` try every position.

Dense matches: a Python step per match (or per prefilter candidate) costs more than ``re`` itself
once matches come more often than one per :data:`SPARSE_CHARS` characters. Then a long stretch of
decided text is replaced with one ``re.subn`` (:meth:`_Stage._bulk`: where it may end and start
so that ``re.sub`` on the stretch alone gives what it gives in the whole text), with the pattern
compiled ``re.ASCII`` when the stretch is ASCII and that changes nothing (:func:`_ascii_form`);
the stream goes back to the prefilter when matches thin out.

Fail closed: when the held text of a stage grows beyond ``max_match`` characters it is replaced
by the replacement (group references expanded as empty), counted as a redaction, and the stage
goes into *overflow*: it keeps the first ``max_match`` characters of the runaway match plus the
most recent text and swallows what follows for as long as that match may still be going on (the
rest of a 10 KiB ``password=\S+`` token, of an unterminated string...); scanning resumes where
``re`` ends it. Held text never leaks. Patterns whose decision needs a long look-ahead even for a
short match (``a.*z|a`` must know whether a ``z`` follows) are also subject to this rule.

Unsupported (rejected at load): a lookahead inside a lookbehind.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from plugins.redact_literal import LiteralStage, ascii_transparent
from plugins.redact_prefilter import Prefilter, build_prefilter
from proxy import transform_api
from proxy.transform_api import codec_for, drive

__all__ = ["Options", "Redact", "RedactStream", "parse_size", "redact_reference"]

DEFAULT_REPLACEMENT = "[REDACTED]"
DEFAULT_MAX_MATCH = 4096

# --------------------------------------------------------------------------------------------
# reference


def redact_reference(
    body: bytes,
    patterns: Sequence[str],
    replacement: str = DEFAULT_REPLACEMENT,
    charset: str | None = "utf-8",
) -> bytes:
    """What the stream must produce: ``re.sub`` of every pattern, in order, on the whole body."""
    codec = codec_for(charset)
    text = body.decode(codec, errors="surrogateescape")
    for pattern in patterns:
        text = re.sub(pattern, replacement, text)
    return text.encode(codec, errors="surrogateescape")


# --------------------------------------------------------------------------------------------
# options


def parse_size(value: Any) -> int:
    """Sizes as everywhere in ``proxy.yaml`` (``512``, ``4KiB``, ``1MiB``), as a pydantic
    error when not one."""
    if isinstance(value, bool):
        raise PydanticCustomError("size", "expected a size like 4KiB, 512 or 1MiB, got a boolean")
    try:
        return transform_api.parse_size(value)
    except ValueError:
        raise PydanticCustomError(
            "size", "expected a size like 4KiB, 512 or 1MiB, got {value}", {"value": repr(value)}
        ) from None


def check_regex(pattern: str) -> str:
    """Validate one pattern: valid for ``re``, and supported for streaming."""
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise PydanticCustomError(
            "regex", "not a valid regex: {error}", {"error": str(exc)}
        ) from None
    try:
        _compile_spec(pattern)
    except _Unsupported as exc:
        raise PydanticCustomError(
            "regex_streaming", "regex not supported for streaming: {error}", {"error": str(exc)}
        ) from None
    return pattern


class Options(BaseModel):
    """Options of ``redact``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patterns: Annotated[
        list[Annotated[StrictStr, AfterValidator(check_regex)]], Field(min_length=1)
    ]
    replacement: StrictStr = DEFAULT_REPLACEMENT
    max_match: Annotated[int, BeforeValidator(parse_size), Field(ge=1)] = DEFAULT_MAX_MATCH

    @field_validator("replacement")
    @classmethod
    def _check_replacement(cls, value: str, info: ValidationInfo) -> str:
        for i, pattern in enumerate(info.data.get("patterns") or ()):
            try:
                re.compile(pattern).sub(value, "")  # parses the template eagerly
            except (re.error, IndexError, ValueError) as exc:
                raise PydanticCustomError(
                    "replacement",
                    "not a valid replacement template for patterns[{index}]: {error}",
                    {"index": i, "error": str(exc)},
                ) from None
        return value


# --------------------------------------------------------------------------------------------
# compiling a pattern: re's parse tree back to re syntax, plain or with the sentinel rewrite


class _Unsupported(Exception):
    """A pattern construct the streaming matcher cannot handle."""


_MAXREPEAT = sre_parse.MAXREPEAT
_INF = float("inf")
_TAIL_REACH = 64  # at most this many positions are checked with the fully rewritten pattern
_BULK_REACH = 256  # patterns reading at most this far from a match start may be replaced in bulk
_BULK_MIN = 1024  # ... on at least this many characters of decided text
_CUT_TRIES = 8  # steps back from the end looking for a place to end the bulk replacement
SPARSE_CHARS = 3072  # fewer matches than one in this many characters: match by match
_SIGMAS = ("\x00", "\ud800", "\udbff", "\ufdd0", "\U0010fffe", "\uffff")
_ATOMS = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN)
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_FORWARD_AT = (sre.AT_END, sre.AT_END_STRING, sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY)
_CATEGORY_ESCAPES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
_AT_SOURCE = {
    sre.AT_BEGINNING: "^",
    sre.AT_BEGINNING_STRING: r"\A",
    sre.AT_END: "$",
    sre.AT_END_STRING: r"\Z",
    sre.AT_BOUNDARY: r"\b",
    sre.AT_NON_BOUNDARY: r"\B",
}
_FLAG_LETTERS = (
    (re.IGNORECASE, "i"),
    (re.MULTILINE, "m"),
    (re.DOTALL, "s"),
    (re.ASCII, "a"),
    (re.UNICODE, "u"),
)
_ANYCHAR = "(?s:.)"


def _u(c: int) -> str:
    return f"\\U{c:08x}"


def _flag_letters(flags: int) -> str:
    return "".join(letter for flag, letter in _FLAG_LETTERS if flags & flag)


def _children(op: Any, av: Any) -> list[Any]:
    if op is sre.BRANCH:
        return list(av[1])
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS:
        return [av[2]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op is sre.GROUPREF_EXISTS:
        return [x for x in av[1:] if x is not None]
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    return []


def _contains(sub: Iterable[tuple[Any, Any]], pred: Callable[[Any, Any], bool]) -> bool:
    return any(
        pred(op, av) or any(_contains(child, pred) for child in _children(op, av)) for op, av in sub
    )


def _is_lookahead(op: Any, av: Any) -> bool:
    return op in (sre.ASSERT, sre.ASSERT_NOT) and av[0] == 1


def _is_forward_at(op: Any, av: Any) -> bool:
    return op is sre.AT and av in _FORWARD_AT


def _reach(sub: Iterable[tuple[Any, Any]], flags: int) -> float:
    """An upper bound of how many characters from its start a sequence may read."""
    total = 0.0
    for op, av in sub:
        if op in _ATOMS:
            total += 1
        elif op is sre.AT:
            total += 2 if av is sre.AT_END and not flags & re.MULTILINE else 1
        elif op is sre.BRANCH:
            total += max(_reach(alt, flags) for alt in av[1])
        elif op is sre.SUBPATTERN:
            total += _reach(av[3], (flags | av[1]) & ~av[2])
        elif op in _REPEATS:
            total += _INF if av[1] == _MAXREPEAT else av[1] * _reach(av[2], flags)
        elif op is sre.ATOMIC_GROUP:
            total += _reach(av, flags)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            if av[0] == 1:
                total += _reach(av[1], flags)
            elif _contains(av[1], _is_forward_at):
                total += 2
        elif op is sre.GROUPREF_EXISTS:
            total += max(_reach(x, flags) if x is not None else 0 for x in av[1:])
        else:  # GROUPREF and anything unknown
            return _INF
    return total


class _Emitter:
    """Writes re syntax for (a part of) a parse tree, plain or rewritten for a sentinel."""

    def __init__(self, sigma: str, groupwidths: Sequence[Any]) -> None:
        self.sig = _u(ord(sigma))
        self.vac = f"(?<={self.sig})"  # past the sentinel: everything matches, consuming nothing
        self.groupwidths = groupwidths
        self.names: dict[int, str] = {}  # group number -> name, where it is not g<number>
        self.serial = 0

    def _name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def name(self, group: int) -> str:
        return self.names.get(group, f"g{group}")

    # ---- shared

    def atom(self, op: Any, av: Any) -> str:
        if op is sre.LITERAL:
            return _u(av)
        if op is sre.NOT_LITERAL:
            return f"[^{_u(av)}]"
        if op is sre.ANY:
            return "."
        return "[" + "".join(self.class_item(o, a) for o, a in av) + "]"

    @staticmethod
    def class_item(op: Any, av: Any) -> str:
        if op is sre.NEGATE:
            return "^"
        if op is sre.LITERAL:
            return _u(av)
        if op is sre.RANGE:
            return f"{_u(av[0])}-{_u(av[1])}"
        if op is sre.CATEGORY and av in _CATEGORY_ESCAPES:
            return _CATEGORY_ESCAPES[av]
        raise _Unsupported(f"character class item {op}")  # pragma: no cover

    def seq(self, sub: Iterable[tuple[Any, Any]], flags: int, rewrite: bool) -> str:
        return "".join(self.node(op, av, flags, rewrite) for op, av in sub)

    @staticmethod
    def quantifier(op: Any, lo: int, hi: int) -> str:
        q = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi == _MAXREPEAT else hi}}}"
        return q + ("?" if op is sre.MIN_REPEAT else "+" if op is sre.POSSESSIVE_REPEAT else "")

    def node(self, op: Any, av: Any, flags: int, rewrite: bool) -> str:
        sig, vac = self.sig, self.vac
        if op in _ATOMS:
            atom = self.atom(op, av)
            return f"(?:{atom}|{sig}|{vac})" if rewrite else atom
        if op is sre.BRANCH:
            return "(?:" + "|".join(self.seq(alt, flags, rewrite) for alt in av[1]) + ")"
        if op is sre.SUBPATTERN:
            group, add, delete, sub = av
            inner = self.seq(sub, (flags | add) & ~delete, rewrite)
            if group is not None:
                inner = f"(?P<{self.name(group)}>{inner})"
            letters = _flag_letters(add)
            off = _flag_letters(delete)
            if letters or off:
                return f"(?{letters}{'-' + off if off else ''}:{inner})"
            return f"(?:{inner})"
        if op in _REPEATS:
            lo, hi, item = av
            return f"(?:{self.seq(item, flags, rewrite)})" + self.quantifier(op, lo, hi)
        if op is sre.ATOMIC_GROUP:
            return f"(?>{self.seq(av, flags, rewrite)})"
        if op is sre.GROUPREF:
            ref = f"(?P={self.name(av)})"
            if not rewrite:
                return ref
            # it may need what comes next only if the text ends within the group's width
            width = self.groupwidths[av][1] if av < len(self.groupwidths) else _MAXREPEAT
            near = f"(?={_ANYCHAR}{{0,{width - 1}}}{sig})" if 0 < width < _MAXREPEAT else ""
            return f"(?:{ref}|{near}{_ANYCHAR}*|{vac})"
        if op is sre.GROUPREF_EXISTS:
            group, yes, no = av
            yes_src = self.seq(yes, flags, rewrite)
            no_src = self.seq(no, flags, rewrite) if no is not None else ""
            return f"(?({self.name(group)}){yes_src}|{no_src})"
        if op is sre.AT:
            return self.at(av, flags) if rewrite else _AT_SOURCE[av]
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            direction, sub = av
            if direction == -1:
                if _contains(sub, _is_lookahead):
                    raise _Unsupported("a lookahead inside a lookbehind")
                kind = "<=" if op is sre.ASSERT else "<!"
                look = f"(?{kind}{self.seq(sub, flags, False)})"
                if not rewrite:
                    return look
                if _contains(sub, _is_forward_at):  # decided only with what comes next
                    return f"(?:(?=(?s:.)?{sig}){_ANYCHAR}*|{look}|{vac})"
                return f"(?:{look}|{vac})"
            if not rewrite:
                kind = "=" if op is sre.ASSERT else "!"
                return f"(?{kind}{self.seq(sub, flags, False)})"
            marker = self._name("m")
            probe = f"(?={self.seq(sub, flags, True)}(?:{vac}(?P<{marker}>)|))"
            if op is sre.ASSERT:
                return f"{probe}(?({marker}){_ANYCHAR}*|)"
            saved = dict(self.names)
            for o, a in _walk(sub):  # the groups of the second copy get fresh names
                if o is sre.SUBPATTERN and a[0] is not None:
                    self.names[a[0]] = self._name(f"g{a[0]}_")
            again = self.seq(sub, flags, True)
            self.names = saved
            return f"(?:{probe}(?({marker}){_ANYCHAR}*|(?!))|(?!{again}))"
        raise _Unsupported(f"regex construct {op}")  # pragma: no cover

    def at(self, code: Any, flags: int) -> str:
        sig, vac = self.sig, self.vac
        if code is sre.AT_END:
            if flags & re.MULTILINE:
                return f"(?:(?=\\n)|{sig}|{vac})"
            return f"(?:\\n?{sig}|{vac})"
        if code is sre.AT_END_STRING:
            return f"(?:{sig}|{vac})"
        if code in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            return f"(?:{_AT_SOURCE[code]}(?!{sig})|{sig}|{vac})"
        return f"(?:{_AT_SOURCE[code]}|{vac})"

    def with_sigma(self, op: Any, av: Any, flags: int) -> str:
        """A repeat of one character test, with the sentinel added to the tested set."""
        lo, hi, item = av
        (atom_op, atom_av) = item[0]
        atom = self.atom(atom_op, atom_av)
        if not re.fullmatch(atom, chr(int(self.sig[2:], 16)), flags & ~re.VERBOSE):
            if atom_op is sre.IN and atom_av[:1] != [(sre.NEGATE, None)]:
                atom = atom[:-1] + self.sig + "]"
            elif atom_op is sre.LITERAL:
                atom = f"[{atom}{self.sig}]"
            else:
                atom = f"(?:{atom}|{self.sig})"
        return f"(?:{atom})" + self.quantifier(op, lo, hi)


class _Variant:
    """The patterns of one spec for one sentinel."""

    __slots__ = ("full", "main", "sigma")

    def __init__(self, spec: _Spec, sigma: str) -> None:
        parsed, flags = spec.parsed, spec.flags
        prefix = f"(?{_flag_letters(flags)})" if _flag_letters(flags) else ""
        em = _Emitter(sigma, parsed.state.groupwidths)
        self.full = re.compile(prefix + em.seq(parsed, flags, True))
        em = _Emitter(sigma, parsed.state.groupwidths)
        nodes = list(parsed)
        head = em.seq(nodes[: spec.split], flags, False)
        rest = nodes[spec.split :]
        if rest and spec.sigma_class:
            head += em.with_sigma(*rest[0], flags)
            rest = rest[1:]
        self.main = re.compile(prefix + head + em.seq(rest, flags, True))
        self.sigma = sigma


class _Spec:
    """One pattern, compiled for streaming."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.re = re.compile(pattern)
        self.parsed = sre_parse.parse(pattern, 0)
        self.flags = self.parsed.state.flags & ~re.VERBOSE
        nodes = list(self.parsed)
        # the unchanged prefix of the main pattern and how far it may read
        split, reach = 0, 0.0
        for op, av in nodes:
            r = _reach([(op, av)], self.flags)
            if reach + r > _TAIL_REACH:
                break
            split += 1
            reach += r
        # The next node keeps its form too if it repeats one character test: the sentinel is
        # added to that test. This is exact where at least ``lo - 1`` characters follow the
        # repeat's start (Σ can then be the lo-th repetition); nearer to the end, the fully
        # rewritten pattern decides, so that window grows by ``lo``.
        self.sigma_class = (
            split < len(nodes)
            and nodes[split][0] in _REPEATS
            and len(nodes[split][1][2]) == 1
            and nodes[split][1][2][0][0] in _ATOMS
            and reach + nodes[split][1][0] <= _TAIL_REACH
        )
        if self.sigma_class:
            reach += nodes[split][1][0]
        self.split, self.reach = split, int(reach)
        # where the head (the unchanged leading nodes) may match: Hyperscan, in ASCII text
        head = nodes[:split]
        min_width = sre_parse.SubPattern(self.parsed.state, head).getwidth()[0] if head else 0
        self.prefilter: Prefilter | None = build_prefilter(
            head, self.flags, min_width, _Emitter(_SIGMAS[0], ()).atom
        )
        # characters of consumed text a search must still see (lookbehinds, ^, \b)
        self.context = 1 + sum(
            av[1].getwidth()[1] for op, av in _walk(self.parsed) if op in _LOOKS and av[0] == -1
        )
        # a plain ASCII string (no flag changes what it matches): redacted on the bytes
        self.literal: str | None = None
        if (
            nodes
            and all(op is sre.LITERAL and av < 128 for op, av in nodes)
            and not self.flags & (re.IGNORECASE | re.LOCALE)
        ):
            self.literal = "".join(chr(av) for _op, av in nodes)
        # a cheap test that no match can start in a text (most small pieces of a token stream)
        self.lead = _lead(self.parsed, self.flags, _Emitter(_SIGMAS[0], ()).atom)
        # bulk replacement (re.subn) of decided text: a pattern that cannot match empty and
        # reads at most _BULK_REACH characters from where its match starts
        whole = _reach(nodes, self.flags)
        self.bulk = self.parsed.getwidth()[0] >= 1 and whole <= _BULK_REACH
        self.bulk_reach = int(whole) if self.bulk else 0
        # re.subn searches a literal prefix at about 1 GB/s, other patterns at 30-60 MB/s (log
        # text): only the former beat the prefilter's candidates when those are dense
        self.literal_prefix = (
            self.bulk
            and bool(nodes)
            and nodes[0][0] is sre.LITERAL
            and not self.flags & re.IGNORECASE
        )
        self.ascii_re = _ascii_form(pattern, self.parsed, self.flags) if self.bulk else None
        self.ascii_bytes: re.Pattern[bytes] | None = None  # the same, on the ASCII bytes
        if self.ascii_re is not None:
            with contextlib.suppress(re.error, ValueError):  # \u0041 is no bytes escape
                self.ascii_bytes = re.compile(pattern.encode("ascii"))
        # what a match's first character may be: a text with none of them starts no match
        self.first = _first_chars(nodes, self.flags)
        self._variants: dict[str, _Variant] = {}
        self.variant(_SIGMAS[0])  # compile errors show at load

    def variant(self, sigma: str) -> _Variant:
        v = self._variants.get(sigma)
        if v is None:
            try:
                v = self._variants[sigma] = _Variant(self, sigma)
            except (re.error, OverflowError, RecursionError) as exc:
                raise _Unsupported(f"cannot compile the streaming form: {exc}") from None
        return v


_LOOKS = (sre.ASSERT, sre.ASSERT_NOT)


_LEAD_ATOMS = 8  # how many leading character tests the lead check reads at most


def _disjoint(a: str, b: str, prefix: str) -> bool:
    """Whether no character at all is matched by both one-character patterns ``a`` and ``b``."""
    every = "".join(map(chr, range(0x110000)))
    return re.compile(f"{prefix}(?={a}){b}").search(every) is None


def _lead(parsed: Any, flags: int, atom: Callable[[Any, Any], str]) -> re.Pattern[str] | None:
    """Where a match, whole or cut by the end of the text, may start (see ``_Stage.feed``).

    The pattern's leading character tests, each but the first optional at the end of the text,
    the last in group 1: ``a(?:b(?:(c)|\\Z)|\\Z)`` for ``abc...``. A repeat adds the test of one
    repetition and ends it; a pattern that begins with a repeat of one test ``R`` followed by a
    test ``T`` that no character passes together with ``R`` (``[\\w.]+@``) leads with
    ``R+(?:(T)|\\Z)``: a match can then start only where a run of ``R`` is followed by ``T``,
    or runs to the end. Zero-width tests in front are dropped (a superset). None when the
    pattern does not begin with a character test or such a repeat: it may start anywhere.
    Group 1 left out of a match that reaches the end marks it as cut: nothing can start before
    it, and nothing whole after it.
    """
    letters = _flag_letters(flags)
    prefix = f"(?{letters})" if letters else ""
    nodes = list(parsed)
    while nodes and nodes[0][0] in (sre.AT, *_LOOKS):
        nodes.pop(0)

    def one(node: tuple[Any, Any]) -> str | None:
        op, av = node
        if op in _ATOMS:
            return atom(op, av)
        if op in _REPEATS and av[0] >= 1 and len(av[2]) and av[2][0][0] in _ATOMS:
            return atom(*av[2][0])
        return None

    if nodes and nodes[0][0] in _REPEATS and len(nodes[0][1][2]) == 1 and len(nodes) > 1:
        run, follow = one(nodes[0]), one(nodes[1])  # a repeat of one test, then a test
        if run is not None and follow is not None and _disjoint(run, follow, prefix):
            return re.compile(f"{prefix}{run}+(?:({follow})|\\Z)")
    atoms: list[str] = []
    for op, av in nodes[:_LEAD_ATOMS]:
        test = one((op, av))
        if test is None:
            break
        atoms.append(test)
        if op not in _ATOMS:
            break
    if not atoms:
        return None
    source = f"({atoms[-1]})"
    for a in reversed(atoms[:-1]):
        source = f"{a}(?:{source}|\\Z)"
    return re.compile(prefix + source)


def _first_chars(sub: list[tuple[Any, Any]], flags: int) -> re.Pattern[str] | None:
    """One character test that the first character of every match passes (a superset: the
    first atoms the pattern may consume, under their flags); None when a match may be empty
    or the first character cannot be told (backreferences, conditionals)."""
    em = _Emitter(_SIGMAS[0], ())
    atoms: list[str] = []

    def nullable(seq: Iterable[tuple[Any, Any]], flags: int) -> bool:
        """Adds the first atoms of ``seq``; True when it may consume nothing."""
        for op, av in seq:
            if op in _ATOMS:
                letters = _flag_letters(flags & (re.IGNORECASE | re.DOTALL | re.ASCII))
                atom = em.atom(op, av)
                atoms.append(f"(?{letters}:{atom})" if letters else atom)
                return False
            if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
                continue
            if op is sre.BRANCH:
                if not any([nullable(alt, flags) for alt in av[1]]):  # every alternative
                    return False
            elif op is sre.SUBPATTERN:
                if not nullable(av[3], (flags | av[1]) & ~av[2]):
                    return False
            elif op in _REPEATS:
                if not nullable(av[2], flags) and av[0] >= 1:
                    return False
            elif op is sre.ATOMIC_GROUP:
                if not nullable(av, flags):
                    return False
            else:
                raise _Unsupported(f"first character of {op}")
        return True

    try:
        if nullable(sub, flags):
            return None
        return re.compile("|".join(atoms))
    except (_Unsupported, re.error, RecursionError):
        return None


def _ascii_form(pattern: str, parsed: Any, flags: int) -> re.Pattern[str] | None:
    """The pattern compiled with ``re.ASCII``, when that finds the same matches in ASCII text
    (about twice as fast for ``\\b``, ``\\d``, ``\\w``: no Unicode tables): every character
    of the pattern is ASCII and it has no ``\\s``/``\\S`` (Unicode counts ``\\x1c``-``\\x1f`` as
    space). None where it does not."""
    if flags & re.LOCALE:
        return None
    for op, av in _walk(parsed):
        if op in (sre.LITERAL, sre.NOT_LITERAL) and av >= 128:
            return None
        if op is sre.IN:
            for item, value in av:
                if item is sre.LITERAL and value >= 128:
                    return None
                if item is sre.RANGE and value[1] >= 128:
                    return None
                if item is sre.CATEGORY and value in (
                    sre.CATEGORY_SPACE,
                    sre.CATEGORY_NOT_SPACE,
                ):
                    return None
    try:
        return re.compile(pattern, re.ASCII)
    except (re.error, ValueError):  # (?u) in the pattern
        return None


def _walk(sub: Iterable[tuple[Any, Any]]) -> Iterable[tuple[Any, Any]]:
    for op, av in sub:
        yield op, av
        for child in _children(op, av):
            yield from _walk(child)


@functools.lru_cache(maxsize=1024)
def _compile_spec(pattern: str) -> _Spec:
    try:
        return _Spec(pattern)
    except RecursionError:
        raise _Unsupported("too deeply nested") from None


def _literal_replacement(compiled: re.Pattern[str], replacement: str) -> str:
    """The replacement with every group reference expanded as empty (for fail-closed)."""
    if "\\" not in replacement:
        return replacement
    names = {index: name for name, index in compiled.groupindex.items()}
    fake = "".join(
        f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, compiled.groups + 1)
    )
    match = re.compile(fake).match("")
    assert match is not None
    return match.expand(replacement)


# --------------------------------------------------------------------------------------------
# streaming


@functools.lru_cache(maxsize=256)
def _expander(replacement: str) -> Callable[[re.Match[str]], str]:
    """What a match is replaced by; one function per template, shared by every stream."""
    if "\\" in replacement:
        return lambda m: m.expand(replacement)
    return lambda m: replacement


class _Stage:
    """One pattern applied to a stream of text."""

    __slots__ = (
        "_buf",
        "_cur",
        "_dense",
        "_expand",
        "_keep",
        "_literal",
        "_max",
        "_must_advance",
        "_overflow",
        "_spec",
        "_template",
        "_template_bytes",
        "mismatches",
        "redactions",
    )

    def __init__(self, spec: _Spec, replacement: str, max_match: int) -> None:
        self._spec = spec
        self._max = max_match
        self._keep = max(max_match, spec.context)
        self._literal = _literal_replacement(spec.re, replacement)
        self._expand = _expander(replacement)
        self._template = replacement
        self._template_bytes = replacement.encode() if replacement.isascii() else None
        self._dense = False  # the last bulk replacement found dense matches: bulk again
        self._buf = ""  # consumed context + held text
        self._cur = 0  # where the held text starts in _buf
        self._must_advance = False  # the last commit was an empty match ending at _cur
        self._overflow: tuple[str, int, str] | None = None  # (head, anchor, tail)
        self.redactions = 0
        self.mismatches = 0  # re and the rewritten pattern disagreed (never seen; held if so)

    @property
    def held(self) -> int:
        """Characters held back (neither emitted nor swallowed yet)."""
        return len(self._buf) - self._cur

    def feed(self, text: str) -> str:
        lead = self._spec.lead
        if lead is not None and self._overflow is None:
            # The cheap way first: where the lead finds nothing in the held text and the new,
            # or only a start cut by the end, everything before that start is decided.
            buf, cur = self._buf, self._cur
            s = f"{buf[cur:]}{text}" if cur < len(buf) else text
            m = lead.search(s)
            if m is None:
                keep = len(s)
            elif m.end(1) < 0 and m.end() == len(s):  # a start cut by the end: held
                keep = m.start()
            else:
                keep = -1  # a start that may be a match: the patterns decide
            if keep >= 0 and len(s) - keep <= self._max:
                cur += keep
                start = max(0, cur - self._spec.context)
                self._buf, self._cur = f"{buf}{text}"[start:], cur - start
                if keep:
                    self._must_advance = False
                return s[:keep]
        out: list[str] = []
        if self._overflow is not None:
            text = self._overflow_step(text, final=False)
            if not text and self._overflow is not None:
                return ""
        first = self._spec.first
        if first is not None and self._cur == len(self._buf) and first.search(text) is None:
            # nothing held and no match can start in the new text (a few characters of an LLM
            # token, say): all of it goes out, its end kept as context
            context = self._spec.context
            buf = text[-context:] if len(text) >= context else (self._buf + text)[-context:]
            self._buf, self._cur = buf, len(buf)
            return text
        buf = self._buf
        sigma = _pick_sigma(buf, text)
        padded = f"{buf}{text}{sigma}"
        n = len(padded) - 1
        cur = self._scan(out, padded, n, self._cur, self._spec.variant(sigma))
        if n - cur > self._max:
            self._buf, self._cur = padded[:n], cur
            self._fail_closed(out)
        else:
            start = max(0, cur - self._spec.context)
            self._buf, self._cur = padded[start:n], cur - start
        return "".join(out)

    def flush(self, text: str = "") -> str:
        """The end of the text: everything held is decided now."""
        out: list[str] = []
        if self._overflow is not None:
            text = self._overflow_step(text, final=True)
        buf = self._buf + text
        self._commit(out, buf, len(buf), self._cur, len(buf) + 1)
        self._buf, self._cur, self._must_advance = "", 0, False
        return "".join(out)

    # ---- deciding

    def _scan(self, out: list[str], padded: str, n: int, cur: int, v: _Variant) -> int:
        """Emit what is decided in ``padded[:n]`` (``padded[n]`` is the sentinel)."""
        spec = self._spec
        tail = max(cur, n - spec.reach)
        if cur < tail:
            prefilter = spec.prefilter
            starts = None
            if prefilter is not None and not (self._dense and spec.bulk):
                starts = prefilter.starts(padded, cur, n)
                if (
                    starts is not None
                    and spec.literal_prefix
                    and len(starts) * SPARSE_CHARS > n - cur
                ):
                    starts = None  # dense: a Python step per candidate costs more than re.subn
            if starts is None and spec.bulk:
                cur = self._bulk(out, padded, n, cur)
            if cur < tail:
                if starts is None:
                    cur, done = self._phase(out, v.main, padded, n, cur, tail)
                else:
                    cur, done = self._phase_at(out, v.main, padded, n, cur, tail, starts)
                if done:
                    return cur
        cur, _ = self._phase(out, v.full, padded, n, cur, n + 1)
        return cur

    def _bulk(self, out: list[str], padded: str, n: int, cur: int) -> int:
        """Replace the matches of a decided stretch ``[cur, c)`` with one ``re.subn`` (no
        Python per match); the new position.

        ``c`` is chosen so that ``re.sub`` on the stretch alone decides every start in it as
        the whole stream does: a match attempt at ``q`` reads at most ``bulk_reach``
        characters, so starts before ``c - bulk_reach`` see the same text; no match may start
        in the last ``bulk_reach`` characters, neither as if the text ended at ``c`` nor with
        what follows (else ``c`` steps back to it); and the first ``context`` starts, which
        may look behind ``cur``, must match alike with and without what precedes.
        """
        spec = self._spec
        rx, r = spec.re, spec.bulk_reach
        c = n - r - 1  # attempts before it never reach the sentinel; c + r <= n
        if c - cur < _BULK_MIN:
            return cur
        for _ in range(_CUT_TRIES):
            m = rx.search(padded, c - r, c)  # as the stretch alone would have it
            s = c if m is None else m.start()
            m = rx.search(padded, c - r, c + r)  # as the whole text has it
            if m is not None and m.start() < s:
                s = m.start()
            if s >= c:
                break
            c = s
        else:
            return cur
        if c - cur < _BULK_MIN:
            return cur
        piece = padded[cur:c]
        for q in range(cur, cur + spec.context):
            alone, whole = rx.match(piece, q - cur), rx.match(padded, q)
            if (alone is None) != (whole is None) or (
                alone is not None
                and whole is not None
                and (alone.start() + cur, alone.end() + cur) != whole.span()
            ):
                return cur  # what precedes the stretch changes a match at its start
        if spec.ascii_re is not None and piece.isascii():
            if spec.ascii_bytes is not None and self._template_bytes is not None:
                data, count = spec.ascii_bytes.subn(self._template_bytes, piece.encode("ascii"))
                text = data.decode("utf-8")  # the replacement may be UTF-8
            else:
                text, count = spec.ascii_re.subn(self._template, piece)
        else:
            text, count = rx.subn(self._template, piece)
        out.append(text)
        self.redactions += count
        self._dense = count * SPARSE_CHARS >= c - cur
        self._must_advance = False
        return c

    def _phase(
        self, out: list[str], pat: re.Pattern[str], padded: str, n: int, cur: int, limit: int
    ) -> tuple[int, bool]:
        """Decide the starts in [cur, limit) with ``pat``; True when the frontier was found."""
        m = pat.search(padded, cur)
        if m is None or m.start() >= limit:
            return self._emit(out, padded, cur, min(limit, n)), False
        if m.end() > n:  # the first thing there needs more text: the frontier
            return self._emit(out, padded, cur, m.start()), True
        # matches up to the frontier: final. Nothing starts in [cur, m.start()), so go on from
        # there; each match object comes from re itself (anchored: no second scan).
        begin = m.start()
        first = True
        for m in pat.finditer(padded, begin):
            start, end = m.span()
            if first:
                first = False
                if self._must_advance and start == end == cur:
                    continue  # the empty match committed last time; finditer goes on as re.sub
            if start >= limit:
                break
            if end > n:
                return self._emit(out, padded, cur, start), True
            real = self._spec.re.match(padded, start, n)
            if real is None or real.end() != end:  # after an empty match at cur: re.sub's order
                real = self._match_in_order(padded, cur, n, start, end)
                if real is None:  # pragma: no cover - safety net, never seen
                    self.mismatches += 1
                    return self._emit(out, padded, cur, start), True
            cur = self._replace(out, padded, cur, start, end, real)
        return max(cur, self._emit(out, padded, cur, min(limit, n))), False

    def _phase_at(
        self,
        out: list[str],
        pat: re.Pattern[str],
        padded: str,
        n: int,
        cur: int,
        limit: int,
        starts: list[int],
    ) -> tuple[int, bool]:
        """:meth:`_phase` trying only ``starts`` (the prefilter's; the pattern cannot match
        empty, so re.sub's empty-match rules do not arise)."""
        for q in starts:
            if q >= limit:
                break
            if q < cur:
                continue
            m = pat.match(padded, q)
            if m is None:
                continue
            end = m.end()
            if end > n:  # the frontier
                return self._emit(out, padded, cur, q), True
            real = self._spec.re.match(padded, q, n)
            if real is None or real.end() != end:  # pragma: no cover - safety net, never seen
                self.mismatches += 1
                return self._emit(out, padded, cur, q), True
            cur = self._replace(out, padded, cur, q, end, real)
        return max(cur, self._emit(out, padded, cur, min(limit, n))), False

    def _match_in_order(
        self, padded: str, cur: int, n: int, start: int, end: int
    ) -> re.Match[str] | None:
        """re's match at ``start`` as ``re.sub`` finds it going on from ``cur``."""
        first = True
        for real in self._spec.re.finditer(padded, cur, n):
            if first:
                first = False
                if self._must_advance and real.start() == real.end() == cur:
                    continue
            if real.start() >= start:
                return real if real.span() == (start, end) else None
        return None

    def _replace(
        self, out: list[str], text: str, cur: int, start: int, end: int, match: re.Match[str]
    ) -> int:
        """Emit the text before a committed match and its replacement; the new position."""
        if start > cur:
            out.append(text[cur:start])
        out.append(self._expand(match))
        self.redactions += 1
        self._must_advance = start == end
        return end

    def _emit(self, out: list[str], text: str, cur: int, to: int) -> int:
        if to > cur:
            out.append(text[cur:to])
            self._must_advance = False
            return to
        return cur

    def _commit(self, out: list[str], buf: str, n: int, cur: int, frontier: int) -> int:
        """Emit the matches of ``buf[:n]`` starting before ``frontier``, and the text."""
        first = True
        for m in self._spec.re.finditer(buf, cur, n):
            start, end = m.span()
            if first:
                first = False
                if self._must_advance and start == end == cur:
                    continue  # committed already; finditer now goes on as re.sub would
            if start >= frontier:
                break
            cur = self._replace(out, buf, cur, start, end, m)
        return self._emit(out, buf, cur, min(frontier, n))

    # ---- fail closed

    def _fail_closed(self, out: list[str]) -> None:
        """The held text outgrew max_match: redact it and swallow the rest of the runaway."""
        out.append(self._literal)
        self.redactions += 1
        buf, cur = self._buf, self._cur
        start = max(0, cur - self._spec.context)
        head = buf[start : cur + self._max]
        tail = buf[cur + self._max :][-self._keep :]
        self._overflow = (head, cur - start, tail)
        self._buf, self._cur, self._must_advance = "", 0, False

    def _overflow_step(self, text: str, final: bool) -> str:
        """Swallow text while the runaway match may go on.

        Returns the text that follows it (then ``_buf``/``_cur`` hold the context before it),
        or ``""`` with the overflow still on.
        """
        assert self._overflow is not None
        head, anchor, tail = self._overflow
        window = head + tail + text
        boundary = len(head) + len(tail)  # where the new text starts in the window
        if not final:
            sigma = _pick_sigma(window, "")
            m = self._spec.variant(sigma).full.match(window + sigma, anchor)
            if m is not None and m.end() > len(window):  # it may still be going on
                tail += text
                if len(tail) > 2 * self._keep:
                    tail = tail[-self._keep :]
                self._overflow = (head, anchor, tail)
                return ""
        m = self._spec.re.match(window, anchor)
        resume = max(boundary, m.end()) if m is not None else boundary
        start = max(0, resume - self._spec.context)
        self._overflow = None
        self._buf, self._cur, self._must_advance = window[start:resume], resume - start, False
        return window[resume:]


def _pick_sigma(a: str, b: str) -> str:
    for sigma in _SIGMAS:
        if sigma not in a and sigma not in b:
            return sigma
    raise ValueError("the text contains every sentinel character")  # pragma: no cover


def _literal_stages(
    specs: Sequence[_Spec], options: Options, codec: str
) -> list[LiteralStage] | None:
    """Byte-level stages when every pattern is an ASCII literal and the charset allows it
    (:mod:`plugins.redact_literal`); None otherwise."""
    if not ascii_transparent(codec):
        return None
    stages = []
    for spec in specs:
        literal = spec.literal
        if literal is None or len(literal) > options.max_match:
            return None
        match = spec.re.match(literal)
        assert match is not None
        try:
            replacement = match.expand(options.replacement).encode(codec, "surrogateescape")
        except UnicodeEncodeError:
            return None  # the text path fails on it the same way the reference does
        stages.append(LiteralStage(literal.encode("ascii"), replacement))
    return stages


class RedactStream:
    """One body: bytes in, bytes out (decoding, the chain of stages, encoding, counting)."""

    __slots__ = ("_codec", "_ctx", "_decoder", "_encoder", "_on_bytes", "redactions", "stages")

    def __init__(self, specs: Sequence[_Spec], options: Options, ctx: Any = None) -> None:
        codec = codec_for(getattr(ctx, "charset", None))
        self._ctx = ctx
        self._codec = codec
        # UTF-8 needs no codec objects while each piece is whole characters (they are made
        # at the first one that is not); other charsets may keep a state between pieces
        self._decoder: codecs.IncrementalDecoder | None = None
        self._encoder: codecs.IncrementalEncoder | None = None
        if codec != "utf-8":
            self._decoder = codecs.getincrementaldecoder(codec)(errors="surrogateescape")
            self._encoder = codecs.getincrementalencoder(codec)(errors="surrogateescape")
        self.stages: list[_Stage] | list[LiteralStage]
        literal = _literal_stages(specs, options, codec)
        self._on_bytes = literal is not None
        if literal is not None:
            self.stages = literal
        else:
            self.stages = [_Stage(s, options.replacement, options.max_match) for s in specs]
        self.redactions = 0

    @property
    def held(self) -> list[int]:
        """Characters held back by each stage."""
        return [stage.held for stage in self.stages]

    def feed(self, data: bytes) -> bytes:
        if self._on_bytes:
            for literal in self.stages:
                data = literal.feed(data)
            self._count()
            return data
        text = self._decode(data)
        for stage in self.stages:
            if not text:
                break
            text = stage.feed(text)
        self._count()
        if not text:
            return b""
        encoder = self._encoder
        return text.encode("utf-8", "surrogateescape") if encoder is None else encoder.encode(text)

    def _decode(self, data: bytes, final: bool = False) -> str:
        decoder = self._decoder
        if decoder is None:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:  # a character cut, or bytes that are not UTF-8
                decoder = self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        return decoder.decode(data, final)

    def close(self) -> bytes:
        if self._on_bytes:
            data = b""
            for literal in self.stages:
                data = literal.flush(data)
            self._count()
            return data
        text = self._decode(b"", final=True)
        for stage in self.stages:
            text = stage.flush(text)
        self._count()
        encoder = self._encoder
        if encoder is None:
            return text.encode("utf-8", "surrogateescape")
        return encoder.encode(text, final=True)

    def _count(self) -> None:
        n = 0
        for stage in self.stages:
            n += stage.redactions
        if n > self.redactions:
            if self._ctx is not None:
                self._ctx.count("redactions", n - self.redactions)
            self.redactions = n


class Redact:
    """Factory of the ``redact`` transform."""

    Options = Options

    def __init__(self, **options: Any) -> None:
        self.options = Options(**options)  # a pydantic ValidationError is a ValueError
        self._specs = [_compile_spec(p) for p in self.options.patterns]

    def open(self, ctx: Any = None) -> RedactStream:
        """A stream for one body (``ctx`` gives the charset and receives the counters)."""
        return RedactStream(self._specs, self.options, ctx)

    def __call__(self, chunks: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        return drive(self.open(ctx), chunks)
