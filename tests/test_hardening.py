"""Hostile clients (issue 7): framing, limits, header injection, open-proxy attempts.

Every test runs the real proxy on loopback in front of an upstream that records each request it
gets, and speaks to the proxy over a raw socket, so a test can say "the upstream saw nothing".
The helpers at the top (recording upstream, strict HTTP/1.x response reader, raw exchange) are
shared with ``test_fuzz.py`` and ``test_fault_injection.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from proxy.config.models import ConfigError, validate_data

from .conftest import MakeProxy, Proxy, proxy_config, raw_exchange
from .support.common import ROUTE

REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")

# -- a recording upstream ---------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    """An upstream that answers 200 ``upstream-ok`` and records every request it gets."""

    requests: list[Seen] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def record(request: web.Request) -> web.Response:
            body = await request.read()
            headers = [(k, v) for k, v in request.headers.items()]
            self.requests.append(Seen(request.method, request.raw_path, headers, body))
            self.got.set()
            return web.Response(text="upstream-ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return app


async def start_recorder(aiohttp_server: Any) -> Recorder:
    rec = Recorder()
    server = await aiohttp_server(rec.app())
    rec.port = server.port
    return rec


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Recorder:
    return await start_recorder(aiohttp_server)


@pytest.fixture
async def decoy(aiohttp_server: Any) -> Recorder:
    """A second server the client names in its request: it must never be reached."""
    return await start_recorder(aiohttp_server)


# -- raw HTTP/1.x on the client side ----------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2}) ([^\r\n]*)\r\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
NO_BODY = frozenset({204, 304})


class NotHttp(AssertionError):
    """What the proxy sent is not a valid HTTP/1.x response."""


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the body ended as its framing says (not cut by EOF)
    chunked: bool = False

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


def parse_answers(data: bytes, head_request: bool = False) -> list[Answer]:
    """Every response in ``data`` (what a connection delivered up to EOF), strictly.

    Raises :class:`NotHttp` when anything is not HTTP/1.x: a bad status line, a malformed header,
    bad chunk framing, or bytes left over after a response that was delimited. Only the last
    response may be incomplete (``complete=False``), cut by the end of ``data``.
    """
    answers: list[Answer] = []
    pos = 0
    while pos < len(data):
        answer, pos = _parse_one(data, pos, head_request)
        answers.append(answer)
        if not answer.complete:
            break
    return answers


def _parse_one(data: bytes, pos: int, head_request: bool) -> tuple[Answer, int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise NotHttp(f"an incomplete or unterminated response head: {data[pos : pos + 200]!r}")
    head = data[pos : end + 2]
    m = _STATUS_LINE.match(head)
    if m is None:
        raise NotHttp(f"not an HTTP/1.x status line: {head[:100]!r}")
    status = int(m.group(1))
    headers: list[tuple[str, str]] = []
    for line in head[m.end() :].split(b"\r\n")[:-1]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise NotHttp(f"a malformed header line: {line[:100]!r}")
        headers.append((name.decode(), value.strip(b" \t").decode("latin-1")))
    answer = Answer(status, m.group(2).decode("latin-1"), headers, b"", True)
    pos = end + 4
    if status < 200 or status in NO_BODY or head_request:
        return answer, pos
    te = answer.header("Transfer-Encoding")
    cl = answer.header("Content-Length")
    if te is not None:
        if te.lower() != "chunked" or cl is not None:
            raise NotHttp(f"bad framing: Transfer-Encoding {te!r}, Content-Length {cl!r}")
        answer.chunked = True
        return _parse_chunked(data, pos, answer)
    if cl is not None:
        if not cl.isdigit() or len(answer.headers_named("Content-Length")) != 1:
            raise NotHttp(f"a bad Content-Length: {answer.headers_named('Content-Length')}")
        n = int(cl)
        answer.body = data[pos : pos + n]
        answer.complete = len(answer.body) == n
        return answer, pos + len(answer.body)
    answer.body = data[pos:]  # delimited by the end of the connection
    return answer, len(data)


def _parse_chunked(data: bytes, pos: int, answer: Answer) -> tuple[Answer, int]:
    body = b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            answer.body, answer.complete = body, False
            if not re.fullmatch(rb"[0-9a-fA-F]*\r?", data[pos:]):
                raise NotHttp(f"a bad chunk size line: {data[pos : pos + 50]!r}")
            return answer, len(data)
        size_line = data[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9a-fA-F]+", size_line):
            raise NotHttp(f"a bad chunk size line: {data[pos:eol][:50]!r}")
        size = int(size_line, 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                answer.body, answer.complete = body, False
                return answer, len(data)
            answer.body = body
            return answer, end + 4
        chunk = data[pos : pos + size]
        body += chunk
        if len(chunk) < size or len(data) < pos + size + 2:
            answer.body, answer.complete = body, False
            return answer, len(data)
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise NotHttp("chunk data not followed by CRLF")
        pos += size + 2


@dataclass
class Exchange:
    data: bytes
    closed: bool  # the proxy closed the connection (FIN or RST) within the time allowed

    def answers(self, head_request: bool = False) -> list[Answer]:
        return parse_answers(self.data, head_request)

    def only(self) -> Answer:
        answers = [a for a in self.answers() if a.status >= 200 or a.status == 101]
        assert len(answers) == 1, f"expected one response, got {self.data[:500]!r}"
        return answers[0]


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> Exchange:
    """Send raw bytes; read until the proxy closes, or ``timeout`` passes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    closed = False
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    out += chunk
            closed = True
        except ConnectionError:
            closed = True
        except TimeoutError:
            pass
        return Exchange(out, closed)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> Answer:
    """One complete response from a kept-alive connection (Content-Length framed)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        answer = parse_answers(head, head_request=True)[0]
        length = int(answer.header("Content-Length") or 0)
        answer.body = await reader.readexactly(length)
    return answer


def assert_json_error(answer: Answer, *statuses: int) -> dict[str, Any]:
    """The product's JSON error: status, content type, body shape, request id in both places."""
    assert answer.status in statuses, (answer.status, answer.body[:300])
    assert (answer.header("Content-Type") or "").startswith("application/json"), answer.headers
    body = answer.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body
    assert REQUEST_ID.fullmatch(body["request_id"]), body
    assert answer.header("X-Request-ID") == body["request_id"]
    return body


