"""The proxy a user writes first: aiohttp + uvloop, one ClientSession, no features.

    python benchmarks/naive_proxy.py --port 8001 --upstream http://127.0.0.1:9000

The benchmark baseline. With ``--transforms`` it also serves the M5 prefixes the naive way,
per chunk (so a match split across two chunks is missed, and a chunk that starts mid-line
gets tagged): each redact route of ``textgen.ROUTES`` (``/r1/``, ``/r10/``, ``/d1/`` ...)
re.sub of its patterns (compiled for bytes), ``/tag/`` line tagging.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textgen import REPLACEMENT, ROUTES, TAG

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
LINE_START = re.compile(rb"(?m)^")


def subber(patterns: list[re.Pattern[bytes]]) -> Callable[[bytes], bytes]:
    def sub(chunk: bytes) -> bytes:
        for p in patterns:
            chunk = p.sub(REPLACEMENT, chunk)
        return chunk

    return sub


MODES: dict[str, Callable[[bytes], bytes]] = {
    **{f"/{n}/": subber([re.compile(p.encode()) for p in r.patterns]) for n, r in ROUTES.items()},
    "/tag/": lambda chunk: LINE_START.sub(TAG, chunk),
}


def make_app(upstream: str, transforms: bool) -> web.Application:
    session: aiohttp.ClientSession | None = None

    async def handler(request: web.Request) -> web.StreamResponse:
        path, edit = request.raw_path, None
        if transforms:
            for prefix, fn in MODES.items():
                if path.startswith(prefix):
                    path, edit = path[len(prefix) - 1 :], fn
                    break
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        assert session is not None
        async with session.request(
            request.method,
            upstream + path,
            headers=headers,
            data=request.content if request.body_exists else None,
        ) as up:
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP and not (edit and k.lower() == "content-length"):
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(edit(chunk) if edit else chunk)
            await resp.write_eof()
            return resp

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        nonlocal session
        # limit=0: the default pool of 100 would cap the 1,000 idle streams of M4.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        yield
        await session.close()

    app = web.Application()
    app.cleanup_ctx.append(lifespan)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--upstream", default="http://127.0.0.1:9000")
    ap.add_argument("--transforms", action="store_true", help="serve /r1/ /r10/ /tag/ too")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = make_app(args.upstream.rstrip("/"), args.transforms)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
