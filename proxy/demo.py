"""The bundled demo upstream: a slow streaming source, so the proxy shows something at once.

``/logs``   a log tail: one line every ``interval``, some holding a fake secret (endless)
``/events`` the same as Server-Sent Events
``/``       a short text saying what to try
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time

from aiohttp import web

LINES = (
    "GET /api/orders 200 12ms",
    "user alice logged in password=hunter2",
    "cache warm: 1532 keys",
    'POST /api/login {"user": "bob", "token": "sk-demo-4f9a8b7c6d5e"}',
    "GET /api/orders/17 404 3ms",
    "retrying payment with api_key=AKIAFAKEKEY1234567890",
    "worker 3 heartbeat",
)


def demo_app(interval: float, limit: int | None = None) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return web.Response(
            text="demo upstream: try /logs (a log tail) or /events (server-sent events)\n"
        )

    async def logs(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        count = int(request.query.get("n", limit or 0)) or None
        with contextlib.suppress(ConnectionError):  # the reader went away: nothing to do
            for i in itertools.islice(itertools.count(), count):
                stamp = time.strftime("%H:%M:%S")
                await resp.write(f"{stamp} {LINES[i % len(LINES)]}\n".encode())
                await asyncio.sleep(interval)
            await resp.write_eof()
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        count = int(request.query.get("n", limit or 0)) or None
        with contextlib.suppress(ConnectionError):
            for i in itertools.islice(itertools.count(), count):
                data = json.dumps({"seq": i, "line": LINES[i % len(LINES)]})
                await resp.write(f"id: {i}\ndata: {data}\n\n".encode())
                await asyncio.sleep(interval)
            await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/logs", logs)
    app.router.add_get("/events", events)
    return app