async def start(make_proxy: MakeProxy, up: Recorder, routes: Any = None, **server: Any) -> Proxy:
    return await make_proxy({"up": [up.origin]}, routes or ROUTE, **server)


async def exchange_through(
    make_proxy: MakeProxy, upstream: Recorder, data: bytes, **server: Any
) -> Exchange:
    """``exchange`` of ``data`` with a new proxy (with ``server`` settings) to ``upstream``."""
    return await exchange((await start(make_proxy, upstream, **server)).port, data)


async def assert_refused(
    make_proxy: MakeProxy, upstream: Recorder, data: bytes, *statuses: int, **server: Any
) -> dict[str, Any]:
    """``data`` sent to a proxy (with ``server`` settings) gets one JSON error with one of
    ``statuses``, the connection closed, and nothing reaches the upstream. Its body."""
    result = await exchange_through(make_proxy, upstream, data, **server)
    assert result.closed
    body = assert_json_error(result.only(), *statuses)
    assert upstream.requests == []
    return body


async def assert_passes(
    make_proxy: MakeProxy, upstream: Recorder, data: bytes, **server: Any
) -> None:
    """``data`` sent to a proxy (with ``server`` settings) gets a 200 from the upstream."""
    proxy = await start(make_proxy, upstream, **server)
    assert (await exchange(proxy.port, data)).only().status == 200
    assert len(upstream.requests) == 1


# -- 1. framing -------------------------------------------------------------------------------

