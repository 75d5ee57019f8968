"""The texts inside a stream of JSON records (SSE events' data, NDJSON lines, array elements).

A :class:`Policy` says, for one parsed record, which string values continue which text (values
of one text in successive records are one stream through the transform chain, as a token stream
is), which values are texts of their own (a whole repeat such as a ``*.done`` event, or every
value when ``join`` is off), and which texts end at it. :class:`JsonTexts` applies it: what a
transform still holds moves into that text's next value; when a text ends, what is left goes out
as one more record the policy builds, before the record that ended it (or in that record's own
value of the text, when it carries a non-empty one).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from proxy.transform.text.jsonvalues import (
    load,
    parse,
    paths_of,
    rewrite,
    rewrite_one,
    set_path,
)
from proxy.transform.text.selectors import Path, Selector
from proxy.transform.text.sink import TextSink
from proxy.transform.text.textstream import open_text, transform_whole
from proxy.transform_api import TransformContext

__all__ = ["ALL", "FieldsPolicy", "JsonTexts", "Policy", "Record"]

Key = Hashable
ALL = "*all*"  # ends(): every open text ends here
SENTINELS = (b"[DONE]",)


class Record:
    """A parsed record: its JSON value and its SSE event name (None elsewhere)."""

    __slots__ = ("name", "obj")

    def __init__(self, obj: Any, name: str | None) -> None:
        self.obj = obj
        self.name = name


class Policy:
    """Which values of a record are texts. The default: no text at all."""

    __slots__ = ()

    def texts(self, rec: Record) -> list[tuple[Path, str, Key]]:
        """``(path, value, key)`` of the values that continue (or start) the text ``key``."""
        return []

    def wholes(self, rec: Record) -> list[tuple[Path, str]]:
        """Values that are each a text of their own."""
        return []

    def ends(self, rec: Record) -> Callable[[Key], bool] | str | None:
        """The texts that end at this record: a predicate on keys, ALL, or None."""
        return None

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        """One more record carrying ``text`` for ``key`` (``last`` carried its last value)."""
        raise NotImplementedError

    def usual(self, obj: Any) -> tuple[Path, str, Key] | None:
        """``(path, value, key)`` when the parsed record ``obj`` is the policy's usual one (as a
        token stream's deltas are): one value continuing one text, no text ending and no
        whole value, so that :meth:`classify` would say ``([(path, value, key)], None, [])``;
        None otherwise (the default: no record is)."""
        return None

    def classify(
        self, rec: Record
    ) -> tuple[
        list[tuple[Path, str, Key]], Callable[[Key], bool] | str | None, list[tuple[Path, str]]
    ]:
        """``(texts, ends, wholes)`` of a record at once (a policy may find all three in one
        pass over it)."""
        return self.texts(rec), self.ends(rec), self.wholes(rec)


class FieldsPolicy(Policy):
    """``{format, fields, join}``: the selected values; with ``join`` one text per concrete
    path across records, else each value on its own."""

    __slots__ = ("join", "selectors")

    def __init__(self, selectors: Sequence[Selector], join: bool) -> None:
        self.selectors = tuple(selectors)
        self.join = join

    def texts(self, rec: Record) -> list[tuple[Path, str, Key]]:
        if not self.join:
            return []
        return [(path, value, path) for path, value in paths_of(self.selectors, rec.obj)]

    def wholes(self, rec: Record) -> list[tuple[Path, str]]:
        return [] if self.join else paths_of(self.selectors, rec.obj)

    def remainder(self, key: Key, text: str, last: Record) -> Record:
        obj = copy.deepcopy(last.obj)
        for path, _ in paths_of(self.selectors, obj):
            set_path(obj, path, "")
        set_path(obj, key, text)  # type: ignore[arg-type]
        return Record(obj, last.name)


class _Text:
    """An open text: its stream, and the record that carried its last value, as it came (parsed
    again only if a remainder needs its shape): a few hundred bytes, not a parsed object."""

    __slots__ = ("data", "name", "stream")

    def __init__(self, stream: TextSink) -> None:
        self.stream = stream
        self.data = b""
        self.name: str | None = None


class JsonTexts:
    """Rewrites successive records of one body; keeps each open text's stream."""

    __slots__ = ("_ctx", "_open", "_transforms", "policy")

    def __init__(self, policy: Policy, transforms: Sequence[Any], ctx: TransformContext) -> None:
        self.policy = policy
        self._transforms = transforms
        self._ctx = ctx
        self._open: dict[Key, _Text] = {}

    def quick(self, data: bytes, name: str | None = None) -> bytes | Record | None:
        """:meth:`record` of the policy's usual record, when the text it continues is open and
        its chain never awaits, without a coroutine: the record's new data (``data`` itself
        when unchanged). Otherwise what :meth:`record` is to be given: the record parsed, or
        None where it is not a JSON object."""
        if data[:1] != b"{":
            return None
        obj = parse(data)
        usual = self.policy.usual(obj)
        if usual is not None:
            path, value, key = usual
            text = self._open.get(key)
            if text is not None:
                feed = text.stream.feed_now
                if feed is not None:
                    out = feed(value)
                    text.data, text.name = data, name
                    return data if out == value else rewrite_one(data, path, out, value)
        return Record(obj, name)

    async def record(
        self, data: bytes, name: str | None = None, rec: Record | None = None
    ) -> tuple[list[Record], bytes | None]:
        """``(records to write before it, its new data or None when unchanged)``; ``rec``: the
        record already parsed (by :meth:`quick`)."""
        if rec is None:
            if data[:1] != b"{" and data.strip() in SENTINELS:
                return await self.finish(), None
            rec = Record(parse(data), name)
        policy = self.policy
        texts, ends, wholes = policy.classify(rec)
        opened = self._open
        before: list[Record] = []
        ending: set[Key] = set()
        if ends is not None and (opened or texts):
            carried = {key for _, value, key in texts if value}
            for key in list(opened):
                if ends == ALL or (callable(ends) and ends(key)):
                    if key in carried:
                        ending.add(key)
                    else:
                        await self._close(key, before)
            if callable(ends):
                ending.update(key for _, _, key in texts if key not in opened and ends(key))
            elif ends == ALL:
                ending.update(key for _, _, key in texts)
        changed: dict[Path, str] = {}
        old: dict[Path, str] = {}
        for path, value, key in texts:
            text = opened.get(key)
            if text is None:
                text = opened[key] = _Text(open_text(self._transforms, self._ctx))
            out = await text.stream.feed(value)
            if key in ending:
                out += await text.stream.close()
                del opened[key]
            else:
                text.data, text.name = data, name
            if out != value:
                changed[path] = out
                old[path] = value
        for path, value in wholes:
            out = await transform_whole(self._transforms, self._ctx, value)
            if out != value:
                changed[path] = out
                old[path] = value
        if not changed:
            return before, None
        return before, rewrite(data, changed, old)  # parse() read it as UTF-8

    async def _close(self, key: Key, before: list[Record]) -> None:
        text = self._open.pop(key)
        rest = await text.stream.close()
        if rest:
            before.append(self.policy.remainder(key, rest, Record(load(text.data)[1], text.name)))

    async def finish(self) -> list[Record]:
        """The end of the body (or a sentinel): every open text ends; their remainders."""
        out: list[Record] = []
        for key in list(self._open):
            await self._close(key, out)
        return out
