"""The bundled demo's OpenAI-compatible model, read directly and as the README shows it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai import AsyncOpenAI

from proxy.demo import ANSWER, LINES, SECRETS, answer, deltas, demo_app

from .conftest import MakeProxy, origin

ROOT = Path(__file__).parent.parent
HI = [{"role": "user", "content": "hi"}]


def client(server: Any, path: str = "/v1") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=origin(server) + path, api_key="unused", max_retries=0)


def sse_data(body: bytes) -> list[str]:
    """The data of each event of a body that must be exactly ``data: X`` events."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


async def post_chat(server: Any, **body: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(origin(server) + "/v1/chat/completions", json={"model": "demo", **body}) as r,
    ):
        return r, await r.read()


def llm_route() -> dict[str, Any]:
    routes = yaml.safe_load((ROOT / "proxy.yaml").read_text())["routes"]
    return next(r for r in routes if r["name"] == "llm")


def redacted(text: str) -> str:
    """The reference: the llm route's redact rules on the whole text."""
    (entry,) = llm_route()["transforms"]
    for pattern in entry["redact"]["patterns"]:
        text = re.sub(pattern, entry["redact"]["replacement"], text)
    return text


async def test_the_stream_is_openai_sse_that_the_sdk_assembles(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0.5, token_interval=0))
    async with client(server) as llm:
        stream = await llm.chat.completions.create(model="demo", messages=HI, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-demo")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER


async def test_the_wire_format_is_the_one_openai_sends(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0.5, token_interval=0))
    r, body = await post_chat(server, stream=True, messages=HI)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    *data, done = sse_data(body)
    assert done == "[DONE]"
    chunks = [json.loads(d) for d in data]
    first, *content, last = chunks
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert first["object"] == "chat.completion.chunk" and first["model"] == "demo"
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    texts = [c["choices"][0]["delta"]["content"] for c in content]
    assert texts == deltas() and all(1 <= len(t) <= 6 for t in texts)
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert "usage" not in last


def test_every_secret_is_split_across_deltas() -> None:
    for secret in SECRETS:
        assert secret in ANSWER
        assert not any(secret in d for d in deltas())
    assert redacted(ANSWER).count("[REDACTED]") == len(SECRETS)
    assert not any(secret[:6] in redacted(ANSWER) for secret in SECRETS)


def test_the_planted_aws_key_ids_are_exactly_akia_and_16_characters() -> None:
    for text in (ANSWER, *LINES):
        for key in re.findall(r"AKIA[A-Z0-9]*", text):
            assert len(key) == 4 + 16, key
            assert re.sub("AKIA[A-Z0-9]{16}", "[REDACTED]", key) == "[REDACTED]"
    assert any("AKIA" in line for line in LINES)


async def test_a_non_streamed_answer_is_one_chat_completion(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0.5))
    async with client(server) as llm:
        completion = await llm.chat.completions.create(model="demo", messages=HI)
        models = [m.id async for m in llm.models.list()]
        one = await llm.models.retrieve("demo")
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(deltas())
    assert models == ["demo"] and one.id == "demo"


async def test_n_choices_are_interleaved_and_the_sdk_keeps_them_apart(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0.5, token_interval=0))
    r, body = await post_chat(
        server, stream=True, n=3, stream_options={"include_usage": True}, messages=HI
    )
    assert r.status == 200
    *data, usage = [json.loads(d) for d in sse_data(body)[:-1]]
    assert [c["choices"][0]["index"] for c in data[:6]] == [0, 1, 2, 0, 1, 2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    async with client(server) as llm:
        async with llm.chat.completions.stream(model="demo", messages=HI, n=3) as stream:
            final = await stream.get_final_completion()
        plain = await llm.chat.completions.create(model="demo", messages=HI, n=2)
    assert [c.message.content for c in final.choices] == [answer(i, 3) for i in range(3)]
    assert [c.message.content for c in plain.choices] == [answer(i, 2) for i in range(2)]
    assert len({answer(i, 3) for i in range(3)}) == 3


async def test_bad_requests_get_openai_errors(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0.5))
    async with client(server) as llm:
        with pytest.raises(openai.BadRequestError) as info:
            await llm.chat.completions.create(model="demo", messages=HI, n=5)
        assert info.value.param == "n"
        with pytest.raises(openai.NotFoundError):
            await llm.models.retrieve("gpt-4")
    r, body = await post_chat(server, messages=[])
    assert r.status == 400 and json.loads(body)["error"]["param"] == "messages"


async def test_events_stay_valid_sse(aiohttp_server) -> None:
    server = await aiohttp_server(demo_app(0))
    async with aiohttp.ClientSession() as s, s.get(origin(server) + "/events?n=3") as r:
        body = (await r.read()).decode()
    events = body.split("\n\n")
    assert events[-1] == "" and len(events) == 4
    for n, event in enumerate(events[:-1]):
        id_line, data_line = event.split("\n")
        assert id_line == f"id: {n}"
        assert json.loads(data_line.removeprefix("data: ")) == {"seq": n, "line": LINES[n]}


def readme_events_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- events-example -->", 1)[1].split("<!-- /events-example -->")[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_the_readme_events_example_drops_pings_and_adds_an_event() -> None:
    from proxy.transform_api import Event  # the events API

    code = readme_events_example()
    assert len(code.splitlines()) <= 15
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md:events-example", "exec"), namespace)
    transform = namespace["DropPings"]()
    assert transform.events is True

    async def events() -> AsyncIterator[Event]:
        yield Event(data="first", id="1")
        yield Event(event="ping", data="", comments=["keep-alive"])
        yield Event(data="second", event="message", retry=1000)

    out = [e async for e in transform(events(), None)]
    assert [(e.event, e.data, e.id, e.retry) for e in out] == [
        (None, "first", "1", None),
        ("message", "second", None, 1000),
        ("proxy", "end of stream", None, None),
    ]


async def test_the_bundled_llm_route_redacts_the_demo_exactly(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    from proxy.config.models import RouteConfig

    if "text" not in RouteConfig.model_fields:
        pytest.skip("the route option `text` is not implemented yet")
    server = await aiohttp_server(demo_app(0.5, token_interval=0))
    proxy = await make_proxy({"demo": [origin(server)]}, [llm_route()])
    base = proxy.url("/v1")
    async with AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as llm:
        stream = await llm.chat.completions.create(model="demo", messages=HI, stream=True)
        chunks = [chunk async for chunk in stream]
        whole = await llm.chat.completions.create(model="demo", messages=HI)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == redacted(ANSWER)
    assert whole.choices[0].message.content == redacted(ANSWER)
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
