"""The real LLM SDKs (openai, anthropic, ollama) through the proxy, with ``redact`` on the text.

Each upstream (``tests/support/llm_upstreams.py``) speaks a provider's wire format as the real
API does and plants secrets in its answers. The SDK's async client is pointed at the proxy, whose
route reads the provider's text (``text: openai|anthropic|ollama``, or the default ``auto``) and
redacts it. Every stream must still parse in the SDK, every text the SDK assembles (per choice,
tool call, output item or content block) must equal ``redact_reference`` of the original text,
and no secret may appear anywhere in the bytes the client read (the full texts the Responses API
repeats in its ``*.done`` and ``response.completed`` events included).

Modes of every test:

* ``direct``: the SDK against the upstream, no proxy: the upstream is faithful (the SDK parses
  it and gets the original texts, secrets included);
* ``passthrough``: through the proxy with no ``text`` and no transforms: the originals;
* ``preset``: ``text: <provider>`` with ``redact`` (and ``request_text`` with
  ``request_transforms`` for the request tests): the references;
* ``auto``: ``text`` left out (``auto`` detects the provider's stream from its first events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest
from aiohttp import web

from plugins.redact import redact_reference

from .conftest import MakeProxy, origin
from .support.llm_upstreams import (
    ANSWER,
    REQUESTS,
    SECRETS,
    THINKING,
    TOOL_CALLS,
    Script,
    anthropic_app,
    choice_answer,
    ollama_app,
    openai_app,
)

PATTERNS = [
    r"sk-[A-Za-z0-9_-]{20,}",
    r"AKIA[0-9A-Z]{16}",
    r"(?i)password=\S+",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+",
    r"\b\d{4}(?:[ -]?\d{4}){3}\b",
]
REPLACEMENT = "[REDACTED]"
TIMEOUT = 15.0

SCRIPTS = {
    "1char": Script(),
    "seed7": Script(delta_seed=7, keepalive=5),
    "seed1234-bytes-ascii": Script(delta_seed=1234, keepalive=2, write_seed=99, ascii_json=True),
}
"""How the upstream cuts its texts: one character per delta; random 1 to 12 characters with
``: ping`` comments; the same with the body's bytes written in random small pieces and the SSE
JSON in ASCII escapes (``\\u00e9``, surrogate pairs)."""

STREAM_CASES = [
    pytest.param("direct", "1char", id="direct-1char"),
    pytest.param("direct", "seed1234-bytes-ascii", id="direct-seed1234-bytes-ascii"),
    pytest.param("passthrough", "seed1234-bytes-ascii", id="passthrough-seed1234-bytes-ascii"),
    *(pytest.param("preset", s, id=f"preset-{s}") for s in SCRIPTS),
    # auto: detected from the first events, also behind a comment and cut into small writes
    *(pytest.param("auto", s, id=f"auto-{s}") for s in ("seed7", "seed1234-bytes-ascii")),
]
WHOLE_CASES = ["direct", "passthrough", "preset"]


def reference(text: str) -> str:
    """What ``redact`` makes of one whole text."""
    return redact_reference(text.encode(), PATTERNS, REPLACEMENT).decode()


def test_references_are_meaningful() -> None:
    """The planted secrets are all caught, and redacted tool arguments stay valid JSON."""
    redacted = reference(ANSWER)
    assert redacted.endswith(REPLACEMENT)  # the answer's last secret is held to the text's end
    for text in (ANSWER, THINKING, *(arguments for _, arguments in TOOL_CALLS)):
        assert not _seen(reference(text))
    for _, arguments in TOOL_CALLS:
        json.loads(reference(arguments))
    assert _seen(ANSWER) == set(SECRETS)


# --------------------------------------------------------------------------------------------
# what the client read


def _windows(secret: str, width: int = 8) -> Iterable[str]:
    return (secret[i : i + width] for i in range(max(1, len(secret) - width + 1)))


def _seen(text: str) -> set[str]:
    """The secrets of which any 8 characters in a row occur in ``text``."""
    return {s for s in SECRETS if any(w in text for w in _windows(s))}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _json_strings(body: bytes) -> list[str]:
    """Every JSON string value in a body read as one JSON document, NDJSON or SSE data lines
    (so that escaped forms such as ``\\u0040`` are seen decoded)."""
    text = body.decode("utf-8", "replace")
    try:
        return list(_strings(json.loads(text)))
    except ValueError:
        pass
    out: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        payload = line[5:] if line.startswith("data:") else line
        try:
            out.extend(_strings(json.loads(payload)))
        except ValueError:
            continue
    return out


def _recorder(base: type) -> type:
    """A response byte stream of ``base``'s library that copies what the SDK reads."""

    class Recorder(base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, sink: bytearray) -> None:
            self._inner = inner
            self._sink = sink

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                self._sink += chunk
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    return Recorder


