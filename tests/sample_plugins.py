"""Transforms used by the tests, loaded by dotted path like any user plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.transform_api import TransformContext


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
