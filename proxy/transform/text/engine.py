"""A body read the way its route's ``text`` says: the transform chain applied where the text is.

:func:`text_body` is the one entry: it takes the body's chunks (already decoded from any
``Content-Encoding``), the stages that apply to it, their context and the route's
:class:`~.spec.TextSpec`, and yields the rewritten body. ``body`` is the plain chain over the
bytes. The structured forms read records (SSE events, NDJSON lines, a JSON document or a JSON
array's elements), give their texts to the chain and write the records back, each as soon as it
is complete; every byte outside the texts passes as it came.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

from proxy.transform.body import UpstreamBody
from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.jsonstream import JsonArrayFramer, JsonRewriter
from proxy.transform.text.jsonvalues import dumps
from proxy.transform.text.presets import PRESET_POLICIES, REQUEST_FIELDS, RESPONSE_FIELDS, detect
from proxy.transform.text.records import SENTINELS, FieldsPolicy, JsonTexts, Policy
from proxy.transform.text.spec import TextSpec
from proxy.transform.text.sse import SSEReader, SSERecord, data_event, event_bytes, record_to_event
from proxy.transform.text.textstream import open_text, transform_whole
from proxy.transform_api import Event, TransformContext

__all__ = ["text_body"]

Chunks = AsyncIterator[bytes]
JSON_MEDIA = ("application/json",)


class _Body(NamedTuple):
    """One body to read: its chunks, the chain, its context and text spec, and the list that
    tracks every generator made on the way."""

    source: Chunks
    transforms: Sequence[Any]
    ctx: TransformContext
    spec: TextSpec
    gens: list[Any]


def _is_json(media: str) -> bool:
    return media in JSON_MEDIA or media.endswith("+json")


def text_body(
    source: Chunks,
    stages: Sequence[Any],
    ctx: TransformContext,
    spec: TextSpec,
    track: list[Any] | None = None,
) -> Chunks:
    """The body of ``source`` with the transforms of ``stages`` applied where ``spec`` says.

    Every generator made on the way is appended to ``track`` (so the caller can close them all).
    """
    gens = track if track is not None else []
    transforms = [s.transform for s in stages if not getattr(s.transform, "events", False)]
    events = [s.transform for s in stages if getattr(s.transform, "events", False)]
    body = _Body(source, transforms, ctx, spec, gens)
    media = ctx.content_type
    mode = spec.mode
    if mode == "auto":
        if media == "text/event-stream":
            return _sse(body, events, None, sniff=True)
        if media == "application/x-ndjson":
            return _ndjson(body, None, sniff=True)
        return _plain(source, transforms, ctx, gens)
    if mode == "body":
        return _plain(source, transforms, ctx, gens)
    if mode == "sse":
        return _sse(body, events, None)
    if mode == "fields":
        if spec.format == "json":
            return _json(source, transforms, ctx, spec.selectors, spec.max_event)
        policy = FieldsPolicy(spec.selectors, spec.join)
        if spec.format == "ndjson":
            return _ndjson(body, policy)
        return _sse(body, events, policy)
    # a preset
    if ctx.direction == "request":
        if _is_json(media) or not media:
            return _json(source, transforms, ctx, REQUEST_FIELDS[mode], spec.max_event)
        return _plain(source, transforms, ctx, gens)
    if media == "text/event-stream":
        return _sse(body, events, PRESET_POLICIES[mode]())
    if media == "application/x-ndjson":
        return _ndjson(body, PRESET_POLICIES[mode]())
    if _is_json(media):
        if mode == "gemini":
            return _json_or_array(source, transforms, ctx, spec)
        return _json(source, transforms, ctx, RESPONSE_FIELDS[mode], spec.max_event)
    return _plain(source, transforms, ctx, gens)


def _plain(
    source: Chunks, transforms: Sequence[Any], ctx: TransformContext, gens: list[Any]
) -> Chunks:
    it = source
    for transform in transforms:
        if it is not source:
            gens.append(it)  # the one returned is tracked by the caller, as every other form's
        it = transform(it, ctx)
    return it


def _texts(policy: Policy, transforms: Sequence[Any], ctx: TransformContext) -> JsonTexts:
    return JsonTexts(policy, transforms, ctx)


def _take(out: list[bytes]) -> bytes:
    """The pieces joined, and the list emptied."""
    data = b"".join(out)
    out.clear()
    return data


def _dump(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")


# -- Server-Sent Events ----------------------------------------------------------------------


class _Batches:
    """What the reader makes of each chunk (all of it is handled, and written, in one go); the
    reader's last items at the end. A plain object, not a generator: one less frame a stream."""

    __slots__ = ("_read", "_reader", "_source")

    def __init__(self, source: Chunks, reader: SSEReader) -> None:
        self._source: Chunks | None = source.__aiter__()
        # the upstream's own read when the source is its body (b"" at the end), else None
        self._read = source.read if type(source) is UpstreamBody else None
        self._reader = reader

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[bytes | SSERecord]:
        read = self._read
        while self._source is not None:
            if read is not None:
                chunk = await read()
                ended = not chunk
            else:
                try:
                    chunk = await self._source.__anext__()
                    ended = False
                except StopAsyncIteration:
                    ended = True
            if ended:
                self._source = self._read = None
                items = self._reader.close()
                if items:
                    return items
                break
            items = self._reader.feed(chunk)
            if items:
                return items
        raise StopAsyncIteration