_RECORDERS = {
    "httpx2": _recorder(httpx2.AsyncByteStream),
    "httpx": _recorder(httpx.AsyncByteStream),
}


class Tap:
    """The bodies (as sent, before any content decoding) of every response an SDK client read."""

    def __init__(self) -> None:
        self.bodies: list[bytearray] = []
        self.encodings: list[str] = []

    def hooks(self, library: str) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        recorder = _RECORDERS[library]

        async def on_response(response: Any) -> None:
            body = bytearray()
            self.bodies.append(body)
            self.encodings.append(response.headers.get("content-encoding", "identity"))
            response.stream = recorder(response.stream, body)

        return {"response": [on_response]}

    def seen(self) -> set[str]:
        found: set[str] = set()
        for body in self.bodies:
            found |= _seen(bytes(body).decode("utf-8", "replace"))
            found |= _seen("\x00".join(_json_strings(bytes(body))))
        return found


# --------------------------------------------------------------------------------------------
# setup


@dataclass
class Setup:
    """An upstream, maybe the proxy in front of it, and where the SDK goes."""

    base: str
    app: web.Application
    mode: str
    tap: Tap = field(default_factory=Tap)

    @property
    def redacting(self) -> bool:
        return self.mode in ("preset", "auto")

    def expect(self, text: str) -> str:
        return reference(text) if self.redacting else text

    def check_raw(self, whole: bool) -> None:
        """No secret in what the client read (when redacting); every secret when not and the
        texts came whole (the tap works)."""
        assert self.tap.bodies, "the SDK read no response"
        assert set(self.tap.encodings) == {"identity"}  # so the tap saw the plain bytes
        seen = self.tap.seen()
        if self.redacting:
            assert seen == set(), f"leaked: {sorted(seen)}"
        elif whole:
            assert seen == set(SECRETS)


def llm_route(preset: str, mode: str) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "llm", "match": {"path_prefix": "/"}, "upstream": "llm"}
    if mode in ("preset", "auto"):
        redact = {"redact": {"patterns": PATTERNS, "replacement": REPLACEMENT}}
        route["transforms"] = [redact]
        route["request_transforms"] = [redact]
        route["request_text"] = preset
    if mode == "preset":
        route["text"] = preset
    return route


Start = Callable[[web.Application, str, str], Awaitable[Setup]]


@pytest.fixture
async def llm(aiohttp_server: Any, make_proxy: MakeProxy) -> Start:
    async def start(app: web.Application, preset: str, mode: str) -> Setup:
        server = await aiohttp_server(app)
        if mode == "direct":
            return Setup(origin(server), app, mode)
        proxy = await make_proxy({"llm": [origin(server)]}, [llm_route(preset, mode)])
        return Setup(proxy.url("").rstrip("/"), app, mode)

    return start


@contextlib.asynccontextmanager
async def openai_client(setup: Setup) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(event_hooks=setup.tap.hooks("httpx2"), timeout=TIMEOUT)
    client = openai.AsyncOpenAI(
        base_url=f"{setup.base}/v1", api_key="test", max_retries=0, http_client=http
    )
    async with http, client:
        yield client


@contextlib.asynccontextmanager
async def anthropic_client(setup: Setup) -> AsyncIterator[anthropic.AsyncAnthropic]:
    http = httpx2.AsyncClient(event_hooks=setup.tap.hooks("httpx2"), timeout=TIMEOUT)
    client = anthropic.AsyncAnthropic(
        base_url=setup.base, api_key="test", max_retries=0, http_client=http
    )
    async with http, client:
        yield client


