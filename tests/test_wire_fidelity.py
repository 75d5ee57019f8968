"""Wire fidelity (issue 12): no invented headers, header bytes as they came, early answers and
full duplex, WebSocket close frames.

Upstreams are raw ``asyncio`` servers that send exactly the bytes a test chooses (or real
servers where a behaviour is theirs); clients speak raw HTTP/1.1 where the bytes matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import MakeProxy, Proxy, only_native
from .support.common import ROUTE
from .support.raw_upstream import RawUpstream, Reply, raw_upstream, reset
from .test_fault_injection import relay_once
from .test_hardening import assert_json_error, exchange, parse_answers

OBS_TEXT = (
    "aiohttp's client writes header text as UTF-8, so obs-text bytes cannot pass as they came"
)
HEAD_UNDER_RESET = (
    "aiohttp's client loses a response head that arrived before a reset under the upload"
)

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def start(make_proxy: MakeProxy, up: RawUpstream | str, **upstream: object) -> Proxy:
    origin = up if isinstance(up, str) else up.origin
    return await make_proxy({"up": {"targets": [origin], **upstream}}, ROUTE)


def head_of(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    assert end >= 0, data[:300]
    return data[: end + 4]


def header_names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")[1:] if line]


# -- no invented headers ----------------------------------------------------------------------


async def test_a_body_without_content_type_gets_none_and_no_server_header(
    make_proxy: MakeProxy,
) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x89PNG"
    result = await relay_once(make_proxy, data)
    head = head_of(result.data)
    names = header_names(head)
    assert b"content-type" not in names, head
    assert b"server" not in names, head
    assert b"date" in names, head  # the upstream sent none: RFC 9110 §6.6.1
    assert result.data.endswith(b"\r\n\r\n\x89PNG")


async def test_the_upstreams_date_and_server_are_kept_as_they_are(make_proxy: MakeProxy) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: origin/1\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    result = await relay_once(make_proxy, data)
    head = head_of(result.data)
    assert head.count(b"\r\nDate: ") == 1 and b"\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n" in head
    assert head.count(b"\r\nServer: ") == 1 and b"\r\nServer: origin/1\r\n" in head


async def test_a_chunked_body_without_content_type_gets_none(make_proxy: MakeProxy) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    result = await relay_once(make_proxy, data)
    names = header_names(head_of(result.data))
    assert b"content-type" not in names and b"server" not in names


async def test_the_proxys_own_errors_carry_no_server_header(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy({"up": ["http://127.0.0.1:9"]}, ROUTE)
    result = await exchange(proxy.port, GET)  # nothing listens on port 9: a 502
    (answer,) = parse_answers(result.data)
    assert_json_error(answer, 502)
    assert answer.header("Server") is None
    refused = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n")
    (answer,) = parse_answers(refused.data)
    assert_json_error(answer, 400)
    assert answer.header("Server") is None


# -- header bytes, byte for byte ----------------------------------------------------------------

LATIN1 = b'attachment; filename="r\xe9sum\xe9.pdf"'  # Latin-1, not UTF-8
UTF8 = 'attachment; filename="résumé.pdf"'.encode()


@pytest.mark.parametrize("value", [LATIN1, UTF8, b"a\xffb\x80", b"tab\there"])
async def test_obs_text_in_a_response_header_is_relayed_byte_for_byte(
    make_proxy: MakeProxy, value: bytes
) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Disposition: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    result = await relay_once(make_proxy, data)
    head = head_of(result.data)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"\r\nContent-Disposition: " + value + b"\r\n" in head
    assert result.data.endswith(b"\r\n\r\nok")


async def test_obs_text_in_the_reason_phrase_is_relayed_byte_for_byte(
    make_proxy: MakeProxy,
) -> None:
    data = b"HTTP/1.1 200 Tr\xe8s bien\r\nContent-Length: 2\r\n\r\nok"
    result = await relay_once(make_proxy, data)
    assert result.data.startswith(b"HTTP/1.1 200 Tr\xe8s bien\r\n"), result.data[:100]


@pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x0b", b"\x1f", b"\x7f", b"\x00", b"\r"])
async def test_a_control_byte_in_a_response_header_is_a_502(
    make_proxy: MakeProxy, byte: bytes
) -> None:
    data = b"HTTP/1.1 200 OK\r\nX-A: a" + byte + b"b\r\nContent-Length: 2\r\n\r\nok"
    result = await relay_once(make_proxy, data)
    (answer,) = parse_answers(result.data)
    assert_json_error(answer, 502)


def _echo_request_head() -> object:
    """An upstream that answers with the request head it got as its body."""

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        head = await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(head), head))
        await writer.drain()

    return reply


@pytest.mark.parametrize("value", [LATIN1, UTF8, b"a\xffb\x80", b"tab\there"])
async def test_obs_text_in_a_request_header_reaches_the_upstream_byte_for_byte(
    make_proxy: MakeProxy, value: bytes, upstream_client: str
) -> None:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        only_native(upstream_client, OBS_TEXT)  # bytes that are not UTF-8 text
    async with raw_upstream(_echo_request_head()) as up:  # type: ignore[arg-type]
        proxy = await start(make_proxy, up)
        request = (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: " + value + b"\r\nConnection: close\r\n\r\n"
        )
        result = await exchange(proxy.port, request)
    (answer,) = parse_answers(result.data)
    assert answer.status == 200, answer.body[:300]
    assert b"\r\nX-Name: " + value + b"\r\n" in answer.body


@pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x0b", b"\x1f", b"\x7f", b"\x00"])
async def test_a_control_byte_in_a_request_header_is_a_400(
    make_proxy: MakeProxy, byte: bytes
) -> None:
    async with raw_upstream(_echo_request_head()) as up:  # type: ignore[arg-type]
        proxy = await start(make_proxy, up)
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a" + byte + b"b\r\n\r\n"
        result = await exchange(proxy.port, request)
        assert up.requests == []
    (answer,) = parse_answers(result.data)
    assert_json_error(answer, 400)


async def test_requests_latin1_header_reaches_the_upstream(
    make_proxy: MakeProxy, upstream_client: str
) -> None:
    """``requests`` (via http.client) encodes header values as Latin-1."""
    only_native(upstream_client, OBS_TEXT)
    import http.client

    async with raw_upstream(_echo_request_head()) as up:  # type: ignore[arg-type]
        proxy = await start(make_proxy, up)

        def get() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            try:
                conn.request("GET", "/", headers={"X-Name": "résumé"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        status, body = await asyncio.to_thread(get)
    assert status == 200
    assert b"\r\nX-Name: r\xe9sum\xe9\r\n" in body


# -- full duplex and early answers --------------------------------------------------------------


async def read_chunked_request_body(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The chunks of a chunked request body, as they arrive (bounded per read)."""
    while True:
        async with asyncio.timeout(5):
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
        if size == 0:
            return
        yield data[:-2]


