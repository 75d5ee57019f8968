"""Local upstreams that speak the LLM providers' wire formats as the real APIs do.

Each factory returns an aiohttp :class:`web.Application` for ``aiohttp_server``:

* :func:`openai_app`: ``POST /v1/chat/completions`` (SSE ``chat.completion.chunk`` stream with
  ``n`` interleaved choices and streamed tool calls, or one ``chat.completion`` JSON) and
  ``POST /v1/responses`` (the Responses API's typed SSE events, or one ``response`` JSON);
* :func:`anthropic_app`: ``POST /v1/messages`` (``message_start`` ... ``message_stop``, with a
  thinking block, a text block and ``tool_use`` blocks, or one ``message`` JSON);
* :func:`ollama_app`: ``POST /api/chat`` and ``POST /api/generate`` (``application/x-ndjson``
  lines, or one JSON), encoded the way Go's ``encoding/json`` does (``<``, ``>``, ``&``,
  U+2028 and U+2029 escaped);
* :func:`llm_app`: all of the above in one application.

What is answered comes from the factory's :class:`Script` (the texts, how they are cut into
deltas, keep-alive comments, how the body's bytes are cut into writes, ASCII-only JSON) and from
the request JSON, as the real APIs read it: ``stream``, ``n``, ``tools`` (then the answer is tool
calls), ``stream_options.include_usage``, Anthropic's ``thinking``, Ollama's ``think``. Every
request is recorded under ``app[REQUESTS]``.

The texts carry planted secrets (:data:`SECRETS`) and non-ASCII text. Deltas split the text by
characters (JSON string values hold whole characters), so a delta boundary may fall anywhere,
inside a secret or between an emoji and its neighbour; ``write_seed`` also cuts the encoded
body's bytes at random offsets (inside UTF-8 sequences and SSE lines).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "ANSWER",
    "REQUESTS",
    "SECRETS",
    "THINKING",
    "TOOL_CALLS",
    "Recorded",
    "Script",
    "anthropic_app",
    "choice_answer",
    "go_json",
    "llm_app",
    "ollama_app",
    "openai_app",
]

# --------------------------------------------------------------------------------------------
# what the upstreams answer

SECRET_KEY = "sk-proj-Xq7Lm2Np9Rt4Vw8Yz3Bc6Df1Gh5Jk0"
SECRET_AWS = "AKIAIOSFODNN7EXAMPLE"
SECRET_PASSWORD = "password=hunter2xyz"
SECRET_EMAIL = "alice.smith@example.com"
SECRET_CARD = "4111 1111 1111 1111"
SECRETS = (SECRET_KEY, SECRET_AWS, SECRET_PASSWORD, SECRET_EMAIL, SECRET_CARD)
"""Every secret planted in the answers, thinking texts and tool-call arguments."""

ANSWER = (
    'Voilà — the "setup" for café 😀 and 中文:\n'
    f"export OPENAI_API_KEY={SECRET_KEY}\n"
    f"aws_access_key_id = {SECRET_AWS}; then {SECRET_PASSWORD} for the <admin> & co.\n"
    f"Mail {SECRET_EMAIL}, pay with {SECRET_CARD}.\u2028Path C:\\tmp\\日本 😀😀 end: "
    f"{SECRET_PASSWORD}"
)
"""The answer text. It ends with a secret that ``password=\\S+`` holds until the text's end."""

THINKING = f"The user wants 中文 and the key {SECRET_KEY}; mail {SECRET_EMAIL} — ok 😀."
"""A reasoning text (Anthropic thinking blocks, Ollama ``thinking``)."""

TOOL_CALLS = (
    (
        "get_weather",
        json.dumps(
            {"city": "Zürich 中文 😀", "note": f"{SECRET_PASSWORD} now", "key": SECRET_KEY},
            ensure_ascii=False,
        ),
    ),
    (
        "lookup_account",
        json.dumps(
            {"email": SECRET_EMAIL, "aws": SECRET_AWS, "card": SECRET_CARD, "q": 'a "b" é'},
            ensure_ascii=False,
        ),
    ),
)
"""The tool calls answered when a request has ``tools``: (name, arguments as JSON text)."""


def choice_answer(answer: str, index: int) -> str:
    """The text of choice ``index`` (choices differ, so mixing them up shows)."""
    return answer if index == 0 else f"[choice {index}] {answer}"


