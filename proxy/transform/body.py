"""The upstream response body as the pipeline reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["UpstreamBody"]


class UpstreamBody:
    """The body's chunks as they arrive, an async iterator over ``read`` (which returns b"" at
    the end and raises the proxy's own errors). A reader that knows it may call ``read``
    itself: one frame less per chunk. It keeps no chunk (an idle stream holds nothing)."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self.read = read

    def __aiter__(self) -> UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk
