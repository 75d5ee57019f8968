"""What the structured readers feed: one text, piece by piece, through a transform chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TextSink(Protocol):
    """One text. ``feed`` gives the next piece and returns what the chain releases now (which
    belongs in the same value as the piece); ``close`` ends the text and returns what was still
    held. The concatenation of every return is the chain's reference result for the whole text.

    ``feed_now`` is ``feed`` without a coroutine, where no stage of the chain ever awaits (the
    built-in transforms' streams); None otherwise.
    """

    feed_now: Callable[[str], str] | None

    async def feed(self, text: str) -> str: ...

    async def close(self) -> str: ...
