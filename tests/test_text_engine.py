"""Text inside structured bodies (``proxy.transform.text.engine``), against whole-body references.

For every format and preset: random answers holding secrets and multi-byte characters, random
delta splits (empty deltas too), random byte splits of the stream, keep-alive comments and
events without text interleaved. The output must parse, hold the same events in the same order
with the same content outside the texts (plus, right before a text's end, at most one event
carrying what a transform still held), and each text must equal its reference.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.redact import redact_reference
from plugins.tag_lines import tag_lines_reference
from proxy.transform.body import UpstreamBody
from proxy.transform.loader import TransformStage, build_stage
from proxy.transform.text.engine import text_body
from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.spec import TextSpec, parse_text

from .test_text_sse import whatwg_events
from .transform_support import chunkings, make_ctx

# Each pattern, with a secret it catches.
CAUGHT = [
    (r"sk-[A-Za-z0-9]{20,}", "sk-" + "aB3dE5fG7hJ9kL1mN2pQ4rS6"),
    (r"AKIA[A-Z0-9]{16}", "AKIA" + "ABCDEFGHIJ123456"),
    (r"(?i)password=\S+", "password=hunter2xyz"),
    (r"[\w.+-]+@[\w-]+\.[\w.]+", "jane.doe@example.com"),
    (r"\b(?:\d[ -]?){13,16}\b", "4111 1111 1111 1111"),
]
PATTERNS = [pattern for pattern, _ in CAUGHT]
SECRETS = [secret for _, secret in CAUGHT]
SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    max_examples=25,
)


def stages(*entries: dict[str, Any]) -> list[TransformStage]:
    problems: list[str] = []
    built = [build_stage(e, f"transforms[{i}]", problems) for i, e in enumerate(entries)]
    assert not problems
    return [s for s in built if s is not None]


REDACT = {"redact": {"patterns": PATTERNS}}
HOLD = {"tests.sample_plugins:HoldTail": {"n": 4}}


def reference(text: str, chain: str) -> str:
    """The whole-text reference of the chains used here."""
    if chain in ("redact", "redact+hold"):
        return redact_reference(text.encode("utf-8", "surrogatepass"), PATTERNS).decode(
            "utf-8", "surrogatepass"
        )
    assert chain == "hold"
    return text


CHAINS = {"redact": [REDACT], "hold": [HOLD], "redact+hold": [REDACT, HOLD]}


def spec(value: Any) -> TextSpec:
    problems: list[str] = []
    parsed = parse_text(value, "text", problems)
    assert parsed is not None, problems
    return parsed


async def run(
    chunks: Sequence[bytes],
    text: Any,
    chain: str = "redact",
    media: str = "text/event-stream",
    direction: str = "response",
) -> bytes:
    ctx = make_ctx()
    ctx.content_type = media
    ctx.direction = direction

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def read() -> bytes:
        return next(pieces, b"")

    pieces = iter(chunks)
    # an upstream's body (its read: b"" at the end) when no piece is empty, as the relay
    # gives it; else any async iterator, empty pieces and all
    body = UpstreamBody(read) if all(chunks) else source()
    out = b""
    async for piece in text_body(body, stages(*CHAINS[chain]), ctx, spec(text)):
        out += piece
    return out


# -- answers -------------------------------------------------------------------------------

WORDS = ["the", "answer", "is", "here:", "naïve", "café", "😀", "中文", "a\nb", 'q"uote', "\\"]


@st.composite
def answers(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(WORDS + SECRETS), min_size=1, max_size=10))
    seps = draw(st.lists(st.sampled_from([" ", ", ", "\n", ""]), min_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps, strict=False))


@st.composite
def deltas(draw: st.DrawFn, text: str) -> list[str]:
    """Split by characters into pieces of 0-12 characters."""
    out, pos = [], 0
    while pos < len(text):
        if draw(st.integers(0, 9)) == 0:
            out.append("")
        n = draw(st.integers(1, 12))
        out.append(text[pos : pos + n])
        pos += n
    return out


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    lines = "".join(f"data: {line}\n" for line in payload.split("\n"))
    return f"{head}{lines}\n".encode()


def parsed_events(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for kind, data, _ in whatwg_events(body):
        out.append((kind, data if data == "[DONE]" else json.loads(data)))
    return out


def no_leak(out: bytes, references: list[str]) -> None:
    """No planted secret is in the output unless the whole-text reference keeps it too (a card
    number run into a word has no boundary for the pattern to end at)."""
    for secret in SECRETS:
        if not any(secret in ref for ref in references):
            assert secret.encode() not in out


def align(got: list[Any], sent: list[Any], blank: Any, is_extra: Any) -> None:
    """``got`` is ``sent`` (compared with texts blanked) with extra remainder events only."""
    j = 0
    for event in got:
        if j < len(sent) and blank(event) == blank(sent[j]):
            j += 1
            continue
        assert is_extra(event, sent[j] if j < len(sent) else None), (event, sent[j:][:1])
    assert j == len(sent)


# -- OpenAI Chat Completions -------------------------------------------------------------


def chat_chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


@st.composite
def chat_streams(
    draw: st.DrawFn, choices: int = 3
) -> tuple[list[bytes], dict[tuple[int, str], str]]:
    n = draw(st.integers(1, choices))
    texts = {(i, "content"): draw(answers()) for i in range(n)}
    if draw(st.booleans()):
        texts[(0, "tool")] = json.dumps({"q": draw(answers())}, ensure_ascii=False)
    queues: dict[int, list[bytes]] = {}
    for i in range(n):
        q = [sse(chat_chunk(i, {"role": "assistant", "content": ""}))]
        q += [sse(chat_chunk(i, {"content": d})) for d in draw(deltas(texts[(i, "content")]))]
        if (i, "tool") in texts:
            head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
            q.append(
                sse(
                    chat_chunk(
                        i, {"tool_calls": [{**head, "function": {"name": "f", "arguments": ""}}]}
                    )
                )
            )
            for d in draw(deltas(texts[(i, "tool")])):
                call = {"index": 0, "function": {"arguments": d}}
                q.append(sse(chat_chunk(i, {"tool_calls": [call]})))
        q.append(sse(chat_chunk(i, {}, "stop")))
        queues[i] = q
    rng = random.Random(draw(st.integers(0, 1000)))
    events: list[bytes] = []
    while any(queues.values()):
        i = rng.choice([k for k, v in queues.items() if v])
        events.append(queues[i].pop(0))
        if rng.random() < 0.1:
            events.append(b": keep-alive\n\n")
    usage = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"t": 1},
    }
    events += [sse(usage), sse("[DONE]")]
    return events, texts


def chat_texts(events: list[tuple[str, Any]]) -> dict[tuple[int, str], str]:
    out: dict[tuple[int, str], str] = {}
    for _, obj in events:
        if obj == "[DONE]":
            continue
        for choice in obj["choices"]:
            delta = choice["delta"]
            i = choice["index"]
            if delta.get("content") is not None:
                out[(i, "content")] = out.get((i, "content"), "") + delta["content"]
            for call in delta.get("tool_calls", ()):
                args = call.get("function", {}).get("arguments")
                if args is not None:
                    out[(i, "tool")] = out.get((i, "tool"), "") + args
    return out


def blank_chat(event: tuple[str, Any]) -> Any:
    kind, obj = event
    if obj == "[DONE]":
        return event
    obj = json.loads(json.dumps(obj))
    for choice in obj["choices"]:
        if "content" in choice["delta"]:
            choice["delta"]["content"] = ""
        for call in choice["delta"].get("tool_calls", ()):
            if "arguments" in call.get("function", {}):
                call["function"]["arguments"] = ""
    return kind, obj


def chat_extra(event: tuple[str, Any], following: Any) -> bool:
    """A remainder event: one choice with text, right before that text's end (the choice's
    finish chunk, or the chunk starting its next text: a tool call)."""
    _, obj = event
    (choice,) = obj["choices"]
    _, nxt = following
    ending = [
        c["index"] for c in nxt["choices"] if c["finish_reason"] or c["delta"].get("tool_calls")
    ]
    return choice["index"] in ending and choice["finish_reason"] is None


async def assert_texts_relayed(
    data: st.DataObject,
    streams: Any,
    texts_of: Any,
    blank: Any,
    extra: Any,
    text: str,
    chain: str,
) -> tuple[bytes, dict[Any, str]]:
    """A stream drawn from ``streams`` run through ``chain`` in drawn chunks: every text
    (``texts_of`` the events out) is its reference and the events align with the ones in.
    The output and the texts drawn."""
    events, texts = data.draw(streams)
    body = b"".join(events)
    out = await run(data.draw(chunkings(body)), text, chain)
    got = parsed_events(out)
    assert texts_of(got) == {k: reference(v, chain) for k, v in texts.items()}
    align(got, parsed_events(body), blank, extra)
    return out, texts


@pytest.mark.parametrize("text", ["openai", "auto"])
@pytest.mark.parametrize("chain", ["redact", "redact+hold"])
@SETTINGS
@given(data=st.data())
async def test_openai_chat_streams(text: str, chain: str, data: st.DataObject) -> None:
    out, texts = await assert_texts_relayed(
        data, chat_streams(), chat_texts, blank_chat, chat_extra, text, chain
    )
    no_leak(out, [reference(v, chain) for v in texts.values()])


# -- OpenAI Responses API --------------------------------------------------------------


@st.composite
def responses_streams(draw: st.DrawFn) -> tuple[list[bytes], str]:
    text = draw(answers())
    item = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": text}
    done_item = {**item, "content": [done_part]}

    def ev(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, kind)

    events = [
        ev("response.created", response={"id": "r", "output": []}),
        ev("response.output_item.added", output_index=0, item=item),
        ev(
            "response.content_part.added",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part=part,
        ),
    ]
    for d in draw(deltas(text)):
        events.append(
            ev(
                "response.output_text.delta",
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=d,
            )
        )
    events += [
        ev(
            "response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=text
        ),
        ev(
            "response.content_part.done",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part=done_part,
        ),
        ev("response.output_item.done", output_index=0, item=done_item),
        ev("response.completed", response={"id": "r", "output": [done_item]}),
    ]
    return events, text


@pytest.mark.parametrize("chain", ["redact", "redact+hold"])
@SETTINGS
@given(data=st.data())
async def test_openai_responses_streams_and_their_repeats(chain: str, data: st.DataObject) -> None:
    events, text = data.draw(responses_streams())
    body = b"".join(events)
    out = await run(data.draw(chunkings(body)), "auto", chain)
    got = parsed_events(out)
    expected = reference(text, chain)
    streamed = "".join(o["delta"] for k, o in got if k == "response.output_text.delta")
    assert streamed == expected
    by_kind = {k: o for k, o in got}
    assert by_kind["response.output_text.done"]["text"] == expected
    assert by_kind["response.content_part.done"]["part"]["text"] == expected
    assert by_kind["response.output_item.done"]["item"]["content"][0]["text"] == expected
    assert by_kind["response.completed"]["response"]["output"][0]["content"][0]["text"] == expected
    no_leak(out, [expected])


# -- Anthropic Messages ------------------------------------------------------------------


@st.composite
def anthropic_streams(draw: st.DrawFn) -> tuple[list[bytes], dict[int, str]]:
    text = draw(answers())
    args = json.dumps({"q": draw(answers())}, ensure_ascii=False)

    def ev(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, kind)

    events = [ev("message_start", message={"id": "m", "content": [], "role": "assistant"})]
    events.append(ev("content_block_start", index=0, content_block={"type": "text", "text": ""}))
    events.append(ev("ping"))
    for d in draw(deltas(text)):
        events.append(ev("content_block_delta", index=0, delta={"type": "text_delta", "text": d}))
    events.append(ev("content_block_stop", index=0))
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    events.append(ev("content_block_start", index=1, content_block=tool))
    for d in draw(deltas(args)):
        delta = {"type": "input_json_delta", "partial_json": d}
        events.append(ev("content_block_delta", index=1, delta=delta))
    events.append(ev("content_block_stop", index=1))
    events.append(
        ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 1})
    )
    events.append(ev("message_stop"))
    return events, {0: text, 1: args}


def anthropic_texts(events: list[tuple[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for _, obj in events:
        if obj.get("type") == "content_block_delta":
            delta = obj["delta"]
            value = delta.get("text", delta.get("partial_json"))
            out[obj["index"]] = out.get(obj["index"], "") + value
    return out


def blank_anthropic(event: tuple[str, Any]) -> Any:
    kind, obj = event
    obj = json.loads(json.dumps(obj))
    if obj.get("type") == "content_block_delta":
        obj["delta"] = {
            k: ("" if k in ("text", "partial_json") else v) for k, v in obj["delta"].items()
        }
    return kind, obj


def anthropic_extra(event: tuple[str, Any], following: Any) -> bool:
    kind, obj = event
    return (
        kind == "content_block_delta"
        and following[1]["type"] == "content_block_stop"
        and following[1]["index"] == obj["index"]
    )


@pytest.mark.parametrize("text", ["anthropic", "auto"])
@pytest.mark.parametrize("chain", ["redact", "redact+hold"])
@SETTINGS
@given(data=st.data())
async def test_anthropic_streams(text: str, chain: str, data: st.DataObject) -> None:
    await assert_texts_relayed(
        data, anthropic_streams(), anthropic_texts, blank_anthropic, anthropic_extra, text, chain
    )


# -- Ollama (NDJSON) and Gemini (SSE) ------------------------------------------------------


@pytest.mark.parametrize("text", ["ollama", "auto"])
@pytest.mark.parametrize("chain", ["redact", "redact+hold"])
@SETTINGS
@given(data=st.data())
async def test_ollama_ndjson_streams(text: str, chain: str, data: st.DataObject) -> None:
    answer = data.draw(answers())
    lines = [
        {
            "model": "m",
            "created_at": "t",
            "message": {"role": "assistant", "content": d},
            "done": False,
        }
        for d in data.draw(deltas(answer))
    ]
    lines.append(
        {
            "model": "m",
            "created_at": "t",
            "message": {"role": "assistant", "content": ""},
            "done": True,
        }
    )
    body = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)
    out = await run(data.draw(chunkings(body)), text, chain, media="application/x-ndjson")
    got = [json.loads(line) for line in out.splitlines()]
    assert "".join(g["message"]["content"] for g in got) == reference(answer, chain)
    assert got[-1]["done"] is True and all(g["done"] is False for g in got[:-1])
    assert len(got) - len(lines) in (0, 1)


@pytest.mark.parametrize("chain", ["redact", "redact+hold"])
@SETTINGS
@given(data=st.data())
async def test_gemini_sse_streams(chain: str, data: st.DataObject) -> None:
    answer = data.draw(answers())
    pieces = data.draw(deltas(answer)) or [""]
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": d}], "role": "model"}, "index": 0}]}
        for d in pieces
    ]
    chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    body = b"".join(sse(c) for c in chunks)
    out = await run(data.draw(chunkings(body)), "auto", chain)
    got = parsed_events(out)
    text = "".join(
        p["text"] for _, o in got for c in o["candidates"] for p in c["content"]["parts"]
    )
    assert text == reference(answer, chain)


# -- the generic forms -------------------------------------------------------------------


@pytest.mark.parametrize("join", [True, False])
@SETTINGS
@given(data=st.data())
async def test_fields_on_sse_join_or_not(join: bool, data: st.DataObject) -> None:
    # one choice: a concrete path is one text (with n > 1 every choice sits at choices[0])
    events, texts = data.draw(chat_streams(choices=1))
    body = b"".join(events)
    fields = {"format": "sse", "fields": ["choices[*].delta.content"], "join": join}
    out = await run(data.draw(chunkings(body)), fields, "redact+hold")
    got = parsed_events(out)
    if join:
        contents = {k: v for k, v in chat_texts(got).items() if k[1] == "content"}
        assert contents == {
            k: reference(v, "redact") for k, v in texts.items() if k[1] == "content"
        }
    else:  # every value a text of its own
        for (_, sent), (_, back) in zip(parsed_events(body), got, strict=True):
            if sent == "[DONE]":
                continue
            for a, b in zip(sent["choices"], back["choices"], strict=True):
                if "content" in a["delta"]:
                    assert b["delta"]["content"] == reference(a["delta"]["content"], "redact")


@pytest.mark.parametrize("cuts", [[], [9], [9, 9]], ids=["whole", "in-two", "an-empty-piece"])
async def test_an_event_cut_off_by_the_end_is_still_transformed(cuts: list[int]) -> None:
    body = sse("first") + f"data: {SECRETS[0]}".encode()  # the last event: no blank line
    bounds = [0, *cuts, len(body)]
    out = await run([body[a:b] for a, b in itertools.pairwise(bounds)], "sse")
    assert out == sse("first") + f"data: {reference(SECRETS[0], 'redact')}".encode()


@SETTINGS
@given(data=st.data())
async def test_sse_mode_transforms_each_events_data_whole(data: st.DataObject) -> None:
    datas = data.draw(st.lists(answers(), min_size=1, max_size=5))
    body = b"".join(sse(d.replace("\r", ""), "e") + b": c\n\nid: 1\n\n" for d in datas)
    ctx_chain = [{"tag_lines": {"tag": "[{n}] "}}]
    ctx = make_ctx()
    ctx.content_type = "text/event-stream"

    async def source() -> AsyncIterator[bytes]:
        for chunk in data.draw(chunkings(body)):
            yield chunk

    out = b"".join([p async for p in text_body(source(), stages(*ctx_chain), ctx, spec("sse"))])
    got = [d for _, d, _ in whatwg_events(out)]
    expected = [
        tag_lines_reference(d.replace("\r", "").encode(), "[{n}] ", "r", "u").decode()
        for d in datas
    ]
    assert got == expected


@SETTINGS
@given(data=st.data())
async def test_openai_non_streamed_answers_and_requests_as_json(data: st.DataObject) -> None:
    answer = data.draw(answers())
    doc = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
    }
    body = json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode()
    out = await run(data.draw(chunkings(body)), "openai", "redact", media="application/json")
    assert json.loads(out)["choices"][0]["message"]["content"] == reference(answer, "redact")
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": answer},
            {"role": "user", "content": [{"type": "text", "text": answer}]},
        ],
    }
    body = json.dumps(request).encode()
    out = await run(
        data.draw(chunkings(body)),
        "openai",
        "redact",
        media="application/json",
        direction="request",
    )
    sent = json.loads(out)
    assert sent["messages"][0]["content"] == reference(answer, "redact")
    assert sent["messages"][1]["content"][0]["text"] == reference(answer, "redact")


# -- latency, fail closed, event transforms ---------------------------------------------


async def test_a_delta_that_cannot_start_a_match_goes_out_with_its_own_event() -> None:
    ctx = make_ctx()
    ctx.content_type = "text/event-stream"
    feed: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        while feed:
            yield feed.pop(0)

    keys = {"redact": {"patterns": [PATTERNS[0]]}}
    body = text_body(source(), stages(keys), ctx, spec("openai"))
    feed.append(sse(chat_chunk(0, {"content": "Hello, "})))
    first = await body.__anext__()
    assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "Hello, "
    # "sk-" may start a key: held, and the event goes out with an empty delta
    feed.append(sse(chat_chunk(0, {"content": "sk-"})))
    held = await body.__anext__()
    assert json.loads(held[6:])["choices"][0]["delta"]["content"] == ""
    feed.append(sse(chat_chunk(0, {"content": "12 then"})))
    released = await body.__anext__()
    assert json.loads(released[6:])["choices"][0]["delta"]["content"] == "sk-12 then"


@pytest.mark.parametrize(
    "bad",
    [b"data: {not json}\n\n", b'data: {"choices": [}\n\n', b"data: " + b"x" * 300 + b"\n\n"],
)
async def test_data_that_does_not_parse_aborts_and_nothing_of_it_goes_out(bad: bytes) -> None:
    good = sse(chat_chunk(0, {"content": "ok "}))
    ctx = make_ctx()
    ctx.content_type = "text/event-stream"
    got: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        yield good
        yield bad
        yield good

    with pytest.raises(TextFormatError):
        async for piece in text_body(
            source(), stages(REDACT), ctx, spec({"preset": "openai", "max_event": 256})
        ):
            got.append(piece)
    assert b"".join(got) == good


async def test_event_transforms_drop_edit_and_add_events() -> None:
    body = b"event: ping\ndata: {}\n\nevent: shout\ndata: hi password=abc\n\ndata: keep\r\n\r\n"
    ctx = make_ctx()
    ctx.content_type = "text/event-stream"
    chain = stages(
        {"tests.sample_plugins:DropPings": {}}, {"redact": {"patterns": [r"(?i)password=\S+"]}}
    )

    async def source() -> AsyncIterator[bytes]:
        yield body

    out = b"".join([p async for p in text_body(source(), chain, ctx, spec("sse"))])
    assert out == (
        b"event: shout\ndata: HI [REDACTED]\n\ndata: keep\r\n\r\nevent: end\ndata: bye\n\n"
    )


@SETTINGS
@given(data=st.data())
async def test_gemini_streamed_as_a_json_array(data: st.DataObject) -> None:
    answer = data.draw(answers())
    pieces = data.draw(deltas(answer)) or [""]
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": d}], "role": "model"}, "index": 0}]}
        for d in pieces
    ]
    if data.draw(st.booleans()):
        chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    body = ("[" + ",\r\n".join(json.dumps(c, ensure_ascii=False) for c in chunks) + "]").encode()
    out = await run(data.draw(chunkings(body)), "gemini", "redact+hold", media="application/json")
    got = json.loads(out)
    text = "".join(p["text"] for o in got for c in o["candidates"] for p in c["content"]["parts"])
    assert text == reference(answer, "redact")
    assert len(got) - len(chunks) in (0, 1)


async def test_auto_reads_other_ndjson_as_one_body() -> None:
    body = b'{"log": "password=abc"}\n{"log": "x"}\n'
    out = await run([body[:5], body[5:]], "auto", "redact", media="application/x-ndjson")
    assert out == redact_reference(body, PATTERNS)


async def test_auto_reads_other_json_as_one_body() -> None:
    body = b'{"choices": [{"message": {"content": "password=abc"}}]}'
    out = await run([body], "auto", "redact", media="application/json")
    assert out == redact_reference(body, PATTERNS)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("opnai", "text: unknown text mode 'opnai' (did you mean 'openai'?)"),
        ({"format": "json", "fields": ["a"], "join": True}, "text.join: a JSON document has no"),
        ({"format": "sse", "fields": ["a..b"]}, "text.fields[0]: an empty key in the selector"),
        ({"format": "xml", "fields": ["a"]}, "text.format: unknown format 'xml'"),
        ({"format": "ndjson"}, "text.fields: required key is missing for format ndjson"),
        ({"preset": "gemni"}, "text.preset: unknown preset 'gemni' (did you mean 'gemini'?)"),
        ({"preset": "openai", "fields": ["a"]}, "text.fields: a preset knows its own fields"),
        ({"format": "sse", "fields": ["a"], "max_event": "lots"}, "text.max_event:"),
        ({"format": "sse", "fieldz": ["a"]}, "text.fieldz: unknown key (did you mean 'fields'?)"),
        (3, "text: must be a mode name"),
    ],
)
def test_bad_text_values_are_config_errors_with_key_paths(value: Any, problem: str) -> None:
    problems: list[str] = []
    assert parse_text(value, "text", problems) is None
    assert any(p.startswith(problem) for p in problems), problems


async def test_request_fields_of_every_preset() -> None:
    secret = SECRETS[0]
    bodies = {
        "gemini": {
            "contents": [{"role": "user", "parts": [{"text": f"a {secret}"}, {"inlineData": {}}]}],
            "systemInstruction": {"parts": [{"text": f"s {secret}"}]},
        },
        "anthropic": {
            "system": [{"type": "text", "text": f"s {secret}"}],
            "messages": [{"role": "user", "content": f"a {secret}"}],
        },
        "ollama": {"prompt": f"a {secret}", "system": f"s {secret}", "model": secret},
        "openai": {"input": [{"role": "user", "content": f"a {secret}"}], "instructions": secret},
    }
    for preset, body in bodies.items():
        raw = json.dumps(body).encode()
        out = await run([raw], preset, "redact", media="application/json", direction="request")
        sent = json.loads(out)
        flat = json.dumps(sent)
        if preset == "ollama":  # model is not a prompt field: it passes as it came
            assert sent["model"] == secret and flat.count(secret) == 1
        else:
            assert secret not in flat, preset
        assert flat.count("[REDACTED]") == 2, preset
