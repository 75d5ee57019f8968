"""The usual record's short way (``Policy.usual``, ``JsonTexts.quick``) says what the long one
says.

A preset reads a token stream's usual record (one delta continuing one text) without building
its whole classification, and :meth:`JsonTexts.quick` rewrites it without a coroutine. Two
properties keep that honest: wherever ``usual`` answers, ``classify`` gives exactly that one
text, nothing ending and no whole value; and a stream read through ``quick`` (then ``record``
where it declines) gives byte for byte what ``record`` alone gives, remainders included.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.transform.loader import build_stage
from proxy.transform.text.presets import PRESET_POLICIES
from proxy.transform.text.records import JsonTexts, Policy, Record

from .transform_support import make_ctx

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=300,
)

Mutation = Callable[[dict[str, Any]], None]
ODD = [None, 0, 1, True, "x", "", [], {}, 2.5]  # values of every JSON type


def _choice(obj: dict[str, Any]) -> dict[str, Any]:
    choices = obj.get("choices")
    ok = type(choices) is list and choices and type(choices[0]) is dict
    return choices[0] if ok else {}  # type: ignore[index]


def _delta(obj: dict[str, Any]) -> dict[str, Any]:
    delta = _choice(obj).get("delta")
    return delta if type(delta) is dict else {}


def _set(get: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    return lambda obj: get(obj).__setitem__(key, value)


def _drop(get: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Mutation:
    return lambda obj: get(obj).pop(key, None)


def _top(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


def _anthropic_delta(obj: dict[str, Any]) -> dict[str, Any]:
    delta = obj.get("delta")
    return delta if type(delta) is dict else {}


def _message(obj: dict[str, Any]) -> dict[str, Any]:
    message = obj.get("message")
    return message if type(message) is dict else {}


def _each(get: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> list[Mutation]:
    return [_set(get, key, v) for v in ODD] + [_drop(get, key)]


def _second_choice(obj: dict[str, Any]) -> None:
    choices = obj.get("choices")
    if type(choices) is list:
        choices.append(copy.deepcopy(_choice(obj)) or {"index": 1})


# (canonical usual records, the ways they may be changed) of each preset that has a usual one
CASES: dict[str, tuple[list[dict[str, Any]], list[Mutation]]] = {
    "openai": (
        [
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "he"}, "finish_reason": None}],
            },
            {"choices": [{"index": 3, "delta": {"content": "", "role": "assistant"}}]},
            {"choices": [{"index": 9, "delta": {"content": "x", "tool_calls": None}}]},
        ],
        [
            *_each(_top, "type"),
            *_each(_top, "choices"),
            _second_choice,
            *_each(_choice, "index"),
            _set(_choice, "index", "0"),
            _set(_choice, "index", 42),
            *_each(_choice, "finish_reason"),
            _set(_choice, "finish_reason", "stop"),
            *_each(_choice, "text"),
            *_each(_choice, "delta"),
            *_each(_delta, "content"),
            *_each(_delta, "refusal"),
            *_each(_delta, "tool_calls"),
            _set(_delta, "tool_calls", [{"index": 0, "function": {"arguments": "{"}}]),
            _set(_choice, "logprobs", None),
        ],
    ),
    "anthropic": (
        [
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "a"},
            },
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "text_delta", "text": ""},
            },
        ],
        [
            *_each(_top, "type"),
            *[_set(_top, "type", t) for t in ("content_block_start", "content_block_stop")],
            *[_set(_top, "type", t) for t in ("message_start", "message_stop", "error")],
            *_each(_top, "index"),
            *_each(_top, "delta"),
            *_each(_anthropic_delta, "type"),
            *[_set(_anthropic_delta, "type", t) for t in ("thinking_delta", "input_json_delta")],
            *_each(_anthropic_delta, "text"),
            _set(_anthropic_delta, "partial_json", "{"),
            _set(_anthropic_delta, "thinking", "hm"),
        ],
    ),
    "ollama": (
        [
            {
                "model": "m",
                "created_at": "t",
                "message": {"role": "assistant", "content": "hi"},
                "done": False,
            },
            {"model": "m", "response": "hi", "done": False},
            {"message": {"content": ""}},
        ],
        [
            *_each(_top, "done"),
            *_each(_top, "message"),
            *_each(_top, "response"),
            *_each(_top, "thinking"),
            *_each(_message, "content"),
            *_each(_message, "thinking"),
            _set(_top, "done_reason", "stop"),
        ],
    ),
}


def test_every_preset_without_a_usual_record_is_known() -> None:
    """Gemini has no usual record (its texts are in parts of candidates): ``usual`` is None."""
    assert set(PRESET_POLICIES) - set(CASES) == {"gemini"}
    assert PRESET_POLICIES["gemini"]().usual({"candidates": []}) is None
    assert Policy().usual({}) is None


@pytest.mark.parametrize("preset", sorted(CASES))
def test_the_canonical_records_are_usual(preset: str) -> None:
    policy = PRESET_POLICIES[preset]()
    for obj in CASES[preset][0]:
        assert policy.usual(obj) is not None, obj


@pytest.mark.parametrize("preset", sorted(CASES))
@SETTINGS
@given(data=st.data())
def test_usual_says_what_classify_says(preset: str, data: st.DataObject) -> None:
    canonical, mutations = CASES[preset]
    obj = copy.deepcopy(data.draw(st.sampled_from(canonical)))
    for mutate in data.draw(st.lists(st.sampled_from(mutations), max_size=3)):
        mutate(obj)
    policy = PRESET_POLICIES[preset]()
    usual = policy.usual(obj)
    if usual is not None:
        texts, ends, wholes = policy.classify(Record(obj, None))
        assert (texts, ends, wholes) == ([usual], None, [])


# -- quick + record == record ---------------------------------------------------------------

PATTERNS = [r"sk-[A-Za-z0-9]{20,}", r"[\w.+-]+@[\w-]+\.[\w.]+", r"\b(?:\d[ -]?){13,16}\b"]
CHAINS: dict[str, list[dict[str, Any]]] = {
    "redact": [{"redact": {"patterns": PATTERNS}}],  # streams that take text
    "literal": [{"redact": {"patterns": ["hunter2", "sk-live"]}}],  # streams on the bytes
    "hold": [{"tests.sample_plugins:HoldTail": {"n": 4}}],  # an async chain: quick declines
}
PIECES = [
    "the",
    " answer",
    " is",
    " jane",
    ".doe@",
    "exa",
    "mple.com",
    " sk-",
    "live",
    "hunter",
    "2",
]
PIECES += [" 4111", " 1111 ", "1111 1111", "\n", "😀", "中", 'q"', "\\", ""]


def openai_stream(rng: random.Random) -> list[tuple[bytes, str | None]]:
    out = []
    n = rng.randint(1, 3)
    for k in range(rng.randint(1, 30)):
        i = rng.randrange(n)
        if rng.random() < 0.1:
            choice = {"index": i, "delta": {}, "finish_reason": "stop"}
        else:
            choice = {"index": i, "delta": {"content": rng.choice(PIECES)}, "finish_reason": None}
        out.append({"id": "c", "created": k, "model": "m", "choices": [choice]})
    return [(json.dumps(o, ensure_ascii=False).encode(), None) for o in out] + [(b"[DONE]", None)]


def anthropic_stream(rng: random.Random) -> list[tuple[bytes, str | None]]:
    out = []
    for k in range(rng.randint(1, 30)):
        block = rng.randrange(2)
        r = rng.random()
        if r < 0.1:
            out.append(({"type": "content_block_stop", "index": block}, "content_block_stop"))
        elif r < 0.15:
            start = {"type": "text", "text": rng.choice(PIECES)}
            obj = {"type": "content_block_start", "index": block, "content_block": start}
            out.append((obj, "content_block_start"))
        else:
            delta = {"type": "text_delta", "text": rng.choice(PIECES), "n": k}
            obj = {"type": "content_block_delta", "index": block, "delta": delta}
            out.append((obj, "content_block_delta"))
    out.append(({"type": "message_stop"}, "message_stop"))
    return [(json.dumps(o, ensure_ascii=False).encode(), name) for o, name in out]


def ollama_stream(rng: random.Random) -> list[tuple[bytes, str | None]]:
    field = rng.choice(["message", "response"])
    out = []
    for k in range(rng.randint(1, 30)):
        piece = rng.choice(PIECES)
        value = {"role": "assistant", "content": piece} if field == "message" else piece
        out.append({"model": "m", "created_at": str(k), field: value, "done": False})
    out.append({"model": "m", "created_at": "end", "done": True})
    return [(json.dumps(o, ensure_ascii=False).encode(), None) for o in out]


STREAMS = {"openai": openai_stream, "anthropic": anthropic_stream, "ollama": ollama_stream}


async def read(
    preset: str, chain: str, records: list[tuple[bytes, str | None]], quick: bool
) -> Any:
    ctx = make_ctx()
    problems: list[str] = []
    stages = [build_stage(e, f"t[{i}]", problems) for i, e in enumerate(CHAINS[chain])]
    assert not problems
    texts = JsonTexts(PRESET_POLICIES[preset](), [s.transform for s in stages if s], ctx)
    out: list[Any] = []
    quick_ones = 0
    for data, name in records:
        parsed = texts.quick(data, name) if quick else None
        if type(parsed) is bytes:
            quick_ones += 1
            out.append(([], parsed if parsed != data else None))
            continue
        before, changed = await texts.record(data, name, parsed)  # type: ignore[arg-type]
        out.append(([(r.obj, r.name) for r in before], changed))
    finish = [(r.obj, r.name) for r in await texts.finish()]
    return out, finish, quick_ones


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("preset", sorted(STREAMS))
@settings(deadline=None, database=None, max_examples=60)
@given(seed=st.integers(0, 2**32))
async def test_quick_then_record_is_record(preset: str, chain: str, seed: int) -> None:
    records = STREAMS[preset](random.Random(seed))
    got, got_finish, quick_ones = await read(preset, chain, records, quick=True)
    want, want_finish, _ = await read(preset, chain, records, quick=False)
    assert got == want
    assert got_finish == want_finish
    if chain == "hold":
        assert quick_ones == 0  # the chain may await: quick never feeds it


def one_text(preset: str, pieces: list[str]) -> list[tuple[bytes, str | None]]:
    """Usual records only, all of one text."""
    objs: list[Any]
    if preset == "openai":
        objs = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    elif preset == "anthropic":
        objs = [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ]
    else:
        objs = [{"message": {"role": "assistant", "content": p}, "done": False} for p in pieces]
    return [(json.dumps(o).encode(), None) for o in objs]


@pytest.mark.parametrize("chain", ["redact", "literal"])
@pytest.mark.parametrize("preset", sorted(STREAMS))
async def test_quick_takes_every_usual_record_of_an_open_text(preset: str, chain: str) -> None:
    """``record`` reads the first record (it opens the text), ``quick`` every other one."""
    records = one_text(preset, PIECES)
    policy = PRESET_POLICIES[preset]()
    assert all(policy.usual(json.loads(data)) is not None for data, _ in records)
    got, finish, quick_ones = await read(preset, chain, records, quick=True)
    assert quick_ones == len(records) - 1
    assert (got, finish) == (await read(preset, chain, records, quick=False))[:2]