def answers_at_once_and_echoes(*, close_delimited: bool = False) -> Reply:
    """A 200 head at once, then one chunk per request-body chunk read (``got <bytes>``), then
    the end once the request body ended: an upstream that needs full duplex. Its body is
    chunked, or (``close_delimited``) ends where the connection does."""

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        if close_delimited:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        async for chunk in read_chunked_request_body(reader):
            line = b"got " + chunk + b"\n"
            writer.write(line if close_delimited else b"%x\r\n%b\r\n" % (len(line), line))
            await writer.drain()
        if not close_delimited:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return reply


async def duplex_exchange(port: int) -> None:
    """A chunked upload whose every chunk waits for the echo of the one before (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
            # The echo of the first chunk arrives before the client sends the second.
            assert await reader.readuntil(b"got first\n")
            writer.write(b"6\r\nsecond\r\n")
            await writer.drain()
            assert await reader.readuntil(b"got second\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            assert await reader.readuntil(b"\r\n0\r\n\r\n")
    finally:
        writer.close()


async def test_an_early_head_and_body_are_relayed_while_the_upload_goes_on(
    make_proxy: MakeProxy,
) -> None:
    async with raw_upstream(answers_at_once_and_echoes()) as up:
        proxy = await start(make_proxy, up)
        await duplex_exchange(proxy.port)


async def echo_as_read(scope: dict, receive: Any, send: Any) -> None:
    """A raw ASGI app: 200 at once, then a line per request-body chunk it reads."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        if message.get("body"):
            await send(
                {
                    "type": "http.response.body",
                    "body": b"got " + message["body"] + b"\n",
                    "more_body": True,
                }
            )
        if not message.get("more_body"):
            break
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def uvicorn_upstream(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn, in this process, on a socket already listening."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http="h11")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(5):
            await task
        sock.close()


async def test_full_duplex_with_uvicorn_as_directly(make_proxy: MakeProxy) -> None:
    async with uvicorn_upstream(echo_as_read) as origin:
        await duplex_exchange(int(origin.rsplit(":", 1)[1]))  # directly
        proxy = await start(make_proxy, origin)
        await duplex_exchange(proxy.port)


def answers_at_once_and_counts() -> Reply:
    """A 200 head at once, then reads the whole Content-Length body and ends with its size and
    the count of bytes it read: the upstream keeps reading after its answer."""

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            head = await up.read_request(reader)
            match = re.search(rb"(?i)\r\ncontent-length: (\d+)\r\n", head)
            length = int(match.group(1)) if match else 0
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nstart\r\n")
            await writer.drain()
            left = length
            while left:
                async with asyncio.timeout(5):
                    data = await reader.read(min(left, 2**16))
                if not data:
                    return
                left -= len(data)
            text = b"read %d" % length
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(text), text))
            await writer.drain()

    return reply