H = b"Host: x\r\n"
FRAMING: dict[str, bytes] = {
    "content-length-and-transfer-encoding": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "transfer-encoding-and-content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "two-different-content-lengths": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "two-equal-content-lengths": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "content-length-list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello",
    "content-length-signed": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello",
    "content-length-negative": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello",
    "obsolete-line-folding": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n folded\r\n\r\n",
    "obsolete-line-folding-tab": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n\tfolded\r\n\r\n",
    "chunk-size-zz": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-size-negative": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-size-overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"10000000000000005\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-size-hex-prefix": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-data-longer-than-size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n"
    ),
    "chunk-bare-lf": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"
    ),
    "transfer-encoding-chunked-not-last": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding-unknown": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding-twice": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding-in-http-1.0": (
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bare-lf-line-endings": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare-lf-after-a-header": b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-cr-after-a-header": b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "nul-in-a-header-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "cr-in-a-header-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n",
    "del-in-a-header-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n",
    "space-before-the-colon": b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n",
    "tab-before-the-colon": b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n",
    "header-without-colon": b"GET / HTTP/1.1\r\n" + H + b"X-A\r\n\r\n",
    "header-without-name": b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n",
    "8-bit-header-name": b"GET / HTTP/1.1\r\n" + H + b"X\xffA: b\r\n\r\n",
    "whitespace-before-the-first-header": b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    "invalid-method-token": b"G(T / HTTP/1.1\r\n" + H + b"\r\n",
    "nul-in-the-method": b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n",
    "control-character-in-the-path": b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n",
    "space-in-the-path": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    "http-0.9-request-line": b"GET /\r\n\r\n",
    "garbage-request-line": b"hello world\r\n\r\n",
    "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",
    "unknown-http-version": b"GET / HTTP/1.9\r\n" + H + b"\r\n",
    "http-1.1-without-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-host-headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # obs-text in a value (b"X-A: a\xffb") is legal and relayed: tests/test_wire_fidelity.py
    "control-byte-in-a-header-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n",
}
# Refused with another 4xx/5xx that says more than 400 does.
FRAMING_STATUS = {
    "transfer-encoding-unknown": (400, 501),
    "transfer-encoding-chunked-not-last": (400, 501),
    "unknown-http-version": (400, 505),  # the C parser refuses it; the Python one leaves it to us
}


@pytest.mark.parametrize("name", list(FRAMING))
async def test_bad_framing_is_refused_before_anything_reaches_the_upstream(
    make_proxy: MakeProxy, upstream: Recorder, name: str
) -> None:
    result = await exchange_through(make_proxy, upstream, FRAMING[name])
    assert result.closed, "the connection must be closed after a framing error"
    answers = result.answers()
    assert len(answers) == 1, result.data[:500]  # one refusal, no second (smuggled) answer
    body = assert_json_error(answers[0], *FRAMING_STATUS.get(name, (400,)))
    assert body["error"] in ("bad_request", "not_implemented", "http_version_not_supported")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("name", "status"),
    [("http-2.0-on-http-1", 505), ("transfer-encoding-gzip-then-chunked", 501)],
)
async def test_what_the_parser_accepts_but_the_proxy_cannot_relay_is_refused(
    make_proxy: MakeProxy, upstream: Recorder, name: str, status: int
) -> None:
    data = {
        "http-2.0-on-http-1": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        # The proxy re-frames bodies: the gzip coding would go upstream as if it were identity.
        "transfer-encoding-gzip-then-chunked": (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        ),
    }[name]
    await assert_refused(make_proxy, upstream, data, status)