async def _records(source: Chunks, reader: SSEReader) -> AsyncIterator[bytes | SSERecord]:
    async for items in _Batches(source, reader):
        for item in items:
            yield item


async def _through_events(
    items: AsyncIterator[bytes | SSERecord],
    events: Sequence[Any],
    ctx: TransformContext,
    limit: int,
    gens: list[Any],
) -> AsyncIterator[bytes | SSERecord]:
    """Records through the event transforms, back as records (raw items are not events)."""

    async def as_events() -> AsyncIterator[Event]:
        async for item in items:
            if isinstance(item, SSERecord):
                yield record_to_event(item)

    it: AsyncIterator[Event] = as_events()
    gens.append(it)
    for transform in events:
        it = transform(it, ctx)
        gens.append(it)
    async for event in it:
        if not isinstance(event, Event):
            raise TypeError(f"an event transform yielded {type(event).__name__}, not an Event")
        source = event.source
        if isinstance(source, tuple) and event.fields() == source[1]:
            yield source[0]
            continue
        data = event_bytes(event)
        if data:
            reader = SSEReader(limit)
            for item in (*reader.feed(data), *reader.close()):
                yield item


async def _sse(
    body: _Body, events: Sequence[Any], policy: Policy | None, *, sniff: bool = False
) -> Chunks:
    source, transforms, ctx, spec, gens = body
    del body  # not kept for the life of the stream
    ctx.charset = "utf-8"  # Server-Sent Events always are
    batches: AsyncIterator[list[bytes | SSERecord]]
    if events:
        items = _records(source, SSEReader(spec.max_event))
        gens.append(items)
        items = _through_events(items, events, ctx, spec.max_event, gens)
        gens.append(items)
        batches = _singly(items)
        gens.append(batches)
    else:
        batches = _Batches(source, SSEReader(spec.max_event))
        gens.append(source)
    texts = _texts(policy, transforms, ctx) if policy is not None else None
    decided = not sniff
    out: list[bytes] = []
    async for items in batches:
        try:
            for item in items:
                if isinstance(item, bytes):
                    out.append(item)
                    continue
                data = item.data
                if data is None:
                    out.append(item.raw)
                    continue
                if not decided:
                    decided = True
                    preset = _sniff(data, item.name)
                    if preset is not None:
                        texts = _texts(PRESET_POLICIES[preset](), transforms, ctx)
                if texts is None:
                    new = await transform_whole(transforms, ctx, data.decode("utf-8", "replace"))
                    new_data = new.encode("utf-8", "surrogatepass")
                    out.append(item.raw if new_data == data else item.with_data(new_data))
                    continue
                try:
                    parsed = texts.quick(data, item.name)
                    if type(parsed) is bytes:  # the usual event, done
                        out.append(item.raw if parsed is data else item.with_data(parsed))
                        continue
                    before, changed = await texts.record(data, item.name, parsed)
                except TextFormatError:
                    if item.complete:
                        raise
                    raise TextFormatError(
                        "the body ended inside an event that is not JSON"
                    ) from None
                for rec in before:
                    out.append(data_event(_dump(rec.obj), rec.name))
                out.append(item.raw if changed is None else item.with_data(changed))
            # what this batch read is not kept while the stream waits for the next one
            items = item = data = changed = before = parsed = None  # type: ignore[assignment]
        except TextFormatError:
            if out:
                yield b"".join(out)  # the events before the one that failed
            raise
        if out:
            yield _take(out)  # not kept in this frame while the client takes it
    if texts is not None:
        rest = await texts.finish()
        if rest:
            yield b"".join(data_event(_dump(rec.obj), rec.name) for rec in rest)


async def _singly(
    items: AsyncIterator[bytes | SSERecord],
) -> AsyncIterator[list[bytes | SSERecord]]:
    async for item in items:
        yield [item]


def _sniff(data: bytes, name: str | None) -> str | None:
    if data.strip() in SENTINELS:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return detect(obj, name)


# -- NDJSON ----------------------------------------------------------------------------------


