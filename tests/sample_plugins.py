"""Transforms used by the tests, loaded by dotted path like any user plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.transform_api import Event, TransformContext


class Upper:
    def __init__(self, **options: object) -> None:
        if options:
            raise TypeError(f"unexpected options: {sorted(options)}")

    async def __call__(
        self, chunks: AsyncIterator[bytes], ctx: TransformContext
    ) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk.upper()


class FailAfter:
    """Passes ``count`` chunks through, then raises."""

    def __init__(self, count: int = 1) -> None:
        if count < 0:
            raise ValueError("count must be at least 0")
        self.count = count
        self.closed = 0

    async def __call__(
        self, chunks: AsyncIterator[bytes], ctx: TransformContext
    ) -> AsyncIterator[bytes]:
        seen = 0
        try:
            async for chunk in chunks:
                if seen == self.count:
                    raise RuntimeError("transform broke")
                seen += 1
                yield chunk
        finally:
            self.closed += 1


class Bracket:
    """Wraps the whole body in brackets: proves end-of-stream flushing."""

    async def __call__(
        self, chunks: AsyncIterator[bytes], ctx: TransformContext
    ) -> AsyncIterator[bytes]:
        yield b"["
        async for chunk in chunks:
            yield chunk
        yield b"]"


class HoldTail:
    """Identity, but the last ``n`` characters of what came wait for more (or for the end):
    a plugin that holds text back, as a partial match does."""

    def __init__(self, n: int = 3) -> None:
        self.n = n

    async def __call__(
        self, chunks: AsyncIterator[bytes], ctx: TransformContext
    ) -> AsyncIterator[bytes]:
        held = ""
        async for chunk in chunks:
            held += chunk.decode("utf-8", "surrogatepass")
            if len(held) > self.n:
                cut = len(held) - self.n
                yield held[:cut].encode("utf-8", "surrogatepass")
                held = held[cut:]
        if held:
            yield held.encode("utf-8", "surrogatepass")


class DropPings:
    """An event transform: drops ``ping`` events, upper-cases ``shout`` data, adds a last event."""

    events = True

    async def __call__(
        self, events: AsyncIterator[Event], ctx: TransformContext
    ) -> AsyncIterator[Event]:
        async for event in events:
            if event.event == "ping":
                continue
            if event.event == "shout" and event.data is not None:
                event.data = event.data.upper()
            yield event
        yield Event("bye", event="end")