@contextlib.asynccontextmanager
async def ollama_client(setup: Setup) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(
        host=setup.base, event_hooks=setup.tap.hooks("httpx"), timeout=TIMEOUT
    )
    try:
        yield client
    finally:
        await client.close()


HI: list[Any] = [{"role": "user", "content": "hi"}]


async def chat_stream(client: Any, n: int, **extra: Any) -> Any:
    """A streamed Chat Completions request of ``n`` choices answering ``HI``."""
    return await client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, n=n, stream=True, **extra
    )


def chat_helper(client: Any, n: int, **extra: Any) -> Any:
    """The SDK's stream helper over a Chat Completions request of ``n`` choices to ``HI``."""
    return client.chat.completions.stream(model="gpt-4o-mini", messages=HI, n=n, **extra)


OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name, _ in TOOL_CALLS
]
RESPONSES_TOOLS: list[Any] = [
    {"type": "function", **tool["function"], "strict": False} for tool in OPENAI_TOOLS
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": name, "description": f"the {name} tool", "input_schema": {"type": "object"}}
    for name, _ in TOOL_CALLS
]
THINK = {"type": "enabled", "budget_tokens": 1024}

# --------------------------------------------------------------------------------------------
# OpenAI Chat Completions


@pytest.mark.parametrize(("mode", "split"), STREAM_CASES)
async def test_openai_chat_stream(llm: Start, mode: str, split: str) -> None:
    """``n=2`` interleaved choices: each choice's deltas join to its reference, in the raw
    stream and in the SDK's stream helper (``content.done`` and the final completion)."""
    setup = await llm(openai_app(SCRIPTS[split]), "openai", mode)
    n = 2
    want = [setup.expect(choice_answer(ANSWER, i)) for i in range(n)]
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        stream = await chat_stream(client, n, stream_options={"include_usage": True})
        texts: dict[int, str] = defaultdict(str)
        roles: dict[int, str] = defaultdict(str)
        finish: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                assert choice.index not in finish, "a delta after the choice's finish_reason"
                texts[choice.index] += choice.delta.content or ""
                roles[choice.index] += choice.delta.role or ""
                if choice.finish_reason is not None:
                    finish[choice.index] = choice.finish_reason
        assert [texts[i] for i in range(n)] == want
        assert dict(roles) == dict.fromkeys(range(n), "assistant")  # role once per choice
        assert finish == dict.fromkeys(range(n), "stop")
        assert usage is not None

        async with chat_helper(client, n) as helper:
            done = [event.content async for event in helper if event.type == "content.done"]
            final = await helper.get_final_completion()
        assert sorted(done) == sorted(want)
        assert [c.message.content for c in final.choices] == want
        assert [c.message.role for c in final.choices] == ["assistant"] * n
    setup.check_raw(whole=False)


