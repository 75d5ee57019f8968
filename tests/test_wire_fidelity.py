"""Wire fidelity (issue 12): no invented headers, header bytes as they came, early answers and
full duplex, WebSocket close frames.

Upstreams are raw ``asyncio`` servers that send exactly the bytes a test chooses (or real
servers where a behaviour is theirs); clients speak raw HTTP/1.1 where the bytes matter.
"""

from __future__ import annotations

import asyncio

import pytest

from .conftest import MakeProxy, Proxy
from .test_fault_injection import RawUpstream, raw_upstream, sends
from .test_hardening import assert_json_error, exchange, parse_answers

ROUTE = [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}]
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
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
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
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
    head = head_of(result.data)
    assert head.count(b"\r\nDate: ") == 1 and b"\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n" in head
    assert head.count(b"\r\nServer: ") == 1 and b"\r\nServer: origin/1\r\n" in head


async def test_a_chunked_body_without_content_type_gets_none(make_proxy: MakeProxy) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
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
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
    head = head_of(result.data)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"\r\nContent-Disposition: " + value + b"\r\n" in head
    assert result.data.endswith(b"\r\n\r\nok")


async def test_obs_text_in_the_reason_phrase_is_relayed_byte_for_byte(
    make_proxy: MakeProxy,
) -> None:
    data = b"HTTP/1.1 200 Tr\xe8s bien\r\nContent-Length: 2\r\n\r\nok"
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
    assert result.data.startswith(b"HTTP/1.1 200 Tr\xe8s bien\r\n"), result.data[:100]


@pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x0b", b"\x1f", b"\x7f", b"\x00", b"\r"])
async def test_a_control_byte_in_a_response_header_is_a_502(
    make_proxy: MakeProxy, byte: bytes
) -> None:
    data = b"HTTP/1.1 200 OK\r\nX-A: a" + byte + b"b\r\nContent-Length: 2\r\n\r\nok"
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
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
    make_proxy: MakeProxy, value: bytes
) -> None:
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


async def test_requests_latin1_header_reaches_the_upstream(make_proxy: MakeProxy) -> None:
    """``requests`` (via http.client) encodes header values as Latin-1."""
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