@dataclass(frozen=True)
class Script:
    """What an upstream answers and how it cuts it."""

    answer: str = ANSWER
    thinking: str = THINKING
    tool_calls: tuple[tuple[str, str], ...] = TOOL_CALLS
    preamble: str = ""
    """Chat Completions with tools: content streamed before the tool calls (as some models do)."""
    delta_seed: int | None = None
    """None: one character per delta; else the seed of random deltas of 1 to 12 characters."""
    keepalive: int = 0
    """SSE only: a ``: ping`` comment before the first event and every this many events."""
    write_seed: int | None = None
    """None: each event (line) is one write; else the seed of random writes of 1 to 24 bytes."""
    ascii_json: bool = False
    """SSE JSON with ``ensure_ascii`` (``\\u00e9``, surrogate pairs for 😀) instead of UTF-8."""
    model: str | None = None

    def pieces(self, text: str, salt: str) -> list[str]:
        """``text`` cut into deltas (whole characters; each text cut its own way)."""
        if self.delta_seed is None:
            return list(text)
        rng = random.Random(f"{self.delta_seed}/{salt}")
        out: list[str] = []
        start = 0
        while start < len(text):  # bounded: advances by at least one character
            end = start + rng.randint(1, 12)
            out.append(text[start:end])
            start = end
        return out

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.delta_seed}/{self.write_seed}/{salt}")


@dataclass
class Recorded:
    """One request an upstream got."""

    path: str
    raw: bytes
    json: Any
    headers: dict[str, str] = field(default_factory=dict)


REQUESTS = web.AppKey("requests", list[Recorded])
SCRIPT = web.AppKey("script", Script)

CREATED = 1_750_000_000
CHAT_ID = "chatcmpl-BxQ3kZ9vT2mN8pR4sL6wY1uE0aF7c"
RESP_ID = "resp_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"
MSG_ITEM_ID = "msg_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c6"
ANTHROPIC_MSG_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
FINGERPRINT = "fp_7c2e4d1a9b"
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# --------------------------------------------------------------------------------------------
# encoding and writing