@pytest.mark.parametrize(("mode", "split"), STREAM_CASES)
async def test_openai_chat_stream_tool_calls(llm: Start, mode: str, split: str) -> None:
    """Streamed tool calls (two per choice, ``n=2``): each call's ``function.arguments`` joins
    to its reference and parses as JSON; ids and names arrive once, unchanged."""
    setup = await llm(openai_app(SCRIPTS[split]), "openai", mode)
    n = 2
    want = {
        (c, t): setup.expect(arguments)
        for c in range(n)
        for t, (_, arguments) in enumerate(TOOL_CALLS)
    }
    names = {(c, t): name for c in range(n) for t, (name, _) in enumerate(TOOL_CALLS)}
    ids = {(c, t): f"call_{c}{t}abcXYZ" for c in range(n) for t in range(len(TOOL_CALLS))}
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        stream = await chat_stream(client, n, tools=OPENAI_TOOLS)
        arguments: dict[tuple[int, int], str] = defaultdict(str)
        got_ids: dict[tuple[int, int], str] = defaultdict(str)
        got_names: dict[tuple[int, int], str] = defaultdict(str)
        finish: dict[int, str] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                assert choice.index not in finish, "a delta after the choice's finish_reason"
                assert not choice.delta.content
                for call in choice.delta.tool_calls or []:
                    key = (choice.index, call.index)
                    got_ids[key] += call.id or ""
                    if call.function is not None:
                        got_names[key] += call.function.name or ""
                        arguments[key] += call.function.arguments or ""
                if choice.finish_reason is not None:
                    finish[choice.index] = choice.finish_reason
        assert dict(arguments) == want
        assert dict(got_ids) == ids
        assert dict(got_names) == names
        assert finish == dict.fromkeys(range(n), "tool_calls")
        for text in arguments.values():
            json.loads(text)

        async with chat_helper(client, n, tools=OPENAI_TOOLS) as helper:
            done = [
                (event.name, event.arguments)
                async for event in helper
                if event.type == "tool_calls.function.arguments.done"
            ]
            final = await helper.get_final_completion()
        # the helper says a call is done when the next one starts: its arguments must be whole
        assert sorted(done) == sorted((names[k], want[k]) for k in want)
        for c, choice in enumerate(final.choices):
            calls = choice.message.tool_calls or []
            assert [(call.id, call.function.name, call.function.arguments) for call in calls] == [
                (ids[c, t], names[c, t], want[c, t]) for t in range(len(TOOL_CALLS))
            ]
    setup.check_raw(whole=False)


PREAMBLE_CASES = [
    pytest.param("direct", "seed7", id="direct-seed7"),
    pytest.param("preset", "1char", id="preset-1char"),
    pytest.param("preset", "seed7", id="preset-seed7"),
    pytest.param("auto", "seed7", id="auto-seed7"),
]


@pytest.mark.parametrize(("mode", "split"), PREAMBLE_CASES)
async def test_openai_chat_stream_content_then_tool_calls(
    llm: Start, mode: str, split: str
) -> None:
    """Content, then tool calls, in each of ``n=2`` choices.

    The SDK's stream helper ends a choice's content (``content.done``) when its first tool
    call arrives, and a tool call (``tool_calls.function.arguments.done``) when the next one
    starts. So what the transform still holds of a text must go out before the event that
    starts the next text of the choice, not at ``finish_reason``: the content here ends with a
    secret that ``password=\\S+`` holds to the text's end. (A remainder sent later reaches the
    final completion but not those events; for ``strict`` tools the helper parses the
    arguments at ``arguments.done`` and raises on a truncated text.)
    """
    setup = await llm(openai_app(replace(SCRIPTS[split], preamble=ANSWER)), "openai", mode)
    n = 2
    content = [setup.expect(choice_answer(ANSWER, c)) for c in range(n)]
    calls = [[(name, setup.expect(arguments)) for name, arguments in TOOL_CALLS] for _ in range(n)]
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        async with chat_helper(client, n, tools=OPENAI_TOOLS) as helper:
            content_done: list[str] = []
            arguments_done: list[tuple[str, str]] = []
            async for event in helper:
                if event.type == "content.done":
                    content_done.append(event.content)
                elif event.type == "tool_calls.function.arguments.done":
                    arguments_done.append((event.name, event.arguments))
            final = await helper.get_final_completion()
    assert [c.message.content for c in final.choices] == content
    assert [
        [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        for c in final.choices
    ] == calls
    assert sorted(content_done) == sorted(content)
    assert sorted(arguments_done) == sorted(call for choice in calls for call in choice)
    setup.check_raw(whole=False)


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_openai_chat_json(llm: Start, mode: str) -> None:
    """Non-streamed: each ``choices[].message.content`` is its reference."""
    setup = await llm(openai_app(), "openai", mode)
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            n=2,
        )
    assert [c.message.content for c in completion.choices] == [
        setup.expect(choice_answer(ANSWER, i)) for i in range(2)
    ]
    assert completion.object == "chat.completion"
    setup.check_raw(whole=True)


# --------------------------------------------------------------------------------------------
# OpenAI Responses API


