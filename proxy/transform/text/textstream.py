"""One text through a route's transform chain, piece by piece (a :class:`~.sink.TextSink`).

The text is UTF-8 for the transforms (JSON and Server-Sent Events always are). What the chain
releases after a piece is returned at once: it belongs in the same value as the piece. When
every stage has a synchronous per-body stream (``open(ctx)`` with ``feed``/``close``, as the
built-in transforms do) the stages are driven directly, on the text itself when every stream
``takes_text``. Otherwise the chain of async generators is driven by hand: its source hands out
the piece, and when the chain asks for the next one while none is there, everything it could
release has been returned and it is waiting — that is where a piece's output ends. Anything
else a transform awaits (a real future) is awaited.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any

from proxy.transform_api import TransformContext

__all__ = ["open_text", "transform_whole"]

_WAITING = object()  # what the source yields up when the chain wants a piece not given yet


def _lenient(exc: UnicodeError) -> tuple[str, int]:
    """Decode errors in a chain's output: an encoded lone surrogate is read back (JSON strings
    may hold one), any other invalid byte becomes U+FFFD."""
    if isinstance(exc, UnicodeDecodeError):
        try:
            return codecs.lookup_error("surrogatepass")(exc)
        except UnicodeDecodeError:
            return "\ufffd", exc.start + 1
    raise exc


codecs.register_error("streamproxy.text", _lenient)


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("streamproxy.text")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class _SyncText:
    """Every stage has ``open``: feed the streams one after the other."""

    __slots__ = ("_decoder", "_streams")

    def __init__(self, streams: list[Any]) -> None:
        self._streams = streams
        # made only once some output is not whole UTF-8 (a character cut, a lone surrogate)
        self._decoder: codecs.IncrementalDecoder | None = None

    def _decode(self, data: bytes, final: bool = False) -> str:
        decoder = self._decoder
        if decoder is None:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                decoder = self._decoder = _decoder()
        return decoder.decode(data, final)

    def feed_now(self, text: str) -> str:
        data = _encode(text)
        for stream in self._streams:
            if not data:
                return ""
            data = stream.feed(data)
        return self._decode(data) if data else ""

    async def feed(self, text: str) -> str:
        return self.feed_now(text)

    async def close(self) -> str:
        data = b""
        for stream in self._streams:
            data = stream.feed(data) + stream.close() if data else stream.close()
        return self._decode(data, final=True)


class _Source:
    """The chain's input: pieces handed in by :class:`_AsyncText`, the end when it closes."""

    __slots__ = ("ended", "pending")

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()
        self.ended = False

    def __aiter__(self) -> _Source:
        return self

    def __anext__(self) -> _Next:
        return _Next(self)


class _Next:
    __slots__ = ("source",)

    def __init__(self, source: _Source) -> None:
        self.source = source

    def __await__(self) -> Generator[Any, Any, bytes]:
        source = self.source
        while not source.pending:
            if source.ended:
                raise StopAsyncIteration
            yield _WAITING
        return source.pending.popleft()


class _Yield:
    """Hand an awaitable's future up to the event loop (a transform awaiting real I/O)."""

    __slots__ = ("signal",)

    def __init__(self, signal: Any) -> None:
        self.signal = signal

    def __await__(self) -> Generator[Any, Any, None]:
        yield self.signal


class _AsyncText:
    """A chain of async-generator transforms, driven one piece at a time."""

    __slots__ = ("_decoder", "_done", "_out", "_source", "_step")

    feed_now = None  # a piece's output may need awaiting: only feed()

    def __init__(self, transforms: Sequence[Any], ctx: TransformContext) -> None:
        self._source = _Source()
        it: AsyncIterator[bytes] = self._source
        for transform in transforms:
            it = transform(it, ctx)
        self._out = it
        self._step: Any = None
        self._done = False
        self._decoder = _decoder()

    async def _run(self) -> bytes:
        pieces: list[bytes] = []
        while not self._done:
            step = self._step
            if step is None:
                step = self._step = self._out.__anext__().__await__()
            try:
                signal = step.send(None)
            except StopIteration as stop:
                self._step = None
                if stop.value:
                    pieces.append(stop.value)
                continue
            except StopAsyncIteration:
                self._step = None
                self._done = True
                break
            if signal is _WAITING:
                break
            await _Yield(signal)
        return b"".join(pieces)

    async def feed(self, text: str) -> str:
        if not text:
            return ""
        self._source.pending.append(_encode(text))
        data = await self._run()
        return self._decoder.decode(data) if data else ""

    async def close(self) -> str:
        self._source.ended = True
        data = await self._run()
        return self._decoder.decode(data, final=True)


class _PlainText:
    """Every stage's stream :attr:`takes_text` (``feed_text``/``close_text``, as ``redact``
    on UTF-8): the text goes through them as it is, no encoding and decoding per piece."""

    __slots__ = ("_streams",)

    def __init__(self, streams: list[Any]) -> None:
        self._streams = streams

    def feed_now(self, text: str) -> str:
        for stream in self._streams:
            if not text:
                return ""
            text = stream.feed_text(text)
        return text

    async def feed(self, text: str) -> str:
        return self.feed_now(text)

    async def close(self) -> str:
        text = ""
        for stream in self._streams:
            text = stream.close_text(text)
        return text


def open_text(
    transforms: Sequence[Any], ctx: TransformContext
) -> _PlainText | _SyncText | _AsyncText:
    """A new text through ``transforms`` (the chain's callables, in order)."""
    if all(callable(getattr(t, "open", None)) for t in transforms):
        streams = [t.open(ctx) for t in transforms]
        if all(getattr(s, "takes_text", False) for s in streams):
            return _PlainText(streams)
        return _SyncText(streams)
    return _AsyncText(transforms, ctx)


async def transform_whole(transforms: Sequence[Any], ctx: TransformContext, text: str) -> str:
    """One whole text through the chain (a value that is a text on its own)."""
    stream = open_text(transforms, ctx)
    out = await stream.feed(text)
    return out + await stream.close()
