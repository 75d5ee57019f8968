"""Provider presets: which values of a provider's stream belong to one text, and where it ends.

Each preset knows its streamed shape (a :class:`~.records.Policy` over SSE events or NDJSON
lines), its non-streamed answer and its request body (selectors for one JSON document), and how
to recognise its stream from a first event (for ``text: auto``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.transform.text.records import ALL, Key, Policy, Record
from proxy.transform.text.selectors import Path, Selector, parse_selector

__all__ = ["PRESET_POLICIES", "REQUEST_FIELDS", "RESPONSE_FIELDS", "detect"]

Texts = list[tuple[Path, str, Key]]
Wholes = list[tuple[Path, str]]


def _str(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if isinstance(value, list)
        else []
    )


def _index(item: dict[str, Any], position: int) -> Any:
    index = item.get("index", position)
    return index if isinstance(index, int | str) else position


# -- OpenAI: Chat Completions, legacy Completions, Responses ---------------------------------

_RESPONSE_DELTAS = {
    "response.output_text.delta": "text",
    "response.refusal.delta": "refusal",
    "response.function_call_arguments.delta": "args",
}
_RESPONSE_DONES = {
    "response.output_text.done": ("text", "text"),
    "response.refusal.done": ("refusal", "refusal"),
    "response.function_call_arguments.done": ("args", "arguments"),
}
_RESPONSE_ENDS_ALL = ("response.completed", "response.incomplete", "response.failed", "error")


def _response_key(obj: dict[str, Any], kind: str) -> Key:
    if kind == "args":
        return ("args", obj.get("item_id"), obj.get("output_index"))
    return (kind, obj.get("item_id"), obj.get("content_index"))


def _output_item_texts(item: Any, prefix: Path) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if not isinstance(item, dict):
        return out
    args = _str(item, "arguments")
    if args is not None:
        out.append(((*prefix, "arguments"), args))
    for j, part in _dicts(item.get("content")):
        for field in ("text", "refusal"):
            value = _str(part, field)
            if value is not None:
                out.append(((*prefix, "content", j, field), value))
    return out


def _chat(obj: dict[str, Any]) -> tuple[Texts, Callable[[Key], bool] | None]:
    """The texts of a Chat Completions (or legacy Completions) chunk, and the texts it ends,
    in one pass over its choices."""
    out: Texts = []
    finished: set[Any] = set()
    calls: dict[Any, set[Any]] = {}  # choice index -> tool calls this chunk carries
    choices = obj.get("choices")
    if type(choices) is not list:
        return out, None
    for p, choice in enumerate(choices):
        if type(choice) is not dict:
            continue
        i = choice.get("index", p)  # as _index(), written out: this runs once an event
        if type(i) is not int and not isinstance(i, int | str):
            i = p
        if choice.get("finish_reason") is not None:
            finished.add(i)
        text = choice.get("text")
        if type(text) is str:
            out.append((("choices", p, "text"), text, ("chat", i, "text")))
        delta = choice.get("delta")
        if type(delta) is not dict:
            continue
        for field in ("content", "refusal"):
            value = delta.get(field)
            if type(value) is str:
                out.append((("choices", p, "delta", field), value, ("chat", i, field)))
        tool_calls = delta.get("tool_calls")
        if tool_calls is None:
            continue
        for q, call in _dicts(tool_calls):
            t = _index(call, q)
            calls.setdefault(i, set()).add(t)
            args = _str(call.get("function"), "arguments")
            if args is not None:
                path = ("choices", p, "delta", "tool_calls", q, "function", "arguments")
                out.append((path, args, ("chat", i, "tool", t)))
    if not finished and not calls:
        return out, None

    def ends(key: Key) -> bool:
        # A choice's text ends at its finish_reason, or (as the SDK's stream helper has it)
        # when its next text starts: the first tool call ends the content, a tool call the
        # one before it.
        if not (isinstance(key, tuple) and key[0] == "chat"):
            return False
        if key[1] in finished:
            return True
        starting = calls.get(key[1])
        if not starting:
            return False
        return key[2] != "tool" or key[3] not in starting

    return out, ends


_CONTENT = ("choices", 0, "delta", "content")


class OpenAIPolicy(Policy):
    __slots__ = ()

    def usual(self, obj: Any) -> tuple[Path, str, Key] | None:
        # A Chat Completions chunk of one choice whose delta carries content alone (no
        # refusal, no tool calls, no finish): what _chat makes of it, read straight off.
        if type(obj) is not dict or "type" in obj:
            return None
        choices = obj.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return None
        choice = choices[0]
        if type(choice) is not dict or choice.get("finish_reason") is not None:
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or "text" in choice:
            return None
        content = delta.get("content")
        if (
            type(content) is not str
            or delta.get("tool_calls") is not None
            or type(delta.get("refusal")) is str
        ):
            return None
        i = choice.get("index", 0)
        if type(i) is not int:
            return None
        return _CONTENT, content, ("chat", i, "content")

    def classify(self, rec: Record) -> tuple[Texts, Callable[[Key], bool] | str | None, Wholes]:
        obj = rec.obj
        if type(obj) is dict and not isinstance(obj.get("type"), str):
            out, ends = _chat(obj)  # a Chat Completions chunk: texts and ends in one pass
            return out, ends, []
        return self.texts(rec), self.ends(rec), self.wholes(rec)

    def texts(self, rec: Record) -> Texts:
        obj = rec.obj
        if type(obj) is not dict:
            return []
        kind = obj.get("type")
        if isinstance(kind, str):
            field = _RESPONSE_DELTAS.get(kind)
            value = _str(obj, "delta")
            if field is None or value is None:
                return []
            return [(("delta",), value, _response_key(obj, field))]
        return _chat(obj)[0]

    def wholes(self, rec: Record) -> list[tuple[Path, str]]:
        obj = rec.obj
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str) or not kind.startswith("response."):
            return []
        done = _RESPONSE_DONES.get(kind)
        if done is not None:
            value = _str(obj, done[1])
            return [((done[1],), value)] if value is not None else []
        if kind.startswith("response.content_part."):
            part = obj.get("part")
            return [
                (("part", f), v) for f in ("text", "refusal") if (v := _str(part, f)) is not None
            ]
        if kind.startswith("response.output_item."):
            return _output_item_texts(obj.get("item"), ("item",))
        response = obj.get("response")
        if isinstance(response, dict):
            out: list[tuple[Path, str]] = []
            for k, item in _dicts(response.get("output")):
                out.extend(_output_item_texts(item, ("response", "output", k)))
            return out
        return []

    def ends(self, rec: Record) -> Callable[[Key], bool] | str | None:
        obj = rec.obj
        if not isinstance(obj, dict):
            return None
        kind = obj.get("type")
        if isinstance(kind, str):
            if kind in _RESPONSE_ENDS_ALL:
                return ALL
            done = _RESPONSE_DONES.get(kind)
            if done is not None:
                key = _response_key(obj, done[0])
                return key.__eq__
            if kind == "response.output_item.done":
                item = obj.get("item")
                item_id = item.get("id") if isinstance(item, dict) else None
                return lambda key: isinstance(key, tuple) and key[1] == item_id
            return None
        return _chat(obj)[1]

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        assert isinstance(key, tuple)
        obj = last.obj
        if key[0] != "chat":
            extra = dict(obj)
            extra["delta"] = text
            if "logprobs" in extra:
                extra["logprobs"] = []
            return Record(extra, last.name)
        head = {k: v for k, v in obj.items() if k not in ("choices", "usage")}
        index, field = key[1], key[2]
        if field == "text":
            choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": None}
        elif field == "tool":
            call = {"index": key[3], "function": {"arguments": text}}
            choice = {"index": index, "delta": {"tool_calls": [call]}, "finish_reason": None}
        else:
            choice = {"index": index, "delta": {field: text}, "finish_reason": None}
        return Record({**head, "choices": [choice]}, last.name)


class _ObjectPolicy(Policy):
    """A provider whose every record is a JSON object: anything else carries no text."""

    __slots__ = ()

    def texts(self, rec: Record) -> Texts:
        obj = rec.obj
        return self.object_texts(obj) if type(obj) is dict else []

    def ends(self, rec: Record) -> Callable[[Key], bool] | str | None:
        obj = rec.obj
        return self.object_ends(obj) if type(obj) is dict else None

    def object_texts(self, obj: dict[str, Any]) -> Texts:
        return []

    def object_ends(self, obj: dict[str, Any]) -> Callable[[Key], bool] | str | None:
        return None


# -- Anthropic Messages ----------------------------------------------------------------------

_BLOCK_FIELDS = {"text": "text", "thinking": "thinking"}
_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}
_DELTA_OF = {"text": "text_delta", "thinking": "thinking_delta", "partial_json": "input_json_delta"}


_TEXT_DELTA = ("delta", "text")


class AnthropicPolicy(_ObjectPolicy):
    __slots__ = ()

    def usual(self, obj: Any) -> tuple[Path, str, Key] | None:
        # a text_delta of a content block (no block starts, stops or messages)
        if type(obj) is not dict or obj.get("type") != "content_block_delta":
            return None
        delta = obj.get("delta")
        if type(delta) is not dict or delta.get("type") != "text_delta":
            return None
        value = delta.get("text")
        if type(value) is not str:
            return None
        return _TEXT_DELTA, value, ("block", obj.get("index"))

    def object_texts(self, obj: dict[str, Any]) -> Texts:
        kind = obj.get("type")
        if kind == "content_block_delta":
            where, fields = "delta", _DELTA_FIELDS
        elif kind == "content_block_start":
            where, fields = "content_block", _BLOCK_FIELDS
        else:
            return []
        part = obj.get(where)  # the text is the field its type names
        field = fields.get(part.get("type")) if isinstance(part, dict) else None
        value = _str(part, field) if field else None
        if value is None:
            return []
        return [((where, field), value, ("block", obj.get("index")))]

    def wholes(self, rec: Record) -> list[tuple[Path, str]]:
        obj = rec.obj
        if not isinstance(obj, dict) or obj.get("type") != "message_start":
            return []
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return [
            (("message", "content", j, f), v)
            for j, block in _dicts(content)
            for f in ("text", "thinking")
            if (v := _str(block, f)) is not None
        ]

    def object_ends(self, obj: dict[str, Any]) -> Callable[[Key], bool] | str | None:
        kind = obj.get("type")
        if kind == "content_block_stop":
            return ("block", obj.get("index")).__eq__
        if kind in ("message_stop", "error"):
            return ALL
        return None

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        assert isinstance(key, tuple)
        obj = last.obj
        if obj.get("type") == "content_block_delta":
            field = _DELTA_FIELDS[obj["delta"]["type"]]
        else:
            field = _BLOCK_FIELDS[obj["content_block"]["type"]]
        delta = {"type": _DELTA_OF[field], field: text}
        extra = {"type": "content_block_delta", "index": key[1], "delta": delta}
        return Record(extra, "content_block_delta")


# -- Ollama ----------------------------------------------------------------------------------


_MESSAGE_CONTENT = ("message", "content")  # the path of the value, and its text's key
_RESPONSE = ("response",)


class OllamaPolicy(_ObjectPolicy):
    __slots__ = ()

    def usual(self, obj: Any) -> tuple[Path, str, Key] | None:
        # a chat chunk's message content, or a generate chunk's response, alone (no thinking,
        # not done)
        if type(obj) is not dict or obj.get("done") is True or type(obj.get("thinking")) is str:
            return None
        message = obj.get("message")
        response = obj.get("response")
        if type(message) is not dict:
            return (_RESPONSE, response, _RESPONSE) if type(response) is str else None
        content = message.get("content")
        if type(content) is not str or type(response) is str:
            return None
        if type(message.get("thinking")) is str:
            return None
        return _MESSAGE_CONTENT, content, _MESSAGE_CONTENT

    def object_texts(self, obj: dict[str, Any]) -> Texts:
        out: Texts = []
        message = obj.get("message")
        for field in ("content", "thinking"):
            value = _str(message, field)
            if value is not None:
                out.append((("message", field), value, ("message", field)))
        for field in ("response", "thinking"):
            value = _str(obj, field)
            if value is not None:
                out.append(((field,), value, (field,)))
        return out

    def object_ends(self, obj: dict[str, Any]) -> Callable[[Key], bool] | str | None:
        return ALL if obj.get("done") is True else None

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        assert isinstance(key, tuple)
        obj = last.obj
        extra: dict[str, Any] = {k: obj[k] for k in ("model", "created_at") if k in obj}
        if key[0] == "message":
            message = obj.get("message") or {}
            extra["message"] = {"role": message.get("role", "assistant"), key[1]: text}
        else:
            extra[key[0]] = text
        extra["done"] = False
        return Record(extra, last.name)


# -- Gemini ----------------------------------------------------------------------------------


class GeminiPolicy(_ObjectPolicy):
    __slots__ = ()

    def object_texts(self, obj: dict[str, Any]) -> Texts:
        out: Texts = []
        for p, cand in _dicts(obj.get("candidates")):
            content = cand.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for q, part in _dicts(parts):
                value = _str(part, "text")
                if value is not None:
                    path = ("candidates", p, "content", "parts", q, "text")
                    out.append((path, value, ("cand", _index(cand, p), bool(part.get("thought")))))
        return out

    def object_ends(self, obj: dict[str, Any]) -> Callable[[Key], bool] | str | None:
        finished = {
            _index(cand, p)
            for p, cand in _dicts(obj.get("candidates"))
            if cand.get("finishReason") is not None
        }
        if not finished:
            return None
        return lambda key: isinstance(key, tuple) and key[1] in finished

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        assert isinstance(key, tuple)
        part: dict[str, Any] = {"text": text}
        if key[2]:
            part["thought"] = True
        cand = {"content": {"parts": [part], "role": "model"}, "index": key[1]}
        extra: dict[str, Any] = {"candidates": [cand]}
        for k in ("modelVersion", "responseId"):
            if k in last.obj:
                extra[k] = last.obj[k]
        return Record(extra, last.name)


PRESET_POLICIES: dict[str, Callable[[], Policy]] = {
    "openai": OpenAIPolicy,
    "anthropic": AnthropicPolicy,
    "ollama": OllamaPolicy,
    "gemini": GeminiPolicy,
}


def _selectors(*fields: str) -> tuple[Selector, ...]:
    return tuple(parse_selector(f) for f in fields)


RESPONSE_FIELDS: dict[str, tuple[Selector, ...]] = {
    "openai": _selectors(
        "choices[*].message.content",
        "choices[*].message.refusal",
        "choices[*].message.tool_calls[*].function.arguments",
        "choices[*].text",
        "output[*].content[*].text",
        "output[*].content[*].refusal",
        "output[*].arguments",
    ),
    "anthropic": _selectors("content[*].text", "content[*].thinking"),
    "ollama": _selectors("message.content", "message.thinking", "response", "thinking"),
    "gemini": _selectors("candidates[*].content.parts[*].text"),
}
"""Non-streamed answers: one JSON document, each value a text of its own."""

REQUEST_FIELDS: dict[str, tuple[Selector, ...]] = {
    "openai": _selectors(
        "messages[*].content",
        "messages[*].content[*].text",
        "input",
        "input[*].content",
        "input[*].content[*].text",
        "instructions",
        "prompt",
        "prompt[*]",
    ),
    "anthropic": _selectors(
        "system", "system[*].text", "messages[*].content", "messages[*].content[*].text"
    ),
    "ollama": _selectors("messages[*].content", "prompt", "system"),
    "gemini": _selectors(
        "contents[*].parts[*].text",
        "systemInstruction.parts[*].text",
        "system_instruction.parts[*].text",
    ),
}
"""Request bodies: the prompt fields of each provider's request."""


def detect(obj: Any, name: str | None) -> str | None:
    """The preset whose stream starts with this record (for ``text: auto``), or None."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if obj.get("object") in ("chat.completion.chunk", "text_completion"):
        return "openai"
    if isinstance(kind, str) and kind.startswith("response."):
        return "openai"
    if kind == "message_start" or name == "message_start":
        return "anthropic"
    if isinstance(obj.get("candidates"), list):
        return "gemini"
    if "model" in obj and "done" in obj and ("message" in obj or "response" in obj):
        return "ollama"
    return None
