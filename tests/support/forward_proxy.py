"""A tiny HTTP forward proxy for tests: absolute-form requests, one per connection.

Each request's line is rewritten to origin-form and sent, with ``Connection: close``, to the
host its URL names; the answer is piped back until the upstream closes. The request lines it
saw are kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from yarl import URL


class ForwardProxy:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._forward(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = line.split(" ")
            self.requests.append(line)
            url = URL(target, encoded=True)
            kept = [f for f in fields if f.split(":", 1)[0].strip().lower() != "connection"]
            out = "\r\n".join([f"{method} {url.raw_path_qs} {version}", *kept, "Connection: close"])
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            return
        up_writer.write(out.encode("latin-1") + b"\r\n\r\n")
        upload = asyncio.create_task(_pipe(reader, up_writer))
        await _pipe(up_reader, writer)
        upload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload
        up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(2**16):
            dst.write(data)
            await dst.drain()