async def _ndjson(body: _Body, policy: Policy | None, *, sniff: bool = False) -> Chunks:
    source, transforms, ctx, spec, gens = body
    del body  # not kept for the life of the stream
    limit = spec.max_event
    buf = b""
    texts = None
    if policy is not None:
        ctx.charset = "utf-8"  # JSON is
        texts = _texts(policy, transforms, ctx)
    ended_line = True  # the output so far ends at a line end
    it = source.__aiter__()
    if sniff:
        async for chunk in it:
            buf += chunk
            line, nl, _ = buf.partition(b"\n")
            if nl and line.strip():
                break
            if len(buf) > limit:
                break
        preset = None
        line = buf.split(b"\n", 1)[0]
        if line.strip():
            try:
                preset = detect(json.loads(line), None)
            except (ValueError, RecursionError):
                preset = None
        if preset is None:
            held = _prepend(buf, it)
            body = _plain(held, transforms, ctx, gens)
            gens += (held, body)
            async for out in body:
                yield out
            return
        ctx.charset = "utf-8"
        texts = _texts(PRESET_POLICIES[preset](), transforms, ctx)
    assert texts is not None

    async def lines(data: bytes, final: bool) -> bytes:
        nonlocal ended_line
        out: list[bytes] = []
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                if not final or pos == len(data):
                    break
                end = len(data)
            line = data[pos:end]
            term = data[end : end + 1]
            pos = end + 1
            if not line.strip():
                out.append(line + term)
                continue
            parsed = texts.quick(line)
            if type(parsed) is bytes:  # the usual line, done (itself when unchanged)
                out.append(parsed + term)
                continue
            before, changed = await texts.record(line, None, parsed)
            for rec in before:
                out.append(_dump(rec.obj) + b"\n")
            out.append((line if changed is None else changed) + term)
        if out:
            ended_line = out[-1].endswith(b"\n")
        rest = data[pos:] if pos < len(data) else b""
        if len(rest) > limit:
            raise TextFormatError(f"a line is longer than max_event ({limit} bytes)")
        return b"".join(out), rest  # type: ignore[return-value]

    async for chunk in it:
        if not chunk:
            continue
        buf += chunk
        out, buf = await lines(buf, False)  # type: ignore[misc]
        if out:
            yield out
    out, buf = await lines(buf, True)  # type: ignore[misc]
    rest = await texts.finish()
    tail = b"".join(_dump(rec.obj) + b"\n" for rec in rest)
    if tail and not ended_line:
        tail = b"\n" + tail
    if out or tail:
        yield out + tail


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> Chunks:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


# -- one JSON document -----------------------------------------------------------------------


async def _json(
    source: Chunks,
    transforms: Sequence[Any],
    ctx: TransformContext,
    selectors: Sequence[Any],
    limit: int,
) -> Chunks:
    ctx.charset = "utf-8"
    rewriter = JsonRewriter(selectors, lambda _path: open_text(transforms, ctx), limit)
    async for chunk in source:
        out = await rewriter.feed(chunk)
        if out:
            yield out
    out = await rewriter.close()
    if out:
        yield out


async def _json_or_array(
    source: Chunks, transforms: Sequence[Any], ctx: TransformContext, spec: TextSpec
) -> Chunks:
    """Gemini answers as one object, or streamed as a JSON array of response chunks."""
    it = source.__aiter__()
    head = b""
    async for chunk in it:
        head += chunk
        if head.lstrip():
            break
    if not head.lstrip().startswith(b"["):
        async for out in _json(
            _prepend(head, it), transforms, ctx, RESPONSE_FIELDS["gemini"], spec.max_event
        ):
            yield out
        return
    ctx.charset = "utf-8"
    texts = _texts(PRESET_POLICIES["gemini"](), transforms, ctx)
    framer = JsonArrayFramer(spec.max_event)

    async def handle(pieces: list[tuple[str, bytes]]) -> bytes:
        out: list[bytes] = []
        for kind, data in pieces:
            if kind == "element":
                parsed = texts.quick(data)
                if type(parsed) is bytes:  # the usual element, done (itself when unchanged)
                    out.append(parsed)
                    continue
                before, changed = await texts.record(data, None, parsed)
                out.extend(_dump(rec.obj) + b"," for rec in before)
                out.append(data if changed is None else changed)
            elif b"]" in data:
                rest = await texts.finish()
                at = data.index(b"]")
                extra = b"".join(b"," + _dump(rec.obj) for rec in rest)
                out.append(data[:at] + extra + data[at:])
            else:
                out.append(data)
        return b"".join(out)

    async for chunk in _prepend(head, it):
        out = await handle(framer.feed(chunk))
        if out:
            yield out
    out = await handle(framer.close())
    if out:
        yield out
