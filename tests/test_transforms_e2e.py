"""redact and tag_lines through the running proxy: exact for any chunking, and prompt."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from aiohttp import web

from plugins.redact import redact_reference
from plugins.tag_lines import tag_lines_reference

from .conftest import MakeProxy, ProxyTo, origin, serve_one
from .support.common import paused_stream

PATTERNS = [r"(?i)password=\S+", r"sk-[A-Za-z0-9-]{8,}", r"abcd|ab", r"\bkey\b"]
TAG = "[{upstream}:{route} {n}] "
WORDS = [
    "hello",
    "wörld",
    "漢字",
    "😀",
    "password=hunter2",
    "sk-abcdef123456",
    "abc",
    "abcd",
    "key",
    "keys",
    " ",
    "\n",
    "\n",
    "é",
]


def body_of(rng: random.Random) -> bytes:
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(0, 120))).encode()


def split(data: bytes, rng: random.Random) -> list[bytes]:
    """Random cut points in the encoded bytes (multi-byte characters get split), empty parts too."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 12)))
    parts, last = [], 0
    for cut in cuts:
        parts.append(data[last:cut])
        last = cut
    parts.append(data[last:])
    return parts


def routes() -> list[dict[str, object]]:
    return [
        {
            "name": "both",
            "upstream": "up",
            "transforms": [
                {"redact": {"patterns": PATTERNS, "replacement": "[R]"}},
                {"tag_lines": {"tag": TAG}},
            ],
        }
    ]


async def test_output_equals_the_whole_body_reference_for_sampled_chunkings(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    bodies: dict[str, list[bytes]] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        for part in bodies[request.match_info["key"]]:
            await resp.write(part)
            await asyncio.sleep(0)
        return resp

    up = await serve_one(aiohttp_server, serve, "/{key}")
    proxy = await make_proxy({"up": [origin(up)]}, routes())
    rng = random.Random(20261126)
    async with aiohttp.ClientSession() as s:
        for i in range(40):
            body = body_of(rng)
            bodies[str(i)] = split(body, rng)
            expected = tag_lines_reference(
                redact_reference(body, PATTERNS, "[R]"), TAG, "both", "up"
            )
            async with s.get(proxy.url(f"/{i}")) as r:
                assert await r.read() == expected, (body, bodies[str(i)])


async def test_text_that_cannot_start_a_match_arrives_before_the_pause_ends(
    proxy_to: ProxyTo,
) -> None:
    release = asyncio.Event()

    # The upstream pauses until the client has the text.
    serve = paused_stream(
        b"nothing secret here, ",
        b"password=hunter2 done\n",
        release,
        headers={"Content-Type": "text/plain"},
    )

    routes = [
        {
            "name": "r",
            "upstream": "up",
            "transforms": [{"redact": {"patterns": [r"(?i)password=\S+"]}}],
        }
    ]
    proxy = await proxy_to(serve, routes=routes)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        got = b""
        async with asyncio.timeout(1):
            while b"here, " not in got:
                got += await r.content.readany()
        assert got == b"nothing secret here, "
        release.set()
        assert got + await r.content.read() == b"nothing secret here, [REDACTED] done\n"


async def test_a_partial_line_arrives_tagged_before_its_newline(proxy_to: ProxyTo) -> None:
    release = asyncio.Event()

    serve = paused_stream(
        b"first li", b"ne\nsecond\n", release, headers={"Content-Type": "text/plain"}
    )

    routes = [{"name": "r", "upstream": "up", "transforms": [{"tag_lines": {"tag": "#{n} "}}]}]
    proxy = await proxy_to(serve, routes=routes)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        got = b""
        async with asyncio.timeout(1):
            while got != b"#1 first li":
                got += await r.content.readany()
        release.set()
        assert got + await r.content.read() == b"#1 first line\n#2 second\n"