async def upload(
    port: int, body_size: int, *, path: bytes = b"/", timeout: float = 10.0
) -> tuple[bytes, bytes]:
    """POST ``body_size`` bytes with Content-Length over a raw socket while reading the answer
    (head, then its body to the end of its framing or EOF); the upload stops quietly if the
    proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (path, body_size)
    )
    block = b"x" * 2**16

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            left = body_size
            while left:
                n = min(left, len(block))
                writer.write(block[:n])
                left -= n
                await writer.drain()

    sender = asyncio.create_task(send())
    try:
        out = b""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(2**16):
                    out += chunk
        end = out.find(b"\r\n\r\n")
        return out[: end + 4], out[end + 4 :]
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


async def test_the_upload_keeps_going_after_an_early_head(make_proxy: MakeProxy) -> None:
    size = 4 * 2**20
    async with raw_upstream(answers_at_once_and_counts()) as up:
        proxy = await start(make_proxy, up)
        head, body = await upload(proxy.port, size)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"start" in body and b"read %d" % size in body and body.endswith(b"\r\n0\r\n\r\n")


async def test_a_connection_that_answered_early_is_reused_once_both_sides_ended(
    make_proxy: MakeProxy,
) -> None:
    async with raw_upstream(answers_at_once_and_counts()) as up:
        proxy = await start(make_proxy, up)
        for _ in range(3):
            head, body = await upload(proxy.port, 4 * 2**20)
            assert head.startswith(b"HTTP/1.1 200 ") and b"read 4194304" in body
        assert up.connections == 1  # the whole body went, the response ended: kept alive


def answers_early(data: bytes, *, rst: bool, done: asyncio.Event | None = None) -> Reply:
    """``data`` once some of the body came, the rest never read; then a reset, or the
    connection kept open (unread) until ``done``."""

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        async with asyncio.timeout(5):
            await reader.readexactly(2**16)  # the upload is under way
        writer.write(data)
        if rst:
            reset(writer)
            return
        await writer.drain()
        assert done is not None
        async with asyncio.timeout(10):
            await done.wait()

    return reply


def answers_401_unread(*, rst: bool, done: asyncio.Event | None = None) -> Reply:
    """A 401 once some of the body came, the rest never read; then a reset, or the connection
    kept open (unread) until ``done``."""
    return answers_early(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
        b"WWW-Authenticate: Bearer\r\n\r\ndenied",
        rst=rst,
        done=done,
    )


async def test_an_early_401_then_a_reset_under_the_upload_is_a_401(
    make_proxy: MakeProxy, upstream_client: str
) -> None:
    only_native(upstream_client, HEAD_UNDER_RESET)
    async with raw_upstream(answers_401_unread(rst=True)) as up:
        proxy = await start(make_proxy, up)
        results = await asyncio.gather(*(upload(proxy.port, 8 * 2**20) for _ in range(24)))
        statuses = [head.split(b" ", 2)[1] for head, _ in results]
        assert statuses == [b"401"] * 24, statuses
        assert all(body == b"denied" for _, body in results)
        assert up.connections == 24  # none retried
        metrics = await exchange(
            proxy.server.admin_port or 0, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1.0
        )
    errors = [
        line
        for line in metrics.data.decode().splitlines()
        if line.startswith("proxy_upstream_errors_total{")
    ]
    assert all(line.endswith(" 0.0") for line in errors), errors  # no target failure counted


async def test_a_connection_that_answered_before_the_body_ended_is_not_reused(
    make_proxy: MakeProxy,
) -> None:
    done = asyncio.Event()
    async with raw_upstream(answers_401_unread(rst=False, done=done)) as up:
        proxy = await start(make_proxy, up)
        try:
            for _ in range(2):
                # More than the socket buffers hold: the upload is still going when 401 ends.
                head, body = await upload(proxy.port, 32 * 2**20)
                assert head.startswith(b"HTTP/1.1 401 ") and body == b"denied"
        finally:
            done.set()
        assert up.connections == 2


# -- WebSocket close frames, with real clients and servers ----------------------------------------


@contextlib.asynccontextmanager
async def websockets_upstream(
    closes_with: tuple[int, str] | None = None, subprotocols: list[str] | None = None
) -> AsyncIterator[tuple[str, list[tuple[int, str]]]]:
    """A ``websockets`` server: it records the close frame each connection got; with
    ``closes_with``, it closes first after the first message."""
    from websockets.asyncio.server import ServerConnection, serve

    got: list[tuple[int, str]] = []

    async def handler(ws: ServerConnection) -> None:
        if closes_with is not None:
            await ws.recv()
            await ws.close(*closes_with)
        else:
            await ws.wait_closed()
        if ws.protocol.close_rcvd is not None:
            got.append((ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason))

    async with serve(handler, "127.0.0.1", 0, subprotocols=subprotocols) as server:  # type: ignore[arg-type]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", got


async def close_from_client(url: str) -> tuple[int, str]:
    from websockets.asyncio.client import connect

    async with asyncio.timeout(5), connect(url.replace("http:", "ws:")) as ws:
        await ws.close(4001, "client says bye")
        assert ws.protocol.close_rcvd is not None
        return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason


async def close_from_upstream(url: str) -> tuple[int, str]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with asyncio.timeout(5), connect(url.replace("http:", "ws:")) as ws:
        await ws.send("go")
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()
        await ws.wait_closed()
        assert ws.protocol.close_rcvd is not None
        return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason


Close = tuple[int, str]


async def directly_and_proxied(
    make_proxy: MakeProxy,
    session: Callable[[str], Awaitable[Close]],
    closes_with: Close | None = None,
) -> tuple[Close, Close, list[Close]]:
    """``session`` run against a ``websockets_upstream`` directly, then through a proxy: the
    close each run got back, and the close frames the upstream got (both, once recorded)."""
    async with websockets_upstream(closes_with=closes_with) as (origin, got):
        direct = await session(origin)
        proxy = await start(make_proxy, origin)
        proxied = await session(proxy.url("/"))
        async with asyncio.timeout(5):
            while len(got) < 2:  # noqa: ASYNC110 - the server records after its handler
                await asyncio.sleep(0.01)
    return direct, proxied, got


async def test_a_websocket_close_from_the_client_gets_the_upstreams_answer_as_directly(
    make_proxy: MakeProxy,
) -> None:
    direct, proxied, got = await directly_and_proxied(make_proxy, close_from_client)
    assert direct == (4001, "client says bye")
    assert proxied == direct  # the answer's code and reason, back to the client that closed
    assert got == [direct, direct]


async def test_a_websocket_close_from_the_upstream_gets_the_clients_answer_as_directly(
    make_proxy: MakeProxy,
) -> None:
    direct, proxied, got = await directly_and_proxied(
        make_proxy, close_from_upstream, closes_with=(4002, "upstream says bye")
    )
    assert direct == proxied == (4002, "upstream says bye")
    assert got[1] == got[0] == (4002, "upstream says bye")  # the client's answer, relayed


@pytest.mark.parametrize(("upstream_takes", "chosen"), [(["chat"], "chat"), (None, None)])
async def test_a_websocket_upgrade_offering_a_subprotocol_logs_no_warning(
    make_proxy: MakeProxy,
    caplog: pytest.LogCaptureFixture,
    upstream_takes: list[str] | None,
    chosen: str | None,
) -> None:
    from websockets.asyncio.client import connect

    async with websockets_upstream(subprotocols=upstream_takes) as (origin, _):
        proxy = await start(make_proxy, origin)
        with caplog.at_level("WARNING"):
            async with (
                asyncio.timeout(5),
                connect(
                    proxy.url("/").replace("http:", "ws:"), subprotocols=["other", "chat"]
                ) as ws,
            ):
                assert ws.subprotocol == chosen
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")] == []


async def test_an_early_answer_cut_by_a_reset_under_the_upload_is_relayed_as_cut(
    make_proxy: MakeProxy, upstream_client: str
) -> None:
    only_native(upstream_client, HEAD_UNDER_RESET)

    reply = answers_early(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 100\r\n\r\ntoo large", rst=True
    )
    async with raw_upstream(reply) as up:
        proxy = await start(make_proxy, up)
        results = await asyncio.gather(*(upload(proxy.port, 8 * 2**20) for _ in range(12)))
    relayed = 0
    for head, body in results:
        # The head that came is relayed; its body visibly ends short (never a 502). The proxy
        # must cut the client's connection while the client is still uploading: the kernel
        # then answers the unread upload with a reset, which can reach the client before it
        # read the head (a TCP race, not a proxy choice), so an empty read is the one other
        # outcome; no 502, ever, and most uploads see the 413.
        if head == b"" and body == b"":
            continue
        relayed += 1
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"\r\nContent-Length: 100\r\n" in head
        assert body == b"too large"
    assert relayed >= len(results) // 2, relayed


async def test_an_early_answer_over_tls_with_the_upload_still_going(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Over TLS the socket holds encrypted records: an early answer is relayed from what TLS
    decrypted (nothing is read from the socket itself)."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    done = asyncio.Event()
    up = RawUpstream(answers_401_unread(rst=False, done=done))
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start(make_proxy, f"https://127.0.0.1:{port}", tls={"ca_file": str(ca_file)})
        head, body = await upload(proxy.port, 32 * 2**20)
        assert head.startswith(b"HTTP/1.1 401 ") and body == b"denied"
    finally:
        done.set()
        server.close()
        for task in list(up.handlers):
            task.cancel()
        await asyncio.gather(*up.handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize("close_delimited", [False, True])
async def test_a_request_body_over_the_limit_after_an_early_answer_cuts_it_as_the_clients_fault(
    make_proxy: MakeProxy, close_delimited: bool
) -> None:
    async with raw_upstream(answers_at_once_and_echoes(close_delimited=close_delimited)) as up:
        proxy = await make_proxy({"up": {"targets": [up.origin]}}, ROUTE, max_request_body="1KiB")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"258\r\n" + b"a" * 600 + b"\r\n"
            )
            await writer.drain()
            out = b""
            async with asyncio.timeout(5):
                out += await reader.readuntil(b"got " + b"a" * 600 + b"\n")
                writer.write(b"258\r\n" + b"b" * 600 + b"\r\n")  # past max_request_body
                await writer.drain()
                while chunk := await reader.read(2**16):
                    out += chunk
        finally:
            writer.close()
        (line,) = await proxy.until_logged()
        metrics = await exchange(
            proxy.server.admin_port or 0, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1.0
        )
    assert out.startswith(b"HTTP/1.1 200 ")
    assert not out.endswith(b"0\r\n\r\n")  # cut: never made to look complete
    assert line["outcome"] == "client_abort"
    errors = [
        line
        for line in metrics.data.decode().splitlines()
        if line.startswith("proxy_upstream_errors_total{")
    ]
    assert all(line.endswith(" 0.0") for line in errors), errors  # not the upstream's failure
