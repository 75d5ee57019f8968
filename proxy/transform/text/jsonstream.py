"""Streaming JSON over UTF-8 bytes: rewrite the selected string values of one document
(:class:`JsonRewriter`), and frame the elements of one top-level array (:class:`JsonArrayFramer`).

Both are sans-IO: they are fed byte chunks as they arrive, split anywhere, and return what can go
out now. Both fail closed: input that is not what they read raises :class:`TextFormatError`, and
the bytes that failed never come out.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from json.decoder import scanstring as _scanstring  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _encode_basestring  # type: ignore[attr-defined]

from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.selectors import Path, Selector, Step, matches
from proxy.transform.text.sink import TextSink

__all__ = ["MAX_DEPTH", "JsonArrayFramer", "JsonRewriter"]

MAX_DEPTH = 512
"""The deepest nesting of arrays and objects either reader accepts."""

_WS = re.compile(r"[ \t\n\r]*")
# A run of string content: characters that need no escape, and complete escapes.
_RUN = re.compile(r'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*')
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_HIGH_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_NUMBER_CHARS = re.compile(r"[-+.0-9eE]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Fast paths for the common case, each one step of the state machine: a value with no escape
# inside an array or object and what follows it up to the next value or closing bracket; a key
# with no escape and its colon. What they do not match, the general steps read.
_FAST_VALUE = re.compile(
    r'[ \t\n\r]*(?:(")[^"\\\x00-\x1f]*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?'
    r"|true|false|null)[ \t\n\r]*(?:(,)[ \t\n\r]*|(?=[\]}]))"
)
_FAST_KEY = re.compile(r'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_FAST_AFTER = re.compile(r"[ \t\n\r]*(?:([\]}])[ \t\n\r]*)?(?:(,)[ \t\n\r]*)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}

# What the rewriter expects next.
_VALUE, _KEY, _COLON, _AFTER, _END, _STRING, _NUMBER_HELD = range(7)
# What the string being read is.
_PASS, _NAME, _TEXT = range(3)


def _escape(text: str) -> str:
    """``text`` as JSON string content: like ``json.dumps(text, ensure_ascii=False)[1:-1]``, but a
    lone surrogate (which UTF-8 cannot carry) is written as a ``\\uXXXX`` escape."""
    quoted = _encode_basestring(text)
    if _SURROGATE.search(quoted):
        quoted = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)
    return quoted[1:-1]


def _decode(raw: str) -> str:
    """The value of string content that holds only complete characters and escapes."""
    return _scanstring(raw + '"', 0)[0] if "\\" in raw else raw


def _escape_starts(raw: str, index: int) -> bool:
    """Does the backslash at ``raw[index]`` start an escape (rather than end a ``\\\\``)?"""
    j = index
    while j > 0 and raw[j - 1] == "\\":
        j -= 1
    return (index - j) % 2 == 0


def _past_comma(stack: list[bool], path: list[Step]) -> int:
    """The mode after a comma: a key in an object, the next element (its index) in an array."""
    if stack[-1]:
        return _KEY
    path[-1] += 1  # type: ignore[operator]
    return _VALUE


class JsonRewriter:
    """Streams one JSON document, rewriting the string values that the selectors pick.

    Each picked value is one text: ``open_text(path)`` at its opening quote, its decoded
    characters fed to the sink as they arrive, what the sink returns written back re-escaped, and
    ``sink.close()`` at its closing quote. Every other byte passes unchanged and at once; only an
    undecided token (a number, a partial ``tru``, a partial escape or UTF-8 character) is held.
    Keys and held tokens are bounded by ``max_token`` bytes, nesting by :data:`MAX_DEPTH`.
    """

    __slots__ = (
        "_buf",
        "_close_ok",
        "_decoder",
        "_depths",
        "_failed",
        "_fresh",
        "_key_bytes",
        "_key_parts",
        "_kind",
        "_max_token",
        "_mode",
        "_num",
        "_num_len",
        "_offset",
        "_open_text",
        "_path",
        "_selectors",
        "_sink",
        "_stack",
    )

    def __init__(
        self,
        selectors: Sequence[Selector],
        open_text: Callable[[Path], TextSink],
        max_token: int = 1 << 20,
    ) -> None:
        self._selectors = tuple(selectors)
        self._depths = frozenset(len(s) for s in self._selectors)
        self._open_text = open_text
        self._max_token = max_token
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""  # undecided text from the previous chunk (a few characters at most)
        self._offset = 0  # characters consumed before _buf, for error messages
        self._fresh = True  # nothing read yet: a BOM may come
        self._failed = False
        self._mode = _VALUE
        self._close_ok = False  # may the container just opened close at once?
        self._stack: list[bool] = []  # True for an object, False for an array
        self._path: list[Step] = []  # the key or index of the value being read, per level
        self._kind = _PASS
        self._sink: TextSink | None = None
        self._key_parts: list[str] = []
        self._key_bytes = 0
        self._num: list[str] = []
        self._num_len = 0

    async def feed(self, data: bytes) -> bytes:
        """Read the next chunk; return the output bytes that can go out now."""
        text = self._decode_bytes(data, final=False)
        if not text:
            return b""
        return (await self._guarded(text, final=False)).encode("utf-8")

    async def close(self) -> bytes:
        """End of the body: return what was still held; raise if the document is incomplete."""
        text = self._decode_bytes(b"", final=True)
        out = await self._guarded(text, final=True)
        if self._mode != _END or self._buf:
            self._failed = True
            raise TextFormatError("the JSON document is incomplete")
        return out.encode("utf-8")

    def _decode_bytes(self, data: bytes, final: bool) -> str:
        if self._failed:
            raise TextFormatError("the JSON document already failed to parse")
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            self._failed = True
            raise TextFormatError(f"the JSON document is not valid UTF-8: {exc.reason}") from None

    async def _guarded(self, text: str, final: bool) -> str:
        try:
            return await self._process(text, final)
        except BaseException:
            self._failed = True
            raise

    def _error(self, reason: str, pos: int) -> TextFormatError:
        return TextFormatError(f"invalid JSON at character {self._offset + pos}: {reason}")

    async def _process(self, text: str, final: bool) -> str:
        buf = self._buf + text if self._buf else text
        self._buf = ""
        n = len(buf)
        out: list[str] = []
        pos = emit = 0  # buf[emit:pos] is input read and checked but not yet in out
        stack, path = self._stack, self._path
        mode, close_ok = self._mode, self._close_ok
        depths, selectors, max_token = self._depths, self._selectors, self._max_token
        if self._fresh and n:
            self._fresh = False
            if buf[0] == "\ufeff":
                pos = 1
        while pos < n:
            if mode == _VALUE and stack:
                m = _FAST_VALUE.match(buf, pos)
                if (
                    m is not None
                    and m.end() - pos <= max_token  # or the general steps check its length
                ) and (
                    m.start(1) < 0
                    or len(path) not in depths
                    or not any(matches(s, tuple(path)) for s in selectors)
                ):
                    pos = m.end()
                    if m.start(2) < 0:  # a closing bracket follows
                        mode = _AFTER
                    elif stack[-1]:
                        mode = _KEY
                    else:
                        path[-1] += 1  # type: ignore[operator]
                    close_ok = False
                    continue
            elif mode == _KEY:
                m = _FAST_KEY.match(buf, pos)
                if m is not None:
                    key = m.group(1)
                    if len(key) > max_token >> 2 and len(key.encode()) > max_token:
                        raise self._error(f"a key longer than {max_token} bytes", pos)
                    path[-1] = key
                    pos = m.end()
                    mode = _VALUE
                    close_ok = False
                    continue
            elif mode == _AFTER:
                m = _FAST_AFTER.match(buf, pos)  # always matches, maybe nothing
                closer, comma = m.group(1), m.start(2) >= 0
                if (
                    (comma or closer)
                    and (not closer or closer == ("}" if stack[-1] else "]"))
                    and not (closer and comma and len(stack) == 1)
                ):
                    if closer:
                        stack.pop()
                        path.pop()
                    pos = m.end()
                    mode = _past_comma(stack, path) if comma else _AFTER if stack else _END
                    close_ok = False
                    continue
            if mode == _STRING:
                end = _RUN.match(buf, pos).end()
                done = False
                stop = end  # the content that can be taken now is buf[pos:stop]
                if end < n:
                    c = buf[end]
                    if c == '"':
                        done = True
                    elif c != "\\":
                        raise self._error("a control character in a string", end)
                    elif not _PARTIAL_ESCAPE.match(buf, end):
                        raise self._error("an invalid escape", end)
                kind = self._kind
                if kind == _TEXT:
                    if (
                        not done
                        and stop - pos >= 6
                        and _HIGH_SURROGATE_ESCAPE.match(buf, stop - 6, stop)
                        and _escape_starts(buf, stop - 6)
                    ):
                        stop -= 6  # the first half of a surrogate pair waits for the second
                    sink = self._sink
                    assert sink is not None
                    if stop > pos:
                        fed = await sink.feed(_decode(buf[pos:stop]))
                        if fed:
                            out.append(_escape(fed))
                    if not done:
                        pos = emit = stop
                        break
                    fed = await sink.close()
                    self._sink = None
                    if fed:
                        out.append(_escape(fed))
                    emit = end  # the closing quote passes
                elif kind == _NAME:
                    part = buf[pos:end]
                    self._key_parts.append(part)
                    self._key_bytes += len(part) if part.isascii() else len(part.encode())
                    if self._key_bytes > self._max_token:
                        raise self._error(f"a key longer than {self._max_token} bytes", pos)
                    if not done:
                        pos = end
                        break
                    path[-1] = _decode("".join(self._key_parts))
                    self._key_parts = []
                    pos = end + 1
                    mode = _COLON
                    continue
                elif not done:
                    pos = end
                    break
                pos = end + 1
                mode = _AFTER if stack else _END
                continue

            if mode == _NUMBER_HELD:
                end = _NUMBER_CHARS.match(buf, pos).end()
                self._num.append(buf[pos:end])
                self._num_len += end - pos
                if self._num_len > self._max_token:
                    raise self._error(f"a number longer than {self._max_token} bytes", pos)
                if end == n and not final:
                    pos = emit = n
                    break
                number = "".join(self._num)
                self._num = []
                if not _NUMBER.fullmatch(number):
                    raise self._error(f"an invalid number {number[:40]!r}", pos)
                out.append(buf[emit:pos])
                out.append(number)
                pos = emit = end
                mode = _AFTER if stack else _END
                continue

            c = buf[pos]
            if c in " \t\n\r":
                pos = _WS.match(buf, pos).end()
                continue

            if (
                (c == "}" or c == "]")
                and stack
                and c == ("}" if stack[-1] else "]")
                and (mode == _AFTER or (close_ok and mode == (_KEY if stack[-1] else _VALUE)))
            ):  # the container closes: after a value, or right after it opened
                stack.pop()
                path.pop()
                mode = _AFTER if stack else _END
                pos += 1
                continue

            if mode == _AFTER:
                if c == ",":
                    mode = _past_comma(stack, path)
                    close_ok = False
                else:
                    raise self._error(f"{c!r} after a value", pos)
                pos += 1

            elif mode == _VALUE:
                if c == '"':
                    self._kind = _PASS
                    if len(path) in self._depths:
                        concrete = tuple(path)
                        if any(matches(s, concrete) for s in self._selectors):
                            self._kind = _TEXT
                            out.append(buf[emit : pos + 1])
                            emit = pos + 1
                            self._sink = self._open_text(concrete)
                    mode = _STRING
                    pos += 1
                elif c in "-0123456789":
                    end = _NUMBER_CHARS.match(buf, pos).end()
                    if end - pos > self._max_token:
                        raise self._error(f"a number longer than {self._max_token} bytes", pos)
                    if end == n and not final:  # it may go on in the next chunk
                        out.append(buf[emit:pos])
                        self._num = [buf[pos:end]]
                        self._num_len = end - pos
                        pos = emit = n
                        mode = _NUMBER_HELD
                        break
                    if not _NUMBER.fullmatch(buf, pos, end):
                        raise self._error(f"an invalid number {buf[pos:end][:40]!r}", pos)
                    pos = end
                    mode = _AFTER if stack else _END
                elif c == "{" or c == "[":
                    if len(stack) >= MAX_DEPTH:
                        raise self._error(f"nesting deeper than {MAX_DEPTH}", pos)
                    if c == "{":
                        stack.append(True)
                        path.append("")
                        mode = _KEY
                    else:
                        stack.append(False)
                        path.append(0)
                    close_ok = True
                    pos += 1
                elif c in _LITERALS:
                    word = _LITERALS[c]
                    if buf.startswith(word, pos):
                        pos += len(word)
                        mode = _AFTER if stack else _END
                    elif not final and n - pos < len(word) and word.startswith(buf[pos:]):
                        break  # held until the word is complete
                    else:
                        raise self._error("an invalid literal", pos)
                else:
                    raise self._error(f"{c!r} where a value should be", pos)

            elif mode == _KEY:
                if c == '"':
                    self._kind = _NAME
                    self._key_parts = []
                    self._key_bytes = 0
                    mode = _STRING
                else:
                    raise self._error(f"{c!r} where a key should be", pos)
                pos += 1

            elif mode == _COLON:
                if c != ":":
                    raise self._error(f"{c!r} where ':' should be", pos)
                mode = _VALUE
                close_ok = False
                pos += 1

            else:  # _END
                raise self._error("data after the JSON document", pos)

        if final and mode == _NUMBER_HELD:  # the body ends a number
            number = "".join(self._num)
            self._num = []
            if stack or not _NUMBER.fullmatch(number):
                raise self._error(f"an unfinished number {number[:40]!r}", pos)
            out.append(number)
            mode = _END
        out.append(buf[emit:pos])
        self._buf = buf[pos:]
        self._offset += pos
        self._mode, self._close_ok = mode, close_ok
        return "".join(out)


_F_START, _F_FIRST, _F_VALUE, _F_AFTER, _F_END, _F_ELEMENT = range(6)
_F_STRING = re.compile(rb'[^"\\]*')
_F_NESTED = re.compile(rb'[^"\[\]{}]*')
_F_SCALAR = re.compile(rb"[-+.0-9A-Za-z]*")
_F_WS = re.compile(rb"[ \t\n\r]*")
_F_SCALAR_START = frozenset(b"-0123456789tfn")


class JsonArrayFramer:
    """Cuts a streamed top-level JSON array into its elements.

    ``feed`` returns ``("raw", bytes)`` pieces (the ``[``, ``,``, ``]`` and whitespace between
    elements, released at once) and one ``("element", bytes)`` per element once its last byte has
    arrived; the pieces concatenate to the input. Strings and nesting are tracked so that framing
    is exact; the elements themselves are left for the caller to parse. An element over
    ``max_element`` bytes, or a body that is not an array, raises :class:`TextFormatError`.
    """

    __slots__ = (
        "_escape",
        "_failed",
        "_in_string",
        "_max",
        "_mode",
        "_offset",
        "_parts",
        "_scalar",
        "_size",
        "_stack",
    )

    def __init__(self, max_element: int = 1 << 20) -> None:
        self._max = max_element
        self._mode = _F_START
        self._parts: list[bytes] = []  # the element so far, from earlier chunks
        self._size = 0
        self._stack = bytearray()  # the element's open brackets
        self._in_string = False
        self._escape = False  # a backslash ended the last chunk
        self._scalar = False  # the element is a number or a literal
        self._failed = False
        self._offset = 0

    def _error(self, reason: str, pos: int) -> TextFormatError:
        self._failed = True
        return TextFormatError(f"invalid JSON array at byte {self._offset + pos}: {reason}")

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Read the next chunk; return the raw pieces and the elements completed by it."""
        if self._failed:
            raise TextFormatError("the JSON array already failed to parse")
        data = bytes(data)
        n = len(data)
        out: list[tuple[str, bytes]] = []
        pos = 0
        start = 0  # where the current element (or raw run) began in this chunk
        mode = self._mode
        stack = self._stack
        while pos < n:
            if mode == _F_ELEMENT:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                if self._in_string:
                    end = _F_STRING.match(data, pos).end()
                    if end == n:
                        pos = n
                        break
                    if data[end] == 0x5C:  # backslash: skip what it escapes
                        if end + 1 == n:
                            self._escape = True
                        pos = end + 2
                        continue
                    self._in_string = False
                    pos = end + 1
                    if stack:
                        continue
                elif self._scalar:
                    pos = _F_SCALAR.match(data, pos).end()
                    if pos == n:
                        break
                else:
                    end = _F_NESTED.match(data, pos).end()
                    if end == n:
                        pos = n
                        break
                    b = data[end]
                    pos = end + 1
                    if b == 0x22:
                        self._in_string = True
                        continue
                    if b == 0x5B or b == 0x7B:
                        if len(stack) >= MAX_DEPTH:
                            raise self._error(f"nesting deeper than {MAX_DEPTH}", end)
                        stack.append(b)
                        continue
                    if stack.pop() != (0x5B if b == 0x5D else 0x7B):
                        raise self._error("mismatched brackets", end)
                    if stack:
                        continue
                # the element is complete at pos
                size = self._size + pos - start
                if size > self._max:
                    raise self._error(f"an element longer than {self._max} bytes", pos)
                self._parts.append(data[start:pos])
                out.append(("element", b"".join(self._parts)))
                self._parts = []
                self._size = 0
                self._scalar = False
                start = pos
                mode = _F_AFTER
                continue

            b = data[pos]
            if b in b" \t\n\r":
                pos = _F_WS.match(data, pos).end()
                continue
            if mode == _F_START:
                if b != 0x5B:
                    raise self._error("the body is not a JSON array", pos)
                mode = _F_FIRST
            elif mode == _F_AFTER:
                if b == 0x2C:
                    mode = _F_VALUE
                elif b == 0x5D:
                    mode = _F_END
                else:
                    raise self._error(f"{bytes([b])!r} after an element", pos)
            elif mode == _F_END:
                raise self._error("data after the array", pos)
            elif b == 0x5D and mode == _F_FIRST:
                mode = _F_END
            else:  # an element starts
                if b == 0x22:
                    self._in_string = True
                elif b == 0x5B or b == 0x7B:
                    stack.append(b)
                elif b in _F_SCALAR_START:
                    self._scalar = True
                else:
                    raise self._error(f"{bytes([b])!r} where an element should be", pos)
                if pos > start:
                    out.append(("raw", data[start:pos]))
                start = pos
                mode = _F_ELEMENT
            pos += 1

        if start < n:
            if mode == _F_ELEMENT:
                self._size += n - start
                if self._size > self._max:
                    raise self._error(f"an element longer than {self._max} bytes", n)
                self._parts.append(data[start:])
            else:
                out.append(("raw", data[start:]))
        self._mode = mode
        self._offset += n
        return out

    def close(self) -> list[tuple[str, bytes]]:
        """End of the body: raise unless the array was complete."""
        if self._failed:
            raise TextFormatError("the JSON array already failed to parse")
        if self._mode != _F_END:
            self._failed = True
            raise TextFormatError("the JSON array is incomplete")
        return []