_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_json(value: Any) -> str:
    """JSON as Go's ``encoding/json`` writes it (Ollama): compact, UTF-8, HTML-safe escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in _GO_ESCAPES:  # these characters only occur inside strings
        text = text.replace(char, escape)
    return text


def _compact(value: Any, ascii_json: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_json, separators=(",", ":"))


class _Body:
    """A streamed body: each frame written at once, or cut into random small writes."""

    def __init__(self, response: web.StreamResponse, script: Script, salt: str) -> None:
        self._response = response
        self._script = script
        self._cut = script.rng(salt) if script.write_seed is not None else None
        self._events = 0

    async def write(self, data: bytes) -> None:
        if self._cut is None:
            await self._response.write(data)
            return
        start = 0
        while start < len(data):  # bounded: advances by at least one byte
            end = start + self._cut.randint(1, 24)
            await self._response.write(data[start:end])
            start = end

    async def sse(self, data: Any, event: str | None = None) -> None:
        """One SSE event (``data`` as compact JSON, or a sentinel string as is)."""
        keepalive = self._script.keepalive
        if keepalive and self._events % keepalive == 0:
            await self.write(b": ping\n\n")
        self._events += 1
        text = data if isinstance(data, str) else _compact(data, self._script.ascii_json)
        head = f"event: {event}\n" if event is not None else ""
        await self.write(f"{head}data: {text}\n\n".encode())

    async def ndjson(self, value: Any) -> None:
        await self.write(f"{go_json(value)}\n".encode())

    async def finish(self) -> web.StreamResponse:
        await self._response.write_eof()
        return self._response


async def _start(request: web.Request, content_type: str, salt: str) -> _Body:
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return _Body(response, request.app[SCRIPT], salt)


def _json_response(value: Any, style: str) -> web.Response:
    """A whole JSON answer: ``pretty`` (OpenAI), ``compact`` (Anthropic) or ``go`` (Ollama)."""
    if style == "go":
        text = go_json(value)
    elif style == "pretty":
        text = json.dumps(value, ensure_ascii=False, indent=2)
    else:
        text = _compact(value, ascii_json=False)
    content_type = "application/json; charset=utf-8"
    return web.Response(body=text.encode(), headers={"Content-Type": content_type})


async def _read(request: web.Request) -> Any:
    raw = await request.read()
    value = json.loads(raw)
    request.app[REQUESTS].append(
        Recorded(request.path, raw, value, {k: v for k, v in request.headers.items()})
    )
    return value


def _recording(handler: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, await _read(request))

    return handle


def _app(script: Script, routes: list[tuple[str, Handler]]) -> web.Application:
    app = web.Application()
    app[SCRIPT] = script
    app[REQUESTS] = []
    for path, handler in routes:
        app.router.add_post(path, handler)
    return app


# --------------------------------------------------------------------------------------------
# OpenAI Chat Completions


def _chat_choice_deltas(
    script: Script, index: int, tools: bool
) -> list[tuple[dict[str, Any], str | None]]:
    """One choice's deltas, each with its ``finish_reason``: role first, finish last."""
    out: list[tuple[dict[str, Any], str | None]] = []
    if not tools:
        out.append(({"role": "assistant", "content": "", "refusal": None}, None))
        text = choice_answer(script.answer, index)
        out.extend(({"content": piece}, None) for piece in script.pieces(text, f"chat{index}"))
        out.append(({}, "stop"))
        return out
    if script.preamble:
        out.append(({"role": "assistant", "content": "", "refusal": None}, None))
        text = choice_answer(script.preamble, index)
        out.extend(({"content": piece}, None) for piece in script.pieces(text, f"pre{index}"))
    for t, (name, arguments) in enumerate(script.tool_calls):
        start = {
            "index": t,
            "id": f"call_{index}{t}abcXYZ",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        if t == 0 and not script.preamble:
            first = {"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}
            out.append((first, None))
        else:
            out.append(({"tool_calls": [start]}, None))
        for piece in script.pieces(arguments, f"tool{index}.{t}"):
            out.append(({"tool_calls": [{"index": t, "function": {"arguments": piece}}]}, None))
    out.append(({}, "tool_calls"))
    return out


def _interleave(
    queues: list[list[tuple[dict[str, Any], str | None]]], rng: random.Random | None
) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """The choices' deltas in one stream: each choice's first in index order, then mixed."""
    positions = [0] * len(queues)
    for index, queue in enumerate(queues):
        if queue:
            positions[index] = 1
            yield index, *queue[0]
    for turn in range(sum(len(q) for q in queues)):  # bounded: one delta per round
        live = [i for i, q in enumerate(queues) if positions[i] < len(q)]
        if not live:
            return
        index = rng.choice(live) if rng is not None else live[turn % len(live)]
        delta, finish = queues[index][positions[index]]
        positions[index] += 1
        yield index, delta, finish


def _obfuscation(rng: random.Random) -> str:
    """The random padding OpenAI adds to stream events (so their sizes say nothing)."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))


def _usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": 19,
        "completion_tokens": completion_tokens,
        "total_tokens": 19 + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_chunk(model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with these choices, as OpenAI sends it."""
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    }


async def _chat_completions(request: web.Request, body: Any) -> web.StreamResponse:
    script = request.app[SCRIPT]
    model = script.model or str(body.get("model") or "gpt-4o-mini-2024-07-18")
    n = int(body.get("n") or 1)
    tools = bool(body.get("tools"))
    if not body.get("stream"):
        choices = []
        for index in range(n):
            message: dict[str, Any] = {"role": "assistant", "refusal": None, "annotations": []}
            if tools:
                preamble = script.preamble
                message["content"] = choice_answer(preamble, index) if preamble else None
                message["tool_calls"] = [
                    {
                        "id": f"call_{index}{t}abcXYZ",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                    for t, (name, arguments) in enumerate(script.tool_calls)
                ]
            else:
                message["content"] = choice_answer(script.answer, index)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tools else "stop",
                }
            )
        return _json_response(
            {
                "id": CHAT_ID,
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": choices,
                "usage": _usage(len(script.answer)),
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
            },
            "pretty",
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    out = await _start(request, "text/event-stream; charset=utf-8", "chat")
    queues = [_chat_choice_deltas(script, index, tools) for index in range(n)]
    rng = script.rng("interleave") if script.delta_seed is not None else None
    pad = script.rng("obfuscation")
    count = 0
    for index, delta, finish in _interleave(queues, rng):
        count += 1
        chunk = _chat_chunk(
            model, [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
        if include_usage:
            chunk["usage"] = None
        chunk["obfuscation"] = _obfuscation(pad)
        await out.sse(chunk)
    if include_usage:
        await out.sse({**_chat_chunk(model, []), "usage": _usage(count)})
    await out.sse("[DONE]")
    return await out.finish()


# --------------------------------------------------------------------------------------------
# OpenAI Responses API


def _response_object(model: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    return {
        "id": RESP_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _response_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12 + output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {
        "id": MSG_ITEM_ID,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def _function_item(t: int, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": f"fc_68a1b2c3d4e5f6a7b8c9{t:04d}",
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": f"call_resp{t}XYZ",
        "name": name,
    }


async def _responses(request: web.Request, body: Any) -> web.StreamResponse:
    script = request.app[SCRIPT]
    model = script.model or str(body.get("model") or "gpt-4.1-2025-04-14")
    tools = script.tool_calls if body.get("tools") else ()
    text = script.answer
    final_output = [_message_item(text, "completed")] + [
        _function_item(t, name, arguments, "completed")
        for t, (name, arguments) in enumerate(tools, start=1)
    ]
    if not body.get("stream"):
        return _json_response(
            _response_object(model, "completed", final_output, _response_usage(len(text))),
            "pretty",
        )
    out = await _start(request, "text/event-stream; charset=utf-8", "responses")
    pad = script.rng("obfuscation")
    seq = 0

    async def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        await out.sse({"type": kind, "sequence_number": seq, **fields}, event=kind)
        seq += 1

    created = _response_object(model, "in_progress", [], None)
    await event("response.created", response=created)
    await event("response.in_progress", response=created)
    where = {"item_id": MSG_ITEM_ID, "output_index": 0}
    added = _message_item(None, "in_progress")
    await event("response.output_item.added", output_index=0, item=added)
    await event("response.content_part.added", **where, content_index=0, part=_text_part(""))
    for piece in script.pieces(text, "responses"):
        await event(
            "response.output_text.delta",
            **where,
            content_index=0,
            delta=piece,
            logprobs=[],
            obfuscation=_obfuscation(pad),
        )
    await event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
    await event("response.content_part.done", **where, content_index=0, part=_text_part(text))
    await event("response.output_item.done", output_index=0, item=final_output[0])
    for t, (name, arguments) in enumerate(tools, start=1):
        item = _function_item(t, name, "", "in_progress")
        fc = {"item_id": item["id"], "output_index": t}
        await event("response.output_item.added", output_index=t, item=item)
        for piece in script.pieces(arguments, f"responses.tool{t}"):
            await event(
                "response.function_call_arguments.delta",
                **fc,
                delta=piece,
                obfuscation=_obfuscation(pad),
            )
        await event("response.function_call_arguments.done", **fc, arguments=arguments)
        await event("response.output_item.done", output_index=t, item=final_output[t])
    completed = _response_object(model, "completed", final_output, _response_usage(seq))
    await event("response.completed", response=completed)
    return await out.finish()


def openai_app(script: Script | None = None) -> web.Application:
    """OpenAI: ``/v1/chat/completions`` and ``/v1/responses``."""
    return _app(
        script or Script(),
        [
            ("/v1/chat/completions", _recording(_chat_completions)),
            ("/v1/responses", _recording(_responses)),
        ],
    )


# --------------------------------------------------------------------------------------------
# Anthropic Messages


def _anthropic_blocks(script: Script, body: Any) -> list[tuple[dict[str, Any], str]]:
    """The answer's content blocks, complete (non-streamed form), each with its streamed text
    (the thinking, the text, the tool input as JSON text)."""
    blocks: list[tuple[dict[str, Any], str]] = []
    if (body.get("thinking") or {}).get("type") == "enabled":
        thinking = {"type": "thinking", "thinking": script.thinking, "signature": SIGNATURE}
        blocks.append((thinking, script.thinking))
    blocks.append(({"type": "text", "text": script.answer}, script.answer))
    if body.get("tools"):
        for t, (name, arguments) in enumerate(script.tool_calls):
            tool = {
                "type": "tool_use",
                "id": f"toolu_01A09q90qw90lq917835l{t}",
                "name": name,
                "input": json.loads(arguments),
            }
            blocks.append((tool, arguments))
    return blocks


async def _messages(request: web.Request, body: Any) -> web.StreamResponse:
    script = request.app[SCRIPT]
    model = script.model or str(body.get("model") or "claude-sonnet-4-5-20250929")
    blocks = _anthropic_blocks(script, body)
    stop_reason = "tool_use" if blocks[-1][0]["type"] == "tool_use" else "end_turn"
    usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    message = {
        "id": ANTHROPIC_MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block for block, _ in blocks],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": len(script.answer)},
    }
    if not body.get("stream"):
        return _json_response(message, "compact")
    out = await _start(request, "text/event-stream; charset=utf-8", "messages")

    async def event(kind: str, **fields: Any) -> None:
        await out.sse({"type": kind, **fields}, event=kind)

    start = {**message, "content": [], "stop_reason": None, "usage": usage}
    await event("message_start", message=start)
    deltas = 0
    for index, (block, streamed) in enumerate(blocks):
        kind = block["type"]
        if kind == "thinking":
            first: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "text":
            first = {"type": "text", "text": ""}
        else:
            first = {**block, "input": {}}
        await event("content_block_start", index=index, content_block=first)
        if index == 0:
            await event("ping")
        if kind == "thinking":
            for piece in script.pieces(streamed, f"thinking{index}"):
                delta = {"type": "thinking_delta", "thinking": piece}
                await event("content_block_delta", index=index, delta=delta)
                deltas += 1
            delta = {"type": "signature_delta", "signature": block["signature"]}
            await event("content_block_delta", index=index, delta=delta)
        elif kind == "text":
            for piece in script.pieces(streamed, f"text{index}"):
                await event(
                    "content_block_delta", index=index, delta={"type": "text_delta", "text": piece}
                )
                deltas += 1
        else:
            for piece in ["", *script.pieces(streamed, f"tool{index}")]:
                delta = {"type": "input_json_delta", "partial_json": piece}
                await event("content_block_delta", index=index, delta=delta)
                deltas += 1
        await event("content_block_stop", index=index)
    await event(
        "message_delta",
        delta={"stop_reason": stop_reason, "stop_sequence": None},
        usage={"output_tokens": deltas},
    )
    await event("message_stop")
    return await out.finish()


def anthropic_app(script: Script | None = None) -> web.Application:
    """Anthropic: ``/v1/messages``."""
    return _app(script or Script(), [("/v1/messages", _recording(_messages))])


# --------------------------------------------------------------------------------------------
# Ollama


OLLAMA_CREATED_AT = "2025-06-15T12:00:00.123456789Z"


def _ollama_stats(eval_count: int) -> dict[str, Any]:
    return {
        "total_duration": 4_883_583_458,
        "load_duration": 1_334_875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342_546_000,
        "eval_count": eval_count,
        "eval_duration": 4_535_599_000,
    }


async def _ollama(request: web.Request, body: Any) -> web.StreamResponse:
    script = request.app[SCRIPT]
    chat = request.path == "/api/chat"
    model = script.model or str(body.get("model") or "llama3.2")
    think = bool(body.get("think"))
    head = {"model": model, "created_at": OLLAMA_CREATED_AT}

    def part(content: str, thinking: str | None) -> dict[str, Any]:
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking is not None:
                message["thinking"] = thinking
            return {**head, "message": message}
        line: dict[str, Any] = {**head, "response": content}
        if thinking is not None:
            line["thinking"] = thinking
        return line

    final = {"done": True, "done_reason": "stop"}
    if not chat:
        final["context"] = [128006, 882, 128007, 271, 9906]
    if body.get("stream") is False:  # Ollama streams unless told not to
        whole = part(script.answer, script.thinking if think else None)
        stats = _ollama_stats(len(script.answer))
        return _json_response({**whole, **final, **stats}, "go")
    out = await _start(request, "application/x-ndjson", request.path)
    count = 0
    if think:
        for piece in script.pieces(script.thinking, "ollama.thinking"):
            await out.ndjson({**part("", piece), "done": False})
            count += 1
    for piece in script.pieces(script.answer, "ollama"):
        await out.ndjson({**part(piece, None), "done": False})
        count += 1
    await out.ndjson({**part("", None), **final, **_ollama_stats(count)})
    return await out.finish()


def ollama_app(script: Script | None = None) -> web.Application:
    """Ollama: ``/api/chat`` and ``/api/generate``."""
    handler = _recording(_ollama)
    return _app(script or Script(), [("/api/chat", handler), ("/api/generate", handler)])


def llm_app(script: Script | None = None) -> web.Application:
    """Every provider's endpoints in one application."""
    handlers = {
        "/v1/chat/completions": _chat_completions,
        "/v1/responses": _responses,
        "/v1/messages": _messages,
        "/api/chat": _ollama,
        "/api/generate": _ollama,
    }
    return _app(script or Script(), [(p, _recording(h)) for p, h in handlers.items()])
