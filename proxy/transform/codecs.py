"""Incremental Content-Encoding codecs: gzip, deflate and br.

Decoders turn a compressed body into plain bytes chunk by chunk so that a transform can see the
decoded text; encoders compress the transformed output again for the client.

Decompression is bounded: :meth:`Decoder.decode_iter` yields the output of one input chunk in
pieces of at most ``max_chunk`` bytes, so a small "bomb" never has to be expanded in memory at
once. ``decode()``/``flush()`` are conveniences that join those pieces and refuse (``DecodeError``)
to build more than ``max_output`` bytes. A decoder iterator must be exhausted before the next call.

Decoders are strict: corrupt data, data after the end of the stream, and a stream that is still
incomplete at ``flush()`` all raise :class:`DecodeError`. A body of zero bytes decodes to nothing.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator, Iterable, Iterator
from typing import Protocol

import brotli

__all__ = [
    "BROTLI_QUALITY",
    "DEFAULT_MAX_CHUNK",
    "DEFAULT_MAX_OUTPUT",
    "DEFLATE_LEVEL",
    "GZIP_LEVEL",
    "SUPPORTED",
    "BrotliDecoder",
    "BrotliEncoder",
    "DecodeError",
    "Decoder",
    "DeflateDecoder",
    "Encoder",
    "GzipDecoder",
    "UnsupportedEncoding",
    "ZlibEncoder",
    "choose_encoding",
    "make_decoder",
    "make_encoder",
    "normalize_encoding",
]

SUPPORTED = ("gzip", "deflate", "br")
DEFAULT_MAX_CHUNK = 256 * 1024  # largest piece a decoder yields
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024  # largest result of one decode()/flush() call
GZIP_LEVEL = 5
DEFLATE_LEVEL = 5
BROTLI_QUALITY = 4

_ALIASES = {"x-gzip": "gzip"}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_BROTLI_SLICE = 1024  # input slice size when brotli cannot bound its output itself


class DecodeError(ValueError):
    """The body is not a valid (or not a complete) stream in its declared content coding."""


class UnsupportedEncoding(ValueError):
    """The content coding is not one this module can decode or encode."""


def _brotli_has_output_limit() -> bool:
    # brotli >= 1.2 can stop after a given amount of output (the fix for CVE-2025-6176).
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


_BROTLI_OUTPUT_LIMIT = _brotli_has_output_limit()


def normalize_encoding(value: str) -> str:
    """Lower-case a single content-coding token and resolve aliases (``x-gzip`` -> ``gzip``)."""
    token = value.strip().lower()
    return _ALIASES.get(token, token)


def _single_coding(value: str) -> str:
    codings = [c for c in value.split(",") if c.strip()]
    name = normalize_encoding(codings[0]) if len(codings) == 1 else ""
    if name not in SUPPORTED:
        raise UnsupportedEncoding(f"unsupported content coding {value!r}")
    return name


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _join_bounded(pieces: Iterable[bytes], limit: int) -> bytes:
    out: list[bytes] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit:
            raise DecodeError(f"decoded output exceeds {limit} bytes; use decode_iter()")
        out.append(piece)
    return b"".join(out)


# --- decoders -----------------------------------------------------------------------------------


class Decoder(Protocol):
    """Decodes one body. ``decode_iter(chunk)`` yields the plain bytes that ``chunk`` completes,
    in pieces of at most ``max_chunk`` bytes (exhaust it before the next call); ``flush_iter()``
    at the end of the body raises ``DecodeError`` if the stream is incomplete."""

    encoding: str
    max_chunk: int

    def decode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def decode_iter(self, data: bytes) -> Iterator[bytes]: ...
    def flush_iter(self) -> Iterator[bytes]: ...


class _BaseDecoder:
    encoding = ""

    def __init__(
        self, *, max_chunk: int = DEFAULT_MAX_CHUNK, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> None:
        if max_chunk < 1 or max_output < 1:
            raise ValueError("max_chunk and max_output must be positive")
        self.max_chunk = max_chunk
        self.max_output = max_output

    def decode_iter(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def flush_iter(self) -> Iterator[bytes]:
        raise NotImplementedError

    def decode(self, data: bytes) -> bytes:
        return _join_bounded(self.decode_iter(data), self.max_output)

    def flush(self) -> bytes:
        return _join_bounded(self.flush_iter(), self.max_output)

    def _truncated(self) -> DecodeError:
        return DecodeError(f"truncated {self.encoding} stream")


class _ZlibDecoder(_BaseDecoder):
    def _inflate(self, obj: zlib._Decompress, data: bytes) -> Generator[bytes, None, bytes]:
        """Feed ``data`` to ``obj``, yielding bounded output; return the bytes after its end."""
        while True:
            try:
                out = obj.decompress(data, self.max_chunk)
            except zlib.error as exc:
                raise DecodeError(f"corrupt {self.encoding} stream: {exc}") from exc
            if out:
                yield out
            if obj.eof:
                return obj.unused_data
            data = obj.unconsumed_tail
            # A full piece may leave output pending inside zlib even without unconsumed input.
            if not data and len(out) < self.max_chunk:
                return b""


class GzipDecoder(_ZlibDecoder):
    """gzip (RFC 1952), including several concatenated members."""

    encoding = "gzip"

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self._member = zlib.decompressobj(_GZIP_WBITS)
        self._started = False  # the current member has received input

    def decode_iter(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._member.eof:  # the previous member is complete: this starts the next one
                self._member = zlib.decompressobj(_GZIP_WBITS)
            self._started = True
            data = yield from self._inflate(self._member, data)

    def flush_iter(self) -> Iterator[bytes]:
        if self._started and not self._member.eof:
            raise self._truncated()
        return iter(())


def _is_zlib_header(head: bytes) -> bool:
    """RFC 1950: CM = 8 (deflate), CINFO <= 7, and the 16-bit header is a multiple of 31."""
    cmf, flg = head[0], head[1]
    return (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and ((cmf << 8) | flg) % 31 == 0


class DeflateDecoder(_ZlibDecoder):
    """HTTP "deflate": zlib-wrapped (RFC 1950) as specified, or raw deflate as some servers send.

    The first two bytes decide, as in browsers: a valid zlib header means zlib, anything else is
    taken for raw deflate.
    """

    encoding = "deflate"

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self._head = b""  # input held back until the first two bytes are known
        self._stream: zlib._Decompress | None = None

    def decode_iter(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        if self._stream is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            wbits = zlib.MAX_WBITS if _is_zlib_header(data) else -zlib.MAX_WBITS
            self._stream = zlib.decompressobj(wbits)
        if self._stream.eof:
            raise DecodeError("data after the end of the deflate stream")
        if (yield from self._inflate(self._stream, data)):
            raise DecodeError("data after the end of the deflate stream")

    def flush_iter(self) -> Iterator[bytes]:
        if self._head or (self._stream is not None and not self._stream.eof):
            raise self._truncated()
        return iter(())


class BrotliDecoder(_BaseDecoder):
    """br (RFC 7932)."""

    encoding = "br"

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self._stream = brotli.Decompressor()
        self._started = False

    def _process(self, data: bytes) -> bytes:
        try:
            if _BROTLI_OUTPUT_LIMIT:
                # The output buffer grows in blocks (of at least ~32 KiB), so the result may
                # exceed the limit somewhat; _pieces() cuts it to size.
                return self._stream.process(data, output_buffer_limit=self.max_chunk)
            return self._stream.process(data)
        except brotli.error as exc:
            raise DecodeError(f"corrupt br stream: {exc}") from exc

    def decode_iter(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._started = True
        if _BROTLI_OUTPUT_LIMIT:
            # Stopped at the limit, the decoder keeps the rest of the input and of the output:
            # ask again, without new input, until a call gives nothing or the stream is complete.
            while True:
                out = self._process(data)
                data = b""
                yield from _pieces(out, self.max_chunk)
                if not out or self._stream.is_finished():
                    return
        else:
            # Older brotli cannot stop early: small input slices limit, but do not strictly
            # bound, the output of each step.
            for start in range(0, len(data), _BROTLI_SLICE):
                yield from _pieces(
                    self._process(data[start : start + _BROTLI_SLICE]), self.max_chunk
                )

    def flush_iter(self) -> Iterator[bytes]:
        if self._started and not self._stream.is_finished():
            raise self._truncated()
        return iter(())


_DECODERS: dict[str, type[_BaseDecoder]] = {
    "gzip": GzipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
}


def make_decoder(
    encoding: str, *, max_chunk: int = DEFAULT_MAX_CHUNK, max_output: int = DEFAULT_MAX_OUTPUT
) -> Decoder:
    """A decoder for a Content-Encoding value; ``UnsupportedEncoding`` for anything but one of
    gzip/x-gzip/deflate/br (stacked codings such as ``gzip, br`` included)."""
    return _DECODERS[_single_coding(encoding)](max_chunk=max_chunk, max_output=max_output)


# --- encoders -----------------------------------------------------------------------------------


class Encoder(Protocol):
    encoding: str

    def encode(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _FlushingEncoder:
    """Every ``encode()`` result ends on a flush, so the client can decode everything sent so
    far without waiting for more; ``finish()`` once ends the stream."""

    encoding: str

    def __init__(self) -> None:
        self._finished = False

    def encode(self, data: bytes) -> bytes:
        if self._finished:
            raise RuntimeError("encode() after finish()")
        return self._flushed(data) if data else b""

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return self._end()

    def _flushed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _end(self) -> bytes:
        raise NotImplementedError


class ZlibEncoder(_FlushingEncoder):
    """gzip or zlib-wrapped deflate, each piece ending on a sync flush."""

    def __init__(self, encoding: str, wbits: int, level: int) -> None:
        super().__init__()
        self.encoding = encoding
        self._stream = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def _flushed(self, data: bytes) -> bytes:
        return self._stream.compress(data) + self._stream.flush(zlib.Z_SYNC_FLUSH)

    def _end(self) -> bytes:
        return self._stream.flush(zlib.Z_FINISH)


class BrotliEncoder(_FlushingEncoder):
    """br, each piece ending on a flush."""

    encoding = "br"

    def __init__(self, quality: int = BROTLI_QUALITY) -> None:
        super().__init__()
        self._stream = brotli.Compressor(quality=quality)

    def _flushed(self, data: bytes) -> bytes:
        return self._stream.process(data) + self._stream.flush()

    def _end(self) -> bytes:
        return self._stream.finish()


def make_encoder(encoding: str) -> Encoder:
    """An encoder for gzip (x-gzip), deflate (zlib-wrapped) or br; else ``UnsupportedEncoding``."""
    name = _single_coding(encoding)
    if name == "gzip":
        return ZlibEncoder("gzip", _GZIP_WBITS, GZIP_LEVEL)
    if name == "deflate":
        return ZlibEncoder("deflate", zlib.MAX_WBITS, DEFLATE_LEVEL)
    return BrotliEncoder()


# --- Accept-Encoding ----------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _parse_accept_encoding(value: str) -> dict[str, float]:
    """Coding -> q. A malformed q refuses the coding; a coding listed twice keeps its lowest q."""
    prefs: dict[str, float] = {}
    for element in value.split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        coding = normalize_encoding(coding)
        if not _TOKEN.fullmatch(coding):
            continue
        q = 1.0
        for param in params:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                raw = raw.strip()
                q = float(raw) if _QVALUE.fullmatch(raw) else 0.0
                break
        prefs[coding] = min(q, prefs.get(coding, q))
    return prefs


def choose_encoding(accept_encoding: str | None, offered: str) -> bool:
    """Whether a client sending ``accept_encoding`` accepts content coded with ``offered``
    (RFC 9110 section 12.5.3).

    Without the header only ``identity`` is taken as acceptable: a proxy should not compress for
    a client that did not ask for it.
    """
    offered = normalize_encoding(offered)
    if accept_encoding is None:
        return offered == "identity"
    prefs = _parse_accept_encoding(accept_encoding)
    if offered in prefs:
        return prefs[offered] > 0
    if "*" in prefs:
        return prefs["*"] > 0
    return offered == "identity"