@pytest.mark.parametrize(("mode", "split"), STREAM_CASES)
async def test_openai_responses_stream(llm: Start, mode: str, split: str) -> None:
    """``response.output_text.delta`` joins to the reference, and every repeat of the whole
    text (``output_text.done``, ``content_part.done``, ``output_item.done``,
    ``response.completed``) is that reference too; function call arguments the same."""
    setup = await llm(openai_app(SCRIPTS[split]), "openai", mode)
    text = setup.expect(ANSWER)
    calls = {t: setup.expect(arguments) for t, (_, arguments) in enumerate(TOOL_CALLS, start=1)}
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        stream = await client.responses.create(
            model="gpt-4.1", input="hi", tools=RESPONSES_TOOLS, stream=True
        )
        deltas: dict[tuple[int, int], str] = defaultdict(str)
        repeats: list[str] = []
        args: dict[int, str] = defaultdict(str)
        args_done: dict[int, str] = {}
        items: dict[int, Any] = {}
        completed = None
        types: list[str] = []
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                assert (event.output_index, event.content_index) not in items
                deltas[event.output_index, event.content_index] += event.delta
            elif event.type == "response.output_text.done":
                repeats.append(event.text)
            elif event.type == "response.content_part.done":
                assert event.part.type == "output_text"
                repeats.append(event.part.text)
            elif event.type == "response.function_call_arguments.delta":
                args[event.output_index] += event.delta
            elif event.type == "response.function_call_arguments.done":
                args_done[event.output_index] = event.arguments
            elif event.type == "response.output_item.done":
                items[event.output_index] = event.item
            elif event.type == "response.completed":
                completed = event.response
        assert types[0] == "response.created"
        assert types[-1] == "response.completed"
        assert dict(deltas) == {(0, 0): text}
        assert repeats == [text, text]
        message = items[0]
        assert message.type == "message"
        assert [part.text for part in message.content] == [text]  # type: ignore[union-attr]
        assert dict(args) == calls
        assert args_done == calls
        assert {t: items[t].arguments for t in calls} == calls
        assert completed is not None
        assert completed.output_text == text
        assert {t: completed.output[t].arguments for t in calls} == calls  # type: ignore[union-attr]

        async with client.responses.stream(
            model="gpt-4.1", input="hi", tools=RESPONSES_TOOLS
        ) as helper:
            done = [
                event.text async for event in helper if event.type == "response.output_text.done"
            ]
            final = await helper.get_final_response()
        assert done == [text]
        assert final.output_text == text
    setup.check_raw(whole=False)


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_openai_responses_json(llm: Start, mode: str) -> None:
    setup = await llm(openai_app(), "openai", mode)
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        response = await client.responses.create(model="gpt-4.1", input="hi")
    assert response.output_text == setup.expect(ANSWER)
    setup.check_raw(whole=True)


# --------------------------------------------------------------------------------------------
# Anthropic Messages


