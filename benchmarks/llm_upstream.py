"""The M6 upstream: an OpenAI-format Chat Completions server that streams paced answers.

    python benchmarks/llm_upstream.py --port 9100 [--rate 100] [--events 1000]

- ``POST /v1/chat/completions`` with ``"stream": true``: Server-Sent Events, one
  ``data: {chat.completion.chunk}`` event per delta (1-12 characters, seeded random), ``--rate``
  events per second per stream (each one scheduled against a monotonic clock from the stream's
  start, so the pacing does not drift), then a chunk with ``finish_reason: "stop"`` (and a usage
  chunk when ``stream_options.include_usage`` asks for one) and ``data: [DONE]``. Without
  ``stream`` the whole answer comes as one ``chat.completion`` object, unpaced.
- ``GET /v1/models``: the one model, whatever it is called.

The last user message picks the answer: ``seed=N`` and ``events=N`` in it (the harness sends
``m6 seed=17 events=1000``); without them the seed is 0 and the count is ``--events``. The
answer is plain text with planted secrets (OpenAI keys, AWS key ids, ``password=...``,
e-mail addresses, a card number, several of each) and some non-ASCII text; every secret is
longer than a delta, so each is split across events. ``answer(seed, events)`` builds the very
same deltas in the harness, which checks what came back.

Each chunk's ``system_fingerprint`` is ``fp_<event index>_<time.time_ns() at send>``: the
OpenAI SDK keeps that field and ignores its value, proxies relay it, and the client subtracts
it from the chunk's arrival time to get the per-event latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import string
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from upstream import serve_app  # the benchmark upstreams share one server loop

MAX_EVENTS = 100_000
MAX_HOLD = 600.0  # no stream lasts longer than this, whatever it asks for
REPLACEMENT = "[REDACTED]"

# The five patterns of M6, in the order every redacting peer applies them.
PATTERNS: list[str] = [
    r"sk-[A-Za-z0-9]{20,}",
    r"AKIA[A-Z0-9]{16}",
    r"(?i)password=\S+",
    r"[\w.+-]+@[\w-]+\.[\w.]+",
    r"\b(?:\d[ -]?){13,16}\b",
]

_SENTENCE = (
    "the stream of tokens arrives one small piece at a time and the client joins them into "
    "an answer while the proxy between them must rewrite what it sees without waiting for "
    "the whole body so every delta is short and a secret is always cut across several events "
    "which is exactly what makes redaction on raw bytes fail here model output looks like this "
    "with a few lists some numbers spelled out like seven or twelve and the odd quote"
)
_WORDS = _SENTENCE.split()
_NON_ASCII = [
    "naïve",
    "café",
    "Zürich",
    "façade",
    "東京で",
    "データ",
    "Привет",
    "ñandú",
    "🙂",
    "—",
    "«so»",
    "Straße",
]
_PUNCT = [",", ".", ".\n", ":", "!", '"quoted"', "(see above)", ";"]
_ALNUM = string.ascii_letters + string.digits
_UPPER_DIGITS = string.ascii_uppercase + string.digits
_PASSWORD_CHARS = _ALNUM + "!#%*+-_"
_LOWER_DIGITS = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class Secret:
    kind: str  # openai_key, aws_key_id, password, email, card
    planted: str  # the whole string as planted in the text
    value: str  # the part that must never be seen (what the leak count looks for)


@dataclass(frozen=True)
class Answer:
    deltas: list[str]
    secrets: list[Secret]

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def _secret(rng: random.Random, kind: str) -> Secret:
    def pick(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    if kind == "openai_key":
        value = pick(_ALNUM, 32)
        return Secret(kind, "sk-" + value, value)
    if kind == "aws_key_id":
        key = "AKIA" + pick(_UPPER_DIGITS, 16)
        return Secret(kind, key, key)
    if kind == "password":
        value = pick(_PASSWORD_CHARS, 10)
        return Secret(kind, "password=" + value, value)
    if kind == "email":
        local = pick(string.ascii_lowercase, rng.randint(3, 7)) + "." + pick(_LOWER_DIGITS, 4)
        host = pick(string.ascii_lowercase, rng.randint(4, 8))
        email = f"{local}+m6@{host}-mail.example.org"
        return Secret(kind, email, email)
    card = "4111 1111 1111 1111"
    return Secret("card", card, card)


KINDS = ["openai_key", "aws_key_id", "password", "email", "card"]
_LEAD_IN = {
    "openai_key": "the key is",
    "aws_key_id": "aws id",
    "password": "login with",
    "email": "write to",
    "card": "card number",
}


def _filler(rng: random.Random, n: int) -> str:
    """About ``n`` characters of words, punctuation and some non-ASCII, no digits, no ``@``."""
    parts: list[str] = []
    size = 0
    while size < n:
        r = rng.random()
        word = rng.choice(_NON_ASCII) if r < 0.08 else rng.choice(_WORDS)
        if r > 0.93:
            word += rng.choice(_PUNCT)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)


@lru_cache(maxsize=4096)
def answer(seed: int, events: int) -> Answer:
    """The deltas of one answer: ``events`` pieces of 1-12 characters, secrets planted whole
    (never cut by the end), one every 60-180 characters of filler, the kinds in turn."""
    rng = random.Random(seed * 1_000_003 + events)
    sizes = [rng.randint(1, 12) for _ in range(events)]
    total = sum(sizes)
    pieces: list[str] = []
    secrets: list[Secret] = []
    length = 0
    turn = rng.randrange(len(KINDS))
    while length < total:
        gap = _filler(rng, rng.randint(60, 180))
        pieces.append(gap + " ")
        length += len(gap) + 1
        kind = KINDS[turn % len(KINDS)]
        turn += 1
        s = _secret(rng, kind)
        piece = f"{_LEAD_IN[kind]} {s.planted} "
        if length + len(piece) + 8 > total:  # it would not fit whole: filler to the end
            continue
        pieces.append(piece)
        secrets.append(s)
        length += len(piece)
    text = "".join(pieces)
    if len(text) < total:
        text += "x" * (total - len(text))
    text = text[:total]
    deltas: list[str] = []
    at = 0
    for n in sizes:
        deltas.append(text[at : at + n])
        at += n
    return Answer(deltas, secrets)


@lru_cache(maxsize=8)
def compiled(flags: int = 0) -> list[re.Pattern[str]]:
    return [re.compile(p, flags) for p in PATTERNS]


def redact(text: str, replacement: str = REPLACEMENT, flags: int = 0) -> str:
    """The reference: ``re.sub`` of each pattern in turn over the whole text."""
    for p in compiled(flags):
        text = p.sub(replacement, text)
    return text


_ASK = re.compile(r"seed=(\d+)")
_COUNT = re.compile(r"events=(\d+)")


def _last_user_text(body: dict[str, object]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as e:
        raise web.HTTPBadRequest(text=f"bad JSON: {e}") from e
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    ask = _last_user_text(body)
    m = _ASK.search(ask)
    seed = int(m.group(1)) if m else 0
    m = _COUNT.search(ask)
    events = min(int(m.group(1)) if m else request.app["events"], MAX_EVENTS)
    model = str(body.get("model") or "m6")
    ans = answer(seed, events)
    created = int(time.time())
    rid = f"chatcmpl-m6-{seed}"
    if not body.get("stream"):
        text = ans.text
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_m6",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 8,
                    "completion_tokens": events,
                    "total_tokens": events + 8,
                },
            },
            dumps=_dump,
        )
    opts = body.get("stream_options")
    usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    interval = request.app["interval"]
    head = (
        f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
        f'"model":{_dump(model)},"system_fingerprint":"fp_'
    ).encode()
    mid = b'","choices":[{"index":0,"delta":'
    tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    start = time.monotonic()
    deadline = start + MAX_HOLD
    try:
        for i, delta in enumerate(ans.deltas):
            due = start + i * interval
            now = time.monotonic()
            if now > deadline:
                break
            if due > now:
                await asyncio.sleep(due - now)
            d = {"role": "assistant", "content": delta} if i == 0 else {"content": delta}
            stamp = b"%d_%d" % (i, time.time_ns())
            await resp.write(head + stamp + mid + _dump(d).encode() + tail)
        due = start + events * interval
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        stamp = b"%d_%d" % (events, time.time_ns())
        await resp.write(head + stamp + mid + b'{},"logprobs":null,"finish_reason":"stop"}]}\n\n')
        if usage:
            u = {"prompt_tokens": 8, "completion_tokens": events, "total_tokens": events + 8}
            await resp.write(
                f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{_dump(model)},"choices":[],"usage":{_dump(u)}}}\n\n'.encode()
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: nothing more to send
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": "m6", "object": "model", "owned_by": "m6"}]}
    )


def make_app(interval: float, events: int) -> web.Application:
    app = web.Application(client_max_size=4 * 1024**2)
    app["interval"] = interval
    app["events"] = events
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    return app


async def serve(host: str, port: int, lifetime: float, interval: float, events: int) -> None:
    await serve_app(make_app(interval, events), host, port, lifetime, "llm upstream")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--rate", type=float, default=100.0, help="events per second per stream")
    ap.add_argument("--events", type=int, default=1000, help="events per answer by default")
    ap.add_argument("--lifetime", type=float, default=4 * 3600, help="exit after this many s")
    args = ap.parse_args()
    interval = 1.0 / min(max(args.rate, 0.1), 10_000.0)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            print("uvloop missing: using asyncio's loop", file=sys.stderr)
            asyncio.run(serve(args.host, args.port, args.lifetime, interval, args.events))
        else:
            uvloop.run(serve(args.host, args.port, args.lifetime, interval, args.events))


if __name__ == "__main__":
    main()
