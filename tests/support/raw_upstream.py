"""A raw TCP upstream for tests where the bytes on the wire matter (framing, resets, timing).

``reply(up, reader, writer, n)`` serves the ``n``-th connection; the request heads read with
:meth:`RawUpstream.read_request` are kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Reply = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawUpstream:
    """Counts connections and requests; ``reply`` decides what each connection gets."""

    reply: Reply
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            await self.reply(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request head (bounded wait), kept in ``requests``."""
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


@contextlib.asynccontextmanager
async def raw_upstream(reply: Reply) -> AsyncIterator[RawUpstream]:
    """A listening :class:`RawUpstream`; its connection handlers are cancelled at the end."""
    up = RawUpstream(reply)
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        for task in list(up.handlers):
            task.cancel()
        await asyncio.gather(*up.handlers, return_exceptions=True)
        await server.wait_closed()


async def silent(
    up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    """A reply that reads the request head, then says nothing until the proxy gives up and
    closes (bounded)."""
    await up.read_request(reader)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await reader.read()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
