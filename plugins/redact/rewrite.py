"""A pattern compiled for streaming: its forms rewritten for the end-of-text sentinel, its lead
and first characters (where a match may start), its prefilter and its bulk form."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from plugins.redact.prefilter import Prefilter, build_prefilter


class _Unsupported(Exception):
    """A pattern construct the streaming matcher cannot handle."""


_MAXREPEAT = sre_parse.MAXREPEAT
_INF = float("inf")
_TAIL_REACH = 64  # at most this many positions are checked with the fully rewritten pattern
_BULK_REACH = 256  # patterns reading at most this far from a match start may be replaced in bulk
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


@functools.lru_cache(maxsize=256)
def _disjoint(a: str, b: str, prefix: str) -> bool:
    """Whether no character at all is matched by both one-character patterns ``a`` and ``b``
    (every code point tried once per pair: a reload does not pay it again)."""
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
            # leftmost, a match starts where a run does: the look-behind and the possessive
            # repeat try each run once, not once per character of it
            return re.compile(f"{prefix}(?<!{run}){run}++(?:({follow})|\\Z)")
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