async def test_the_same_harness_sees_a_valid_request_reach_the_upstream(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    """The control for the framing tests: a well-formed request gets through."""
    data = (
        b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    answer = (await exchange_through(make_proxy, upstream, data)).only()
    assert (answer.status, answer.body) == (200, b"upstream-ok")
    assert [(r.method, r.raw_path, r.body) for r in upstream.requests] == [
        ("POST", "/ok", b"hello")
    ]


async def test_a_request_smuggled_behind_a_refused_one_is_never_served(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    data = (
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    result = await exchange_through(make_proxy, upstream, data)
    assert result.closed
    *served, refused = result.answers()
    assert_json_error(refused, 400)
    # aiohttp drops the messages parsed in the same read as the error: /first may go unserved.
    assert [(a.status, a.body) for a in served] in ([], [(200, b"upstream-ok")])
    assert [r.raw_path for r in upstream.requests] == ["/first"] * len(served)


# -- 2. limits --------------------------------------------------------------------------------


def _headers(n: int, size: int = 1) -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(n))


async def test_one_header_over_max_header_size_is_431(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    body = await assert_refused(make_proxy, upstream, data, 431, max_header_size="2KiB")
    assert body["error"] == "request_header_too_large"


async def test_many_headers_adding_up_past_max_header_size_are_431(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + _headers(10, 300) + b"\r\n"
    await assert_refused(make_proxy, upstream, data, 431, max_header_size="2KiB")


async def test_a_head_just_under_max_header_size_passes(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + _headers(5, 300) + b"\r\n"
    await assert_passes(make_proxy, upstream, data, max_header_size="2KiB")


@pytest.mark.parametrize("count", [21, 22, 60])
async def test_more_headers_than_max_header_count_are_431(
    make_proxy: MakeProxy, upstream: Recorder, count: int
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + _headers(count - 1) + b"\r\n"  # + Host
    await assert_refused(make_proxy, upstream, data, 431, max_header_count=20)


async def test_exactly_max_header_count_headers_pass(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + _headers(18) + b"\r\n"
    await assert_passes(make_proxy, upstream, data, max_header_count=20)


@pytest.mark.parametrize("length", [101, 1000, 20000])
async def test_a_url_over_max_url_length_is_refused(
    make_proxy: MakeProxy, upstream: Recorder, length: int
) -> None:
    data = b"GET /" + b"a" * (length - 1) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    await assert_refused(make_proxy, upstream, data, 400, 414, max_url_length=100)


async def test_a_url_of_exactly_max_url_length_passes(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    proxy = await start(make_proxy, upstream, max_url_length=100)
    path = "/" + "a" * 91 + "?q=12345"
    assert len(path) == 100
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert (await exchange(proxy.port, data)).only().status == 200
    assert [r.raw_path for r in upstream.requests] == [path]


@pytest.mark.parametrize(
    "limit", [{"max_url_length": 2**64}, {"max_header_size": 2**64}, {"max_header_count": 2**64}]
)
async def test_a_config_that_validates_serves_requests(
    make_proxy: MakeProxy, upstream: Recorder, limit: dict[str, int]
) -> None:
    try:
        validate_data(proxy_config({"up": [upstream.origin]}, ROUTE, **limit))
    except ConfigError:
        return  # refused at load: fine
    proxy = await start(make_proxy, upstream, **limit)
    data = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert (await exchange(proxy.port, data)).only().status == 200


# -- header read timeout ----------------------------------------------------------------------


async def _connect(
    make_proxy: MakeProxy, upstream: Recorder, **server: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a new proxy (with ``server`` settings) to ``upstream``."""
    proxy = await start(make_proxy, upstream, **server)
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _drip_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, pace: float
) -> tuple[bytes, bool]:
    """Send ``data`` a byte per ``pace`` seconds until the proxy closes; (answer, closed)."""
    for byte in data:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), pace)  # pacing, and EOF check
        except TimeoutError:
            continue
        except ConnectionError:
            return b"", True
        if answer:
            return answer, False
        return b"", True
    return b"", False


async def test_a_head_sent_a_byte_at_a_time_is_dropped_after_header_timeout(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    reader, writer = await _connect(make_proxy, upstream, header_timeout="500ms")
    began = time.monotonic()
    try:
        # 160 bytes at 40 ms each would take 6.4 s: far past the timeout, still bounded.
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 128
        answer, closed = await _drip_until_closed(reader, writer, head, 0.04)
        elapsed = time.monotonic() - began
    finally:
        await _close(writer)
    assert closed, f"still open after the whole slow head (answer {answer!r})"
    assert 0.45 <= elapsed < 3.0, elapsed
    assert upstream.requests == []


async def test_a_silent_new_connection_is_dropped_after_header_timeout(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    reader, writer = await _connect(
        make_proxy, upstream, header_timeout="500ms", keepalive_timeout="60s"
    )
    began = time.monotonic()
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        elapsed = time.monotonic() - began
    finally:
        await _close(writer)
    assert 0.45 <= elapsed < 3.0, elapsed


@contextlib.asynccontextmanager
async def _kept_alive(
    make_proxy: MakeProxy, upstream: Recorder
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to a new proxy (header_timeout 300 ms, keepalive_timeout 30 s) on which
    ``GET /1`` was answered, kept alive for the next head; closed at the end."""
    reader, writer = await _connect(
        make_proxy, upstream, header_timeout="300ms", keepalive_timeout="30s"
    )
    try:
        writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader)).status == 200
        yield reader, writer
    finally:
        await _close(writer)


async def test_an_idle_kept_alive_connection_outlives_header_timeout(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    async with _kept_alive(make_proxy, upstream) as (reader, writer):
        # Idle for three header timeouts: keepalive_timeout governs, the connection stays.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.9)
        writer.write(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader)).status == 200
    assert [r.raw_path for r in upstream.requests] == ["/1", "/2"]


async def test_a_later_head_on_a_kept_alive_connection_is_timed_too(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    async with _kept_alive(make_proxy, upstream) as (reader, writer):
        began = time.monotonic()
        answer, closed = await _drip_until_closed(
            reader, writer, b"GET /2 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 0.04
        )
        elapsed = time.monotonic() - began
    assert closed, answer
    assert 0.25 <= elapsed < 3.0, elapsed
    assert [r.raw_path for r in upstream.requests] == ["/1"]


async def test_a_slow_request_body_is_not_cut_by_header_timeout(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    reader, writer = await _connect(make_proxy, upstream, header_timeout="300ms")
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        # Nine bytes over about 0.9 s, three header timeouts: no answer, no close.
        answer, closed = await _drip_until_closed(reader, writer, b"012345678", 0.1)
        assert (answer, closed) == (b"", False)
        writer.write(b"9")
        assert (await read_answer(reader)).status == 200
    finally:
        await _close(writer)
    assert [r.body for r in upstream.requests] == [b"0123456789"]


# -- 3. injection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"has space",
        b"has\ttab",
        b"caf\xc3\xa9",  # valid UTF-8, not visible ASCII
        b"x" * 201,
        b"",
        b'quote"and\\back',  # visible ASCII: safe, so it is echoed as it is
    ],
)
async def test_an_unsafe_client_request_id_is_replaced_on_both_sides(
    make_proxy: MakeProxy, upstream: Recorder, value: bytes
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\nConnection: close\r\n\r\n"
    answer = (await exchange_through(make_proxy, upstream, data)).only()
    assert answer.status == 200
    (seen,) = upstream.requests
    sent_up = seen.header("X-Request-ID")
    assert len(sent_up) == 1
    assert answer.headers_named("X-Request-ID") == sent_up
    assert REQUEST_ID.fullmatch(sent_up[0])
    client_value = value.decode("utf-8")
    if REQUEST_ID.fullmatch(client_value):
        assert sent_up[0] == client_value  # a safe id is echoed
    else:
        assert sent_up[0] != client_value
        assert not client_value or client_value not in sent_up[0]


@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\x00b", b"a\x0bb", b"a\x1bb"])
async def test_a_request_id_with_control_characters_never_reaches_a_header(
    make_proxy: MakeProxy, upstream: Recorder, value: bytes
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\nConnection: close\r\n\r\n"
    result = await exchange_through(make_proxy, upstream, data)
    answer = result.only()
    if upstream.requests:  # let through by the parser: then the proxy must replace it
        (seen,) = upstream.requests
        (sent_up,) = seen.header("X-Request-ID")
        assert REQUEST_ID.fullmatch(sent_up)
        assert answer.headers_named("X-Request-ID") == [sent_up]
    else:
        assert_json_error(answer, 400)
    assert value not in result.data


async def test_repeated_request_ids_become_one(make_proxy: MakeProxy, upstream: Recorder) -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: first\r\nX-Request-ID: second\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = (await exchange_through(make_proxy, upstream, data)).only()
    (seen,) = upstream.requests
    assert len(seen.header("X-Request-ID")) == 1
    assert answer.headers_named("X-Request-ID") == seen.header("X-Request-ID")


async def test_the_proxys_own_errors_carry_the_replaced_request_id(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    routes = [{"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "up"}]
    proxy = await start(make_proxy, upstream, routes)
    data = b"GET /other HTTP/1.1\r\nHost: x\r\nX-Request-ID: not ok\r\nConnection: close\r\n\r\n"
    body = assert_json_error((await exchange(proxy.port, data)).only(), 404)
    assert body["request_id"] != "not ok"


@pytest.mark.parametrize("tag", ["[x]\r\n", "[x]\n", "a\rb", "\n{upstream}"])
def test_a_tag_lines_tag_with_cr_or_lf_is_refused_at_load(tag: str) -> None:
    pytest.importorskip("plugins.tag_lines")
    routes = [{"name": "t", "upstream": "up", "transforms": [{"tag_lines": {"tag": tag}}]}]
    with pytest.raises(ConfigError) as info:
        validate_data(proxy_config({"up": ["http://127.0.0.1:9"]}, routes))
    assert any(p.startswith("routes[0].transforms[0]") for p in info.value.problems), info.value


# -- 4. open proxy ----------------------------------------------------------------------------


async def test_an_absolute_form_target_never_chooses_the_destination(
    make_proxy: MakeProxy, upstream: Recorder, decoy: Recorder
) -> None:
    proxy = await start(make_proxy, upstream)
    for target in (decoy.origin + "/", decoy.origin + "/x?y", f"https://127.0.0.1:{decoy.port}/"):
        data = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{decoy.port}\r\n\r\n".encode()
        result = await exchange(proxy.port, data)
        assert result.closed
        assert_json_error(result.only(), 400)
    assert decoy.requests == [] and upstream.requests == []


async def test_connect_is_refused(
    make_proxy: MakeProxy, upstream: Recorder, decoy: Recorder
) -> None:
    authority = f"127.0.0.1:{decoy.port}"
    data = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    result = await exchange_through(make_proxy, upstream, data.encode())
    assert result.closed
    assert_json_error(result.only(), 400)
    assert decoy.requests == [] and upstream.requests == []


async def test_asterisk_form_is_refused(make_proxy: MakeProxy, upstream: Recorder) -> None:
    result = await exchange_through(make_proxy, upstream, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_json_error(result.only(), 400)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{decoy}", "localhost:{decoy}", "user@127.0.0.1:{decoy}", "[::1]:{decoy}"],
)
async def test_the_host_header_never_chooses_the_destination(
    make_proxy: MakeProxy, upstream: Recorder, decoy: Recorder, host: str
) -> None:
    client_host = host.format(decoy=decoy.port)
    data = f"GET /p HTTP/1.1\r\nHost: {client_host}\r\nConnection: close\r\n\r\n".encode()
    answer = (await exchange_through(make_proxy, upstream, data)).only()
    assert (answer.status, answer.body) == (200, b"upstream-ok")
    assert decoy.requests == []
    (seen,) = upstream.requests
    assert seen.header("Host") == [f"127.0.0.1:{upstream.port}"]  # the target's, not the client's
    assert seen.header("X-Forwarded-Host") == [client_host]


async def test_a_network_path_target_goes_to_the_configured_upstream(
    make_proxy: MakeProxy, upstream: Recorder, decoy: Recorder
) -> None:
    target = f"//127.0.0.1:{decoy.port}/x"
    data = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert (await exchange_through(make_proxy, upstream, data)).only().status == 200
    assert decoy.requests == []
    assert [r.raw_path for r in upstream.requests] == [target]


async def test_a_host_route_does_not_match_a_host_naming_elsewhere(
    make_proxy: MakeProxy, upstream: Recorder, decoy: Recorder
) -> None:
    routes = [{"name": "api", "match": {"host": "api.example"}, "upstream": "up"}]
    proxy = await start(make_proxy, upstream, routes)
    for host in (f"127.0.0.1:{decoy.port}", "api.example.evil", "evil/api.example"):
        data = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        answer = (await exchange(proxy.port, data)).only()
        assert answer.status in (400, 404), (host, answer.status)
    data = b"GET / HTTP/1.1\r\nHost: API.example:8080\r\nConnection: close\r\n\r\n"
    assert (await exchange(proxy.port, data)).only().status == 200
    assert decoy.requests == []
    assert len(upstream.requests) == 1


async def test_connections_over_max_connections_get_503(
    make_proxy: MakeProxy, upstream: Recorder
) -> None:
    proxy = await make_proxy(
        {"up": [f"http://127.0.0.1:{upstream.port}"]},
        [{"name": "r", "upstream": "up"}],
        max_connections=2,
    )
    held = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
    try:
        data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 503")
        assert b'"error": "too_many_connections"' in data
        assert upstream.requests == []
    finally:
        for _, writer in held:
            writer.close()
            await writer.wait_closed()
    # Once the held connections are gone, requests are served again (bounded retries: the
    # server notices the closes asynchronously).
    for _ in range(50):
        data = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        if data.startswith(b"HTTP/1.1 200"):
            break
        await asyncio.sleep(0.02)
    assert data.startswith(b"HTTP/1.1 200")