@pytest.mark.parametrize(("mode", "split"), STREAM_CASES)
async def test_anthropic_messages_stream(llm: Start, mode: str, split: str) -> None:
    """A thinking block, a text block and two ``tool_use`` blocks: per content block index,
    the deltas join to the reference; the SDK's ``MessageStream`` (which parses the partial
    tool JSON after every delta) assembles the same message."""
    setup = await llm(anthropic_app(SCRIPTS[split]), "anthropic", mode)
    want: dict[int, str] = {0: setup.expect(THINKING), 1: setup.expect(ANSWER)}
    for t, (_, arguments) in enumerate(TOOL_CALLS, start=2):
        want[t] = setup.expect(arguments)
    kinds = {0: "thinking", 1: "text", **{t: "tool_use" for t in range(2, 2 + len(TOOL_CALLS))}}
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2048,
        "messages": HI,
        "thinking": THINK,
        "tools": ANTHROPIC_TOOLS,
    }
    async with asyncio.timeout(TIMEOUT), anthropic_client(setup) as client:
        stream = await client.messages.create(**params, stream=True)
        texts: dict[int, str] = defaultdict(str)
        started: dict[int, str] = {}
        stopped: set[int] = set()
        types: list[str] = []
        async for event in stream:
            types.append(event.type)
            if event.type == "content_block_start":
                started[event.index] = event.content_block.type
            elif event.type == "content_block_delta":
                assert event.index in started and event.index not in stopped
                delta = event.delta
                if delta.type == "text_delta":
                    texts[event.index] += delta.text
                elif delta.type == "thinking_delta":
                    texts[event.index] += delta.thinking
                elif delta.type == "input_json_delta":
                    texts[event.index] += delta.partial_json
            elif event.type == "content_block_stop":
                stopped.add(event.index)
        assert types[0] == "message_start"
        assert types[-2:] == ["message_delta", "message_stop"]
        assert started == kinds
        assert stopped == set(kinds)
        assert dict(texts) == want

        async with client.messages.stream(**params) as helper:
            streamed = "".join([text async for text in helper.text_stream])
            final = await helper.get_final_message()
        assert streamed == want[1]
        thinking, text, *tools = final.content
        assert thinking.type == "thinking"
        assert thinking.thinking == want[0]
        assert text.type == "text"
        assert text.text == want[1]
        assert [(b.type, b.name, b.input) for b in tools] == [  # type: ignore[union-attr]
            ("tool_use", name, json.loads(want[t]))
            for t, (name, _) in enumerate(TOOL_CALLS, start=2)
        ]
        assert final.stop_reason == "tool_use"
    setup.check_raw(whole=False)


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_anthropic_messages_json(llm: Start, mode: str) -> None:
    setup = await llm(anthropic_app(), "anthropic", mode)
    async with asyncio.timeout(TIMEOUT), anthropic_client(setup) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            messages=HI,
        )
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", setup.expect(ANSWER))
    ]
    setup.check_raw(whole=True)


# --------------------------------------------------------------------------------------------
# Ollama


@pytest.mark.parametrize(("mode", "split"), STREAM_CASES)
async def test_ollama_stream(llm: Start, mode: str, split: str) -> None:
    """``/api/chat`` (``message.thinking`` then ``message.content``) and ``/api/generate``
    (``thinking``, ``response``) NDJSON: joined, the references; one ``done`` line, last."""
    setup = await llm(ollama_app(SCRIPTS[split]), "ollama", mode)
    async with asyncio.timeout(TIMEOUT), ollama_client(setup) as client:
        content = thinking = ""
        done: list[bool] = []
        async for part in await client.chat(model="llama3.2", messages=HI, stream=True, think=True):
            assert not any(done), "a line after done"
            content += part.message.content or ""
            thinking += part.message.thinking or ""
            done.append(bool(part.done))
        assert (thinking, content) == (setup.expect(THINKING), setup.expect(ANSWER))
        assert done[-1]

        response = thinking = ""
        done = []
        async for line in await client.generate(
            model="llama3.2", prompt="hi", stream=True, think=True
        ):
            assert not any(done), "a line after done"
            response += line.response or ""
            thinking += line.thinking or ""
            done.append(bool(line.done))
            if line.done:
                assert line.done_reason == "stop"
                assert line.context
        assert (thinking, response) == (setup.expect(THINKING), setup.expect(ANSWER))
        assert done[-1]
    setup.check_raw(whole=False)


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_ollama_json(llm: Start, mode: str) -> None:
    setup = await llm(ollama_app(), "ollama", mode)
    async with asyncio.timeout(TIMEOUT), ollama_client(setup) as client:
        chat = await client.chat(model="llama3.2", messages=HI, stream=False, think=True)
        generated = await client.generate(model="llama3.2", prompt="hi", stream=False)
    assert chat.message.content == setup.expect(ANSWER)
    assert chat.message.thinking == setup.expect(THINKING)
    assert generated.response == setup.expect(ANSWER)
    setup.check_raw(whole=True)


# --------------------------------------------------------------------------------------------
# requests


PROMPT = f"My key is {SECRETS[0]} — and {SECRETS[2]} 中文 😀"
PROMPT2 = f"mail {SECRETS[3]}, card {SECRETS[4]}, aws {SECRETS[1]}"
SYSTEM = f"You are helpful. Never repeat {SECRETS[2]}."
UNTOUCHED = "sk-not-a-text-but-an-id-0123456789"
"""Put in a field that is not a text: it passes unchanged even where ``redact`` would match."""


