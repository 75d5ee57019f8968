"""The SSE reader and writer (``proxy.transform.text.sse``): WHATWG parsing, any split equal to
the whole, unchanged events written back byte for byte, changed ones still valid SSE."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.sse import (
    SSEReader,
    SSERecord,
    event_bytes,
    join_items,
    parse_all,
    record_to_event,
)
from proxy.transform_api import Event

from .transform_support import chunkings


def whatwg_events(body: bytes) -> list[tuple[str, str, str | None]]:
    """A reference decoder written from the spec, on the whole body: ``(type, data, last id)``
    of every event a browser would dispatch."""
    text = body.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    pos = 0
    while pos < len(text):
        ends = [i for i in (text.find("\r", pos), text.find("\n", pos)) if i >= 0]
        if not ends:
            break  # an unterminated last line is discarded
        end = min(ends)
        lines.append(text[pos:end])
        pos = end + (2 if text.startswith("\r\n", end) else 1)
    events = []
    data: list[str] = []
    kind = ""
    last_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                events.append((kind or "message", "\n".join(data), last_id))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\x00" not in value:
            last_id = value
    return events


def our_events(items: list[bytes | SSERecord]) -> list[tuple[str, str, str | None]]:
    """The same view of what our reader read (complete events only, as a browser does)."""

    def browser(text: str) -> str:  # our fields keep undecodable bytes; a browser replaces them
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    events = []
    last_id: str | None = None
    for item in items:
        if isinstance(item, bytes):
            continue
        event = record_to_event(item)
        if event.id is not None and item.complete:
            last_id = browser(event.id)
        if item.complete and event.data is not None:
            events.append((browser(event.event or "message"), browser(event.data), last_id))
    return events


_VALUE = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=8
)
_LINE = st.one_of(
    st.builds(lambda v: f"data: {v}", _VALUE),
    st.builds(lambda v: f"data:{v}", _VALUE),
    st.just("data"),
    st.builds(lambda v: f": {v}", _VALUE),
    st.builds(lambda v: f"event: {v}", _VALUE),
    st.builds(lambda v: f"id: {v}", _VALUE),
    st.builds(lambda v: f"retry: {v}", st.sampled_from(["10", "x", ""])),
    st.builds(lambda v: f"other: {v}", _VALUE),
    st.just(""),
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    ends = st.sampled_from(["\n", "\r\n", "\r"])
    lines = draw(st.lists(st.tuples(_LINE, ends), max_size=24))
    text = "".join(line + end for line, end in lines)
    if draw(st.booleans()):
        text += draw(_LINE)  # the last event without its blank line (or an unended line)
    body = text.encode()
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    if draw(st.booleans()):
        body += b"\xff\xfe bad utf-8\n\n"
    return body


def read(chunks: list[bytes], max_event: int = 1 << 20) -> list[bytes | SSERecord]:
    reader = SSEReader(max_event)
    items: list[bytes | SSERecord] = []
    for chunk in chunks:
        items.extend(reader.feed(chunk))
    items.extend(reader.close())
    return items


def shape(items: list[bytes | SSERecord]) -> list[object]:
    """What was read, but where each line's LF fell: an event ended by a CR is released at once,
    so the LF of a CRLF split from it by a chunk boundary goes out on its own."""
    return [
        (tuple(line.rstrip(b"\r\n") for line in i.lines), i.data, i.name, i.complete)
        for i in items
        if not isinstance(i, bytes)
    ]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_split_reads_as_the_whole_and_writes_back_byte_for_byte(data: st.DataObject) -> None:
    body = data.draw(streams())
    chunks = data.draw(chunkings(body))
    whole = parse_all(body)
    items = read(chunks)
    assert join_items(items) == body
    assert shape(items) == shape(whole)
    assert our_events(items) == whatwg_events(body)
    # unchanged events go out as they came
    assert (
        b"".join(i if isinstance(i, bytes) else event_bytes(record_to_event(i)) for i in items)
        == body
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_events_chunk_by_chunk_read_as_the_whole(data: st.DataObject) -> None:
    """Each event its own chunk, as an upstream writes them (the reader's shortcut for a chunk
    that is one whole event), some of them split again; mixed with every other kind of line."""
    body = data.draw(streams())
    whole = parse_all(body)
    chunks: list[bytes] = []
    for item in whole:
        raw = item if isinstance(item, bytes) else item.raw
        chunks.extend(data.draw(chunkings(raw)) if data.draw(st.booleans()) else [raw])
    items = read(chunks)
    assert join_items(items) == body
    assert shape(items) == shape(whole)
    assert our_events(items) == whatwg_events(body)


def test_a_chunk_of_one_whole_event_is_read_at_once_and_within_max_event() -> None:
    reader = SSEReader(20)
    assert reader.feed(b"\xef\xbb\xbfdata: a\n\n")[1].data == b"a"  # past the BOM
    (record,) = reader.feed(b'data: {"x":1}\n\n')
    assert (record.data, record.lines, record.complete) == (
        b'{"x":1}',
        [b'data: {"x":1}\n', b"\n"],
        True,
    )
    (record,) = reader.feed(b"data: \n\n")
    assert record.data == b""
    assert reader.feed(b"data: a\n") == []  # an event begun before it: not the shortcut
    (record,) = reader.feed(b"data: b\n\n")
    assert record.data == b"a\nb"
    (record,) = reader.feed(b"data: c\r\r")  # a CR last: an LF may follow
    (record,) = reader.feed(b"data: d\n\n")  # ... and did not: the CR was a line end alone
    assert record.data == b"d"
    fresh = SSEReader(20)
    assert fresh.feed(b"data: a\n\n")[0].data == b"a"
    (record,) = fresh.feed(b"\xef\xbb\xbfdata: b\n\n")  # a BOM past the start is no BOM
    assert record.data is None
    blank, record = reader.feed(b"\ndata: e\n\n")
    assert isinstance(blank, SSERecord) and blank.lines == [b"\n"]  # an empty event
    assert record.data == b"e"
    with pytest.raises(TextFormatError):
        reader.feed(b"data: " + b"x" * 20 + b"\n\n")


@settings(max_examples=200, deadline=None)
@given(streams(), st.text(max_size=12))
def test_a_changed_event_keeps_its_other_lines_and_reads_back(body: bytes, new: str) -> None:
    items = parse_all(body)
    for item in items:
        if isinstance(item, bytes) or not item.complete:
            continue
        rewritten = item.with_data(new.encode("utf-8", "surrogatepass"))
        (again,) = [i for i in parse_all(rewritten) if not isinstance(i, bytes)]
        expected = new.replace("\r\n", "\n").replace("\r", "\n")
        assert again.data == expected.encode("utf-8", "surrogatepass")
        assert again.name == item.name

        def others(lines: list[bytes]) -> list[bytes]:  # a bare CR may have become a CRLF
            return [line.rstrip(b"\r\n") for line in lines if not line.startswith(b"data")]

        assert others(again.lines) == others(item.lines)


@st.composite
def lf_streams(draw: st.DrawFn) -> bytes:
    """LF line ends only, mostly the usual events (one data line and a blank line)."""
    usual = st.builds(lambda v: f"data: {v}\n\n", _VALUE)
    other = st.builds(lambda line: f"{line}\n", _LINE)
    return "".join(draw(st.lists(st.one_of(usual, usual, other), max_size=16))).encode()


@settings(max_examples=200, deadline=None)
@given(st.data(), st.text(max_size=12))
def test_the_usual_events_read_and_write_as_their_lines(data: st.DataObject, new: str) -> None:
    """The reader keeps a usual event's bytes unsplit: each record, read at once or in pieces,
    is the event its lines make, and writes new data as that one does."""
    body = data.draw(lf_streams())
    value = new.encode("utf-8", "surrogatepass")
    for chunks in ([body], data.draw(chunkings(body))):
        for item in read(chunks):
            if isinstance(item, bytes):
                continue
            from_lines = SSERecord(list(item.lines), item.complete)
            assert (item.raw, item.data, item.name) == (
                from_lines.raw,
                from_lines.data,
                from_lines.name,
            )
            assert item.with_data(value) == from_lines.with_data(value)


def test_the_whatwg_cases() -> None:
    body = (
        b"\xef\xbb\xbf: comment\r\n"
        b"event: add\rdata: a\rdata:b\r\r"
        b"data\n\n"
        b"id: 7\ndata: x\n\n"
        b"data: tail"
    )
    items = read([body[i : i + 1] for i in range(len(body))])
    records = [i for i in items if isinstance(i, SSERecord)]
    assert [(r.name, r.data, r.complete) for r in records] == [
        ("add", b"a\nb", True),
        (None, b"", True),
        (None, b"x", True),
        (None, b"tail", False),
    ]
    assert items[0] == b"\xef\xbb\xbf"
    assert join_items(items) == body


def test_an_event_is_released_the_moment_its_blank_line_arrives() -> None:
    reader = SSEReader(1 << 20)
    assert reader.feed(b"data: one\n") == []
    (record,) = reader.feed(b"\n")
    assert isinstance(record, SSERecord) and record.data == b"one"
    # a CR at the end of a chunk ends the line at once; an LF after it is half of a CRLF
    (record,) = [*reader.feed(b"data: two\r\r")]
    assert record.data == b"two"
    assert reader.feed(b"\n") == [b"\n"]


def test_an_event_over_max_event_fails_closed() -> None:
    reader = SSEReader(100)
    reader.feed(b"data: " + b"x" * 50)
    with pytest.raises(TextFormatError):
        reader.feed(b"x" * 60)


def test_new_and_edited_events_are_written_from_their_fields() -> None:
    assert event_bytes(Event("a\nb", event="e", id="1", retry=5, comments=["hi"])) == (
        b":hi\nevent: e\nid: 1\nretry: 5\ndata: a\ndata: b\n\n"
    )
    (record,) = [i for i in parse_all(b"event: e\r\ndata: old\r\n\r\n") if isinstance(i, SSERecord)]
    event = record_to_event(record)
    event.data = "new"
    assert event_bytes(event) == b"event: e\r\ndata: new\r\n\r\n"
    event.event = "other"
    assert event_bytes(event) == b"event: other\ndata: new\n\n"
