"""The transform plugin interface.

A transform plugin is a *factory*: called once at config load with the entry's options as
keyword arguments, it returns a transform or raises ``ValueError``/``TypeError`` (reported as a
config error at the entry's key path).

A *transform* is called once per body as ``transform(chunks, ctx)``: ``chunks`` is an async
iterator of ``bytes`` and ``ctx`` a :class:`TransformContext`; it returns an async iterator of
``bytes`` (usually it is an async generator). An empty chunk means "nothing yet", never "the end";
the end of the body is the end of the iteration, where a transform flushes what it held back.

A factory may declare its options as a pydantic model in an ``Options`` attribute; the loader then
validates the options with it (errors carry the key path down to the offending item) and calls
the factory with the validated fields. ``content_types`` is taken by the engine for every
transform and is never passed to the factory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from multidict import CIMultiDictProxy

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
