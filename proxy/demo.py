"""The bundled demo upstream: a slow streaming source, so the proxy shows something at once.

``/logs``                 a log tail: one line every ``interval``, some with a fake secret (endless)
``/events``               the same as Server-Sent Events
``/v1/chat/completions``  an OpenAI-compatible chat model, ``demo``, that streams (``"stream":
                          true``) or returns (``false``) one answer holding fake secrets
``/v1/models``            the list of models: ``demo``
``/``                     a short text saying what to try
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

LINES = (
    "GET /api/orders 200 12ms",
    "user alice logged in password=hunter2",
    "cache warm: 1532 keys",
    'POST /api/login {"user": "bob", "token": "sk-demo-4f9a8b7c6d5e"}',
    "GET /api/orders/17 404 3ms",
    "retrying payment with api_key=AKIAFAKEKEY123456789",
    "worker 3 heartbeat",
)

MODEL = "demo"
SECRETS = ("sk-demo-7Hq2Lx9Vb4Nc8Rt5Wz1K", "AKIAFAKEDEMO7EXAMPLE", "password=hunter2")
"""The fake secrets in the model's answer, as they appear in it."""
ANSWER = (
    "Hello from the streamproxy demo model! Here are three fake secrets a careless assistant "
    f"might leak: the API key {SECRETS[0]}, the AWS access key id {SECRETS[1]} and "
    f"{SECRETS[2]} for the database. Through the proxy's llm route none of them reaches you, "
    "however the tokens split them."
)
MAX_CHOICES = 4
_SIZES = (3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 2, 4, 6, 2, 6, 4, 3, 3)  # characters per delta, cycled


def answer(index: int = 0, n: int = 1) -> str:
    """The whole text of choice ``index`` of ``n``."""
    return ANSWER if n == 1 else f"Choice {index + 1} of {n}. {ANSWER}"


def deltas(index: int = 0, n: int = 1) -> list[str]:
    """``answer(index, n)`` cut into the content deltas it is streamed as (1 to 6 characters;
    each choice is cut differently)."""
    text = answer(index, n)
    sizes = itertools.islice(itertools.cycle(_SIZES), 7 * index, None)
    out: list[str] = []
    at = 0
    while at < len(text):
        size = next(sizes)
        out.append(text[at : at + size])
        at += size
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else _dumps(payload)
    return f"data: {data}\n\n".encode()


def _error(message: str, param: str | None = None, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return web.json_response(body, status=status)


def _usage(messages: list[Any], completion_tokens: int) -> dict[str, int]:
    prompt_tokens = max(1, len(json.dumps(messages)) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _rounds(n: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Every choice's deltas, interleaved: one (choice index, delta) per choice still writing,
    per round. A choice's deltas are the role, the content, then an empty delta (the chunk that
    carries ``finish_reason: stop``)."""
    role: dict[str, Any] = {"role": "assistant", "content": ""}
    streams = [[role, *({"content": d} for d in deltas(i, n)), {}] for i in range(n)]
    for step in range(max(map(len, streams))):
        yield [(i, stream[step]) for i, stream in enumerate(streams) if step < len(stream)]


def demo_app(
    interval: float, limit: int | None = None, token_interval: float | None = None
) -> web.Application:
    """The demo upstream. ``interval`` is the time between log lines and events;
    ``token_interval`` the time between a chat answer's stream events (default ``interval / 10``,
    at most 50 ms, so that the answer reads as live; 0 streams it as fast as it can)."""
    pause = min(interval / 10, 0.05) if token_interval is None else token_interval
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(_: web.Request) -> web.Response:
        return web.Response(
            text="demo upstream: try /logs (a log tail), /events (server-sent events) or\n"
            "POST /v1/chat/completions (an OpenAI-compatible model named 'demo')\n"
        )

    @routes.get("/logs")
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

    @routes.get("/events")
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

    def model_entry() -> dict[str, Any]:
        return {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "streamproxy"}

    @routes.get("/v1/models")
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [model_entry()]})

    @routes.get("/v1/models/{name}")
    async def model(request: web.Request) -> web.Response:
        if request.match_info["name"] != MODEL:
            return _error(f"The model '{request.match_info['name']}' does not exist", status=404)
        return web.json_response(model_entry())

    @routes.post("/v1/chat/completions")
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error("The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error("The request body must be a JSON object.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error("'messages' must be a non-empty array.", "messages")
        n = 1 if body.get("n") is None else body["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
            return _error(f"'n' must be an integer from 1 to {MAX_CHOICES}.", "n")
        stream = bool(body.get("stream"))
        head = {
            "id": f"chatcmpl-demo{uuid.uuid4().hex[:20]}",
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "system_fingerprint": "fp_demo",
        }
        if not stream:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": answer(i, n), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ]
            usage = _usage(messages, sum(len(deltas(i, n)) for i in range(n)))
            return web.json_response({**head, "choices": choices, "usage": usage}, dumps=_dumps)
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        sse = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        resp = web.StreamResponse(headers=sse)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client went away: nothing to do
            for k, round_ in enumerate(_rounds(n)):
                if k and pause:
                    await asyncio.sleep(pause)  # one delta per choice per pause, as a model writes
                for i, delta in round_:
                    choice = {
                        "index": i,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": None if delta else "stop",
                    }
                    chunk = {**head, "choices": [choice]}
                    if include_usage:
                        chunk["usage"] = None
                    await resp.write(_sse(chunk))
            if include_usage:
                usage = _usage(messages, sum(len(deltas(i, n)) for i in range(n)))
                await resp.write(_sse({**head, "choices": [], "usage": usage}))
            await resp.write(_sse("[DONE]"))
            await resp.write_eof()
        return resp

    app = web.Application()
    app.add_routes(routes)
    return app