def _recorded(setup: Setup, path: str) -> Any:
    bodies = [r for r in setup.app[REQUESTS] if r.path == path]
    assert len(bodies) == 1
    if setup.redacting:
        assert _seen(bodies[0].raw.decode("utf-8", "replace")) == set()
        assert _seen("\x00".join(_json_strings(bodies[0].raw))) == set()
    return bodies[0].json


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_openai_request_text(llm: Start, mode: str) -> None:
    """``messages[].content`` as a string and as text parts, the Responses API's ``input``
    and ``instructions``: redacted by ``request_transforms``; other fields untouched."""
    setup = await llm(openai_app(), "openai", mode)
    image = {"type": "image_url", "image_url": {"url": "https://img.invalid/a.png"}}
    messages: list[Any] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
        {"role": "user", "content": [{"type": "text", "text": PROMPT2}, image]},
    ]
    async with asyncio.timeout(TIMEOUT), openai_client(setup) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, metadata={"note": UNTOUCHED}, store=True
        )
        await client.responses.create(model="gpt-4.1", input=PROMPT, instructions=SYSTEM)
    chat = _recorded(setup, "/v1/chat/completions")
    assert [m["content"] for m in chat["messages"]] == [
        setup.expect(SYSTEM),
        setup.expect(PROMPT),
        [{"type": "text", "text": setup.expect(PROMPT2)}, image],
    ]
    assert chat["metadata"] == {"note": UNTOUCHED}
    assert chat["model"] == "gpt-4o-mini"
    responses = _recorded(setup, "/v1/responses")
    assert (responses["input"], responses["instructions"]) == (
        setup.expect(PROMPT),
        setup.expect(SYSTEM),
    )


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_anthropic_request_text(llm: Start, mode: str) -> None:
    """``system`` (a string, or text blocks) and ``messages[].content`` (a string, or text
    blocks): redacted; ``metadata`` untouched."""
    setup = await llm(anthropic_app(), "anthropic", mode)
    messages: list[Any] = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [{"type": "text", "text": "ok 😀"}]},
        {"role": "user", "content": [{"type": "text", "text": PROMPT2}]},
    ]
    async with asyncio.timeout(TIMEOUT), anthropic_client(setup) as client:
        await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            system=SYSTEM,
            messages=messages,
            metadata={"user_id": UNTOUCHED},
        )
    first = _recorded(setup, "/v1/messages")
    setup.app[REQUESTS].clear()
    async with asyncio.timeout(TIMEOUT), anthropic_client(setup) as client:
        await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            system=[{"type": "text", "text": SYSTEM}],
            messages=messages,
        )
    second = _recorded(setup, "/v1/messages")
    want = [
        setup.expect(PROMPT),
        [{"type": "text", "text": "ok 😀"}],
        [{"type": "text", "text": setup.expect(PROMPT2)}],
    ]
    assert first["system"] == setup.expect(SYSTEM)
    assert [m["content"] for m in first["messages"]] == want
    assert first["metadata"] == {"user_id": UNTOUCHED}
    assert second["system"] == [{"type": "text", "text": setup.expect(SYSTEM)}]
    assert [m["content"] for m in second["messages"]] == want


@pytest.mark.parametrize("mode", WHOLE_CASES)
async def test_ollama_request_text(llm: Start, mode: str) -> None:
    """``messages[].content``, ``prompt`` and ``system``: redacted."""
    setup = await llm(ollama_app(), "ollama", mode)
    async with asyncio.timeout(TIMEOUT), ollama_client(setup) as client:
        await client.chat(
            model="llama3.2",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
            stream=False,
        )
        await client.generate(model="llama3.2", prompt=PROMPT2, system=SYSTEM, stream=False)
    chat = _recorded(setup, "/api/chat")
    assert [m["content"] for m in chat["messages"]] == [setup.expect(SYSTEM), setup.expect(PROMPT)]
    generate = _recorded(setup, "/api/generate")
    assert (generate["prompt"], generate["system"]) == (setup.expect(PROMPT2), setup.expect(SYSTEM))
