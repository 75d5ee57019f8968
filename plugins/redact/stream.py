"""One body through the stages: each pattern over the text (held back only as long as a match
may still be going on), or literal stages on the bytes."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Any

from plugins.redact.literal import LiteralStage, ascii_transparent
from plugins.redact.options import Options
from plugins.redact.rewrite import (
    _SIGMAS,
    _expander,
    _literal_replacement,
    _Spec,
    _Variant,
)
from proxy.transform_api import codec_for

_BULK_MIN = 1024  # bulk replacement (re.subn) on at least this many characters of decided text
_CUT_TRIES = 8  # steps back from the end looking for a place to end the bulk replacement
SPARSE_CHARS = 3072  # fewer matches than one in this many characters: match by match
# Pieces longer than this skip the lead check: an ``re`` search of a lead like
# ``(?i)a(?:u(?:...|\Z)|\Z)`` tries every position (~40 MB/s), the prefilter reads GB/s
LEAD_CHARS = 256


class _Stage:
    """One pattern applied to a stream of text."""

    __slots__ = (
        "_buf",
        "_bytes",
        "_cur",
        "_dense",
        "_expand",
        "_keep",
        "_lead",
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
        self._lead = spec.lead  # read at every piece: kept here, not looked up through spec
        self._max = max_match
        self._keep = max(max_match, spec.context)
        self._literal = _literal_replacement(spec.re, replacement)
        self._expand = _expander(replacement)
        self._template = replacement
        self._template_bytes = replacement.encode() if replacement.isascii() else None
        self._dense = False  # the last bulk replacement found dense matches: bulk again
        # an ASCII literal on the bytes of a long piece (made at the first one)
        self._bytes: LiteralStage | bool | None = spec.literal is not None and (
            len(spec.literal) <= max_match
        )
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
        lead = self._lead
        if lead is not None and self._overflow is None:
            # The cheap way first: where the lead finds nothing in the held text and the new,
            # or only a start cut by the end, everything before that start is decided.
            buf, cur = self._buf, self._cur
            s = buf[cur:] + text if cur < len(buf) else text
            m = lead.search(s)
            if m is None:
                keep = len(s)
                context = self._spec.context
                if keep >= context:  # the usual piece: nothing in it may start a match
                    self._buf, self._cur, self._must_advance = s[keep - context :], context, False
                    return s
            elif m.end(1) < 0 and m.end() == len(s):  # a start cut by the end: held
                keep = m.start()
            else:
                keep = -1  # a start that may be a match: the patterns decide
            if keep >= 0 and len(s) - keep <= self._max:
                context = self._spec.context
                if keep >= context:  # the context kept lies in s: buf + text is not made
                    self._buf, self._cur = s[keep - context :], context
                else:
                    cur += keep
                    start = max(0, cur - context)
                    self._buf, self._cur = f"{buf}{text}"[start:], cur - start
                if keep:
                    self._must_advance = False
                return s[:keep]
        return self.feed_long(text)

    def feed_long(self, text: str, data: bytes | None = None) -> str:
        """:meth:`feed` without the lead check (a long piece: the prefilter is faster).

        ``data``, when given, is the held text and ``text`` encoded as UTF-8, for the
        prefilter."""
        out: list[str] = []
        if self._overflow is not None:
            text = self._overflow_step(text, final=False)
            if not text and self._overflow is not None:
                return ""
            data = None
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
        cur = self._scan(out, padded, n, self._cur, self._spec.variant(sigma), data)
        if n - cur > self._max:
            self._buf, self._cur = padded[:n], cur
            self._fail_closed(out)
        else:
            start = max(0, cur - self._spec.context)
            self._buf, self._cur = padded[start:n], cur - start
        return "".join(out)

    def feed_utf8(self, data: bytes | None, text: str | None) -> tuple[bytes | None, str | None]:
        """:meth:`feed_long` of a long piece of a text with no lone surrogates, given as its
        UTF-8 ``data`` or as ``text`` or both (None: not made); the output likewise.

        Where the prefilter finds no start in the held text and the new, everything but
        the last ``reach`` characters is decided without making the text: the bytes pass
        on as they are, and only the characters near the end go through the patterns.
        """
        buf, cur = self._buf, self._cur
        held = buf[cur:] if cur < len(buf) else ""
        if self._bytes and self._overflow is None:
            literal = self._literal_stage()
            if literal is not None:
                return self._literal_utf8(literal, data if data is not None else text.encode())
        prefilter = self._spec.prefilter
        if data is None and prefilter is not None and text is not None:
            data = text.encode()
        seg = held.encode() + data if held and data is not None else data
        if (
            seg is not None
            and prefilter is not None
            and self._overflow is None
            and not self._dense
            and not prefilter.finds(seg)
        ):
            context = self._spec.context
            keep = self._spec.reach + context  # characters of the end read again
            kept = _last_chars(seg, len(seg), keep + 1)
            if len(kept) > keep:  # and some before them: decided
                kept = kept[1:]
                self._buf, self._cur, self._must_advance = kept, context, False
                end = kept[context:]
                last = self.feed_long("")
                if last == end:  # the end is decided too, and unchanged: the bytes as they are
                    return seg, None
                return seg[: len(seg) - len(end.encode())] + last.encode(), None
        if text is None:
            text = data.decode() if data is not None else ""
        before = self.redactions
        overflow = self._overflow is not None
        out = self.feed_long(text, seg)
        if seg is not None and self.redactions == before and not overflow:
            # no replacement: the output is the start of the held text and the new
            left = self._buf[self._cur :]
            return (seg[: len(seg) - len(left.encode())] if left else seg), out
        return None, out

    def _literal_stage(self) -> LiteralStage | None:
        """The byte-level stage of an ASCII literal, made at the first long piece; None where
        the replacement is not valid UTF-8."""
        if isinstance(self._bytes, LiteralStage):
            return self._bytes
        match = self._spec.re.match(self._spec.literal or "")
        assert match is not None
        replacement = match.expand(self._template)
        self._bytes = None
        if _encodes(replacement):
            literal = self._spec.literal
            assert literal is not None
            self._bytes = LiteralStage(literal.encode("ascii"), replacement.encode())
        return self._bytes

    def _literal_utf8(self, literal: LiteralStage, data: bytes) -> tuple[bytes | None, None]:
        """A long piece through the literal on the bytes (an ASCII string is found in UTF-8
        where it is in the text; the held text is the start of it, ASCII too)."""
        buf, cur = self._buf, self._cur
        held = buf[cur:].encode("ascii")
        before = literal.redactions
        seg = held + data if held else data
        out, held = literal.feed_after(held, data)
        self.redactions += literal.redactions - before
        # the context kept: the characters before the held text, as the text path keeps them
        context = self._spec.context
        j = len(seg) - len(held)
        kept = _last_chars(seg, j, context)
        if len(kept) < context:  # the piece is shorter: the context before it too
            kept = (buf[:cur] + kept)[-context:]
        self._buf, self._cur = kept + held.decode("ascii"), len(kept)
        if j:
            self._must_advance = False
        return out, None

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

    def _scan(
        self,
        out: list[str],
        padded: str,
        n: int,
        cur: int,
        v: _Variant,
        data: bytes | None = None,
    ) -> int:
        """Emit what is decided in ``padded[:n]`` (``padded[n]`` is the sentinel; ``data``:
        ``padded[cur:n]`` encoded as UTF-8, when known)."""
        spec = self._spec
        tail = max(cur, n - spec.reach)
        if cur < tail:
            prefilter = spec.prefilter
            starts = None
            if prefilter is not None and not (self._dense and spec.bulk):
                starts = prefilter.starts(padded, cur, n, data)
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


def _cut_character(data: bytes) -> int:
    """Where a UTF-8 character cut by the end of ``data`` starts (``len(data)``: none is)."""
    n = len(data)
    if not n or data[-1] < 0x80:
        return n
    i = n - 1
    while i > n - 4 and i > 0 and data[i] & 0xC0 == 0x80:
        i -= 1
    lead = data[i]
    if lead < 0xC0 or lead >= 0xF8:
        return n  # no lead byte: not UTF-8, which decoding tells
    need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return i if n - i < need else n


def _last_chars(data: bytes, end: int, count: int) -> str:
    """The last ``count`` characters of the valid UTF-8 ``data[:end]`` (all, when fewer)."""
    if count <= 0:
        return ""
    window = data[max(0, end - 4 * count) : end]  # a character is at most 4 bytes
    skip = 0
    while skip < 3 and skip < len(window) and window[skip] & 0xC0 == 0x80:
        skip += 1  # the end of a character cut by the window
    return window[skip:].decode()[-count:]


def _encodes(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 once encoded (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pick_sigma(a: str, b: str) -> str:
    for sigma in _SIGMAS:
        if sigma not in a and sigma not in b:
            return sigma
    raise ValueError("the text contains every sentinel character")  # pragma: no cover


def _literal_stages(
    specs: Sequence[_Spec], options: Options, codec: str
) -> list[LiteralStage] | None:
    """Byte-level stages when every pattern is an ASCII literal and the charset allows it
    (:mod:`plugins.redact.literal`); None otherwise."""
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

    __slots__ = (
        "_carry",
        "_codec",
        "_ctx",
        "_decoder",
        "_encoder",
        "_on_bytes",
        "_utf8",
        "redactions",
        "stages",
        "takes_text",
    )

    def __init__(self, specs: Sequence[_Spec], options: Options, ctx: Any = None) -> None:
        codec = codec_for(getattr(ctx, "charset", None))
        self._ctx = ctx
        self._codec = codec
        # UTF-8 needs no codec objects while the body is valid UTF-8 (a character cut between
        # pieces waits in _carry; they are made at the first invalid byte); other charsets may
        # keep a state between pieces
        self._carry = b""
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
        # a UTF-8 text can be fed as it is (feed_text): the stages read text, not bytes
        self.takes_text = codec == "utf-8" and literal is None
        # long pieces of valid UTF-8 go through the stages as bytes where they can
        # (_Stage.feed_utf8): the text never holds a lone surrogate, nor may the replacement
        self._utf8 = self.takes_text and _encodes(options.replacement)

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
        if self._decoder is None:
            whole, text = self._decode_utf8(data)
            if whole is not None and self._utf8 and len(text) > LEAD_CHARS:
                return self._feed_utf8(whole, text)
        else:
            text = self._decoder.decode(data)
        text = self.feed_text(text)
        if not text:
            return b""
        encoder = self._encoder
        return text.encode("utf-8", "surrogateescape") if encoder is None else encoder.encode(text)

    def _feed_utf8(self, data: bytes, text: str) -> bytes:
        """A long piece of valid UTF-8 through the stages, as bytes where they can."""
        n = 0
        out: bytes | None = data
        out_text: str | None = text
        for stage in self.stages:
            if out or out_text:
                out, out_text = stage.feed_utf8(out, out_text)
            n += stage.redactions
        if n > self.redactions:
            self._counted(n)
        if out is None:
            return out_text.encode() if out_text else b""
        return out

    def feed_text(self, text: str) -> str:
        """:meth:`feed` for a stream that :attr:`takes_text`: text in, text out."""
        n = 0
        feed = _Stage.feed_long if len(text) > LEAD_CHARS else _Stage.feed
        for stage in self.stages:
            if text:
                text = feed(stage, text)
            n += stage.redactions
        if n > self.redactions:
            self._counted(n)
        return text

    def close_text(self, text: str = "") -> str:
        """:meth:`close` for a stream that :attr:`takes_text` (``text``: a last piece)."""
        for stage in self.stages:
            text = stage.flush(text)
        self._count()
        return text

    def _decode_utf8(self, data: bytes) -> tuple[bytes | None, str]:
        """The text of the carried bytes and ``data``, a character cut at the end carried on
        to the next piece; with its bytes, or None where they are not valid UTF-8 (from then
        on an incremental decoder reads the body)."""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        cut = _cut_character(data)
        if cut < len(data):
            data, self._carry = data[:cut], data[cut:]
        try:
            return data, data.decode("utf-8")
        except UnicodeDecodeError:
            decoder = self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
            data += self._carry
            self._carry = b""
            return None, decoder.decode(data)

    def _decode_end(self) -> str:
        """What is left to decode at the body's end (a character cut by it, say)."""
        if self._decoder is None:
            carry, self._carry = self._carry, b""
            return carry.decode("utf-8", "surrogateescape")
        return self._decoder.decode(b"", True)

    def close(self) -> bytes:
        if self._on_bytes:
            data = b""
            for literal in self.stages:
                data = literal.flush(data)
            self._count()
            return data
        text = self.close_text(self._decode_end())
        encoder = self._encoder
        if encoder is None:
            return text.encode("utf-8", "surrogateescape")
        return encoder.encode(text, final=True)

    def _count(self) -> None:
        n = 0
        for stage in self.stages:
            n += stage.redactions
        if n > self.redactions:
            self._counted(n)

    def _counted(self, n: int) -> None:
        """``n`` redactions so far (more than were counted)."""
        if self._ctx is not None:
            self._ctx.count("redactions", n - self.redactions)
        self.redactions = n
