"""The transform plugin interface.

A transform plugin is a *factory*: called once at config load with the entry's options as
keyword arguments, it returns a transform or raises ``ValueError``/``TypeError`` (reported as a
config error at the entry's key path).

A *transform* is called once per body as ``transform(chunks, ctx)``: ``chunks`` is an async
iterator of ``bytes`` and ``ctx`` a :class:`TransformContext`; it returns an async iterator of
``bytes`` (usually it is an async generator). An empty chunk means "nothing yet", never "the end";
the end of the body is the end of the iteration, where a transform flushes what it held back.

A transform may also expose a synchronous per-body stream: ``open(ctx)`` returning an object
with ``feed(bytes) -> bytes`` and ``close() -> bytes`` that produce exactly what ``__call__``
would. The engine then drives it directly where it feeds many small texts (the values inside
structured bodies); the built-in transforms do. A stream whose ``takes_text`` is true (``redact``'s
on a UTF-8 body) also has ``feed_text(str) -> str`` and ``close_text(str) -> str`` (a last
piece in, the rest out), which do the same on text: when every stream of a chain takes text, a
structured text goes through them with no encoding and decoding per piece.

An *event transform* has ``events = True``: on a route whose text is ``sse`` it is called as
``transform(events, ctx)`` with an async iterator of :class:`Event` and returns one; the engine
writes the events it yields back as Server-Sent Events.

A factory may declare its options as a pydantic model in an ``Options`` attribute; the loader then
validates the options with it (errors carry the key path down to the offending item) and calls
the factory with the validated fields. ``content_types`` is taken by the engine for every
transform and is never passed to the factory.

Helpers for plugins: :func:`drive` (``__call__`` of a transform that has ``open``),
:func:`codec_for` (the Python codec of a body's charset, as the engine picks it) and
:func:`parse_size` (``512``, ``4KiB``, ``1MiB`` as everywhere in ``proxy.yaml``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from multidict import CIMultiDictProxy

from proxy.config.units import parse_size
from proxy.transform.media import codec_for

__all__ = [
    "Chunks",
    "Event",
    "Stream",
    "Transform",
    "TransformContext",
    "TransformFactory",
    "codec_for",
    "drive",
    "parse_size",
]

Chunks = AsyncIterator[bytes]


@dataclass(slots=True)
class TransformContext:
    """What a transform may know about the body it is rewriting."""

    route: str
    upstream: str
    request_id: str
    direction: str  # "response" or "request"
    headers: CIMultiDictProxy[str]  # the headers of the message whose body this is
    content_type: str = ""  # media type, lower case, without parameters
    charset: str = "utf-8"
    counters: dict[str, int] = field(default_factory=dict)
    sink: Callable[[str, int], None] | None = None  # the engine's live metrics hook

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a per-body counter (``redactions`` is exported as a metric)."""
        self.counters[name] = self.counters.get(name, 0) + n
        if self.sink is not None:
            self.sink(name, n)


@runtime_checkable
class Transform(Protocol):
    def __call__(self, chunks: Chunks, ctx: TransformContext) -> AsyncIterator[bytes]: ...


TransformFactory = Callable[..., Transform]


class Stream(Protocol):
    """A synchronous per-body stream (what ``open(ctx)`` returns)."""

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


async def drive(stream: Stream, chunks: Chunks) -> AsyncIterator[bytes]:
    """``__call__`` of a transform that has ``open``: the chunks through its stream, no empty
    piece yielded, neither piece kept while the next chunk is awaited."""
    async for chunk in chunks:
        if chunk:
            out = stream.feed(chunk)
            del chunk
            if out:
                yield out
            del out
    out = stream.close()
    if out:
        yield out


class Event:
    """One Server-Sent Event, as an event transform sees it.

    ``data`` is the event's data (its ``data`` lines joined by ``\n``), or None when it has no
    ``data`` line; ``comments`` are its comment lines without the leading ``:``. An event read
    from the upstream whose fields are unchanged when it is written is written back byte for
    byte; a changed or new one is written from its fields.
    """

    __slots__ = ("comments", "data", "event", "id", "retry", "source")

    def __init__(
        self,
        data: str | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comments: list[str] | None = None,
    ) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comments = list(comments) if comments else []
        self.source: object = None  # set by the reader: the bytes it came as, and its fields

    def fields(self) -> tuple[object, ...]:
        return (self.event, self.data, self.id, self.retry, tuple(self.comments))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f}={getattr(self, f)!r}"
            for f in ("event", "data", "id", "retry")
            if getattr(self, f)
        )
        return f"Event({shown})"
