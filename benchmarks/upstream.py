"""The benchmark upstream: a fast aiohttp + uvloop origin server.

    python benchmarks/upstream.py --port 9000

- ``/1k``                       1 KiB body, Content-Length
- ``/big?size=N``               N bytes streamed in 64 KiB chunks, Content-Length
- ``/ticks?n=50&interval=0.02`` chunked; each chunk is ``time.time_ns()`` as text + newline,
                                written right before it is sent
- ``/idle?hold=30``             headers + one chunk, then silence until ``hold`` seconds pass or
                                ``/release`` is called (then the body ends)
- ``/release``                  ends every ``/idle`` stream now
- ``/text?size=N&corpus=C``     N bytes of log lines with planted secrets, text/plain, 64 KiB
                                chunks; ``C`` one of ``textgen.CORPORA`` (default ``sparse``)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contextlib

from textgen import CORPORA, make_text

CHUNK = 64 * 1024
MAX_SIZE = 8 * 1024**3
ONE_K = b"x" * 1023 + b"\n"
PATTERN = (b"0123456789abcdef" * (CHUNK // 16))[:CHUNK]
MAX_HOLD = 300.0


def _int_arg(request: web.Request, name: str, default: int, hi: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"bad {name}") from e
    if not 0 <= value <= hi:
        raise web.HTTPBadRequest(text=f"{name} out of range")
    return value


routes = web.RouteTableDef()


@routes.get("/1k")
async def one_k(request: web.Request) -> web.Response:
    return web.Response(body=ONE_K, content_type="application/octet-stream")


async def _send(
    request: web.Request, body: bytes | None, size: int, ctype: str
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    resp.content_length = size
    await resp.prepare(request)
    view = memoryview(body) if body is not None else None
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        if view is not None:
            await resp.write(view[sent : sent + n])
        else:
            await resp.write(PATTERN if n == CHUNK else PATTERN[:n])
        sent += n
    await resp.write_eof()
    return resp


@routes.get("/big")
async def big(request: web.Request) -> web.StreamResponse:
    size = _int_arg(request, "size", 64 * 1024**2, MAX_SIZE)
    return await _send(request, None, size, "application/octet-stream")


@routes.get("/text")
async def text(request: web.Request) -> web.StreamResponse:
    size = _int_arg(request, "size", 64 * 1024**2, 1024**3)
    corpus = request.query.get("corpus", "sparse")
    if corpus not in CORPORA:
        raise web.HTTPBadRequest(text=f"no corpus {corpus!r}")
    return await _send(request, make_text(size, corpus), size, "text/plain; charset=utf-8")


@routes.get("/ticks")
async def ticks(request: web.Request) -> web.StreamResponse:
    n = _int_arg(request, "n", 50, 100_000)
    try:
        interval = float(request.query.get("interval", "0.02"))
    except ValueError as e:
        raise web.HTTPBadRequest(text="bad interval") from e
    interval = min(max(interval, 0.0), 10.0)
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    start = time.monotonic()
    for i in range(n):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await resp.write(b"%d\n" % time.time_ns())
    await resp.write_eof()
    return resp


@routes.get("/idle")
async def idle(request: web.Request) -> web.StreamResponse:
    try:
        hold = min(float(request.query.get("hold", "30")), MAX_HOLD)
    except ValueError as e:
        raise web.HTTPBadRequest(text="bad hold") from e
    release: asyncio.Event = request.app["release"]
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(b"first\n")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(release.wait(), hold)
    await resp.write(b"bye\n")
    await resp.write_eof()
    return resp


@routes.get("/release")
async def release(request: web.Request) -> web.Response:
    request.app["release"].set()
    request.app["release"] = asyncio.Event()
    return web.Response(text="released\n")


def make_app() -> web.Application:
    app = web.Application()
    app["release"] = asyncio.Event()
    app.add_routes(routes)
    return app


async def serve_app(
    app: web.Application, host: str, port: int, lifetime: float, name: str = "upstream"
) -> None:
    """Serve ``app`` on loopback for at most ``lifetime`` seconds (the benchmark upstreams)."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"{name} listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.sleep(lifetime)  # never outlives its harness by much
    finally:
        await runner.cleanup()


async def serve(host: str, port: int, lifetime: float) -> None:
    await serve_app(make_app(), host, port, lifetime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--lifetime", type=float, default=4 * 3600, help="exit after this many s")
    args = ap.parse_args()
    for corpus in CORPORA:  # warm the corpus cache before the first request
        make_text(64 * 1024**2, corpus)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            print("uvloop missing: using asyncio's loop", file=sys.stderr)
            asyncio.run(serve(args.host, args.port, args.lifetime))
        else:
            uvloop.run(serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
