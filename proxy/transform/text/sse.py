"""Server-Sent Events read from byte chunks and written back, byte for byte where unchanged.

The reader follows the WHATWG parsing rules: lines end at CRLF, LF or CR (a CR at the end of a
chunk may be the first half of a CRLF); a UTF-8 BOM at the start is skipped; a line starting
with ``:`` is a comment; ``field: value`` (one leading space of the value dropped), or a field
name alone with an empty value; ``data`` lines are joined with ``\\n``; a blank line ends an
event, and the event is released the moment its blank line has arrived. An event cut off by the
end of the body is still read (marked incomplete) so that its data is never passed untransformed.

Each :class:`SSERecord` keeps the exact bytes of its lines, so an event whose data did not change
is written back as it came, and a changed one keeps every line but its ``data`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proxy.transform.text.errors import TextFormatError
from proxy.transform_api import Event

__all__ = ["SSEReader", "SSERecord", "event_bytes", "record_to_event"]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSERecord:
    """One event as read: its raw lines (terminators included) and its parsed fields."""

    __slots__ = ("_lines", "_usual", "complete", "data", "name")

    def __init__(
        self,
        lines: list[bytes] | None,
        complete: bool,
        data: bytes | None = None,
        usual: bytes | None = None,
    ) -> None:
        self._lines = lines  # the last one is the blank line when complete
        self._usual = usual  # the event's bytes when it is the usual one (its lines unsplit)
        self.complete = complete
        if data is not None:  # the reader read it as the usual event
            self.data = data
            self.name = None
            return
        assert lines is not None
        if len(lines) == 2 and complete and lines[0].startswith(b"data: "):
            self.data = lines[0][6:].rstrip(b"\r\n")  # the usual event: one data line
            self.name = None
            return
        data: list[bytes] | None = None
        name: bytes | None = None
        for line in lines:
            field, value = _split(line)
            if field == b"data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif field == b"event":
                name = value
        self.data = None if data is None else b"\n".join(data)
        self.name = None if name is None else name.decode("utf-8", "replace")

    @classmethod
    def usual(cls, event: bytes) -> SSERecord:
        """The usual event, ``data: <data>\\n\\n`` and no other line (the reader checked)."""
        return cls(None, True, event[6:-2], event)

    @property
    def lines(self) -> list[bytes]:
        lines = self._lines
        if lines is None:
            event = self._usual
            assert event is not None
            lines = self._lines = [event[:-1], b"\n"]
        return lines

    @property
    def raw(self) -> bytes:
        usual = self._usual
        return usual if usual is not None else b"".join(self.lines)

    def with_data(self, data: bytes) -> bytes:
        """The event with new data: every other line as it came, the data lines in place of
        the first old one (after the last line when it had none)."""
        if self._usual is not None and b"\n" not in data and b"\r" not in data:
            return b"data: " + data + b"\n\n"
        lines = self.lines
        if (
            len(lines) == 2
            and self.complete
            and lines[0].startswith(b"data: ")
            and b"\n" not in data
            and b"\r" not in data
        ):  # one data line and its blank line
            return b"data: " + data + _terminator(lines[0]) + lines[1]
        new = _NEWLINES.split(data)
        out: list[bytes] = []
        placed = False
        body = self.lines[:-1] if self.complete else self.lines
        data_terms = [_terminator(line) for line in body if _split(line)[0] == b"data"]
        for line in body:
            if _split(line)[0] == b"data":
                if not placed:
                    placed = True
                    first, last = data_terms[0] or b"\n", data_terms[-1]
                    for i, piece in enumerate(new):
                        term = last if i == len(new) - 1 else first
                        out.append(b"data: " + piece + term)
                continue
            out.append(line)
        if not placed:
            if out and not _terminator(out[-1]):
                out[-1] += b"\n"
            out.extend(b"data: " + piece + b"\n" for piece in new)
        if self.complete:
            out.append(self.lines[-1])
        for i in range(len(out) - 1):
            if out[i].endswith(b"\r") and out[i + 1].startswith(b"\n"):
                out[i] += b"\n"  # a bare CR now before an LF: keep them one line end, not two
        return b"".join(out)


def _terminator(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    if line.endswith((b"\n", b"\r")):
        return line[-1:]
    return b""


def _split(line: bytes) -> tuple[bytes | None, bytes]:
    """``(field, value)`` of a raw line; field None for a comment or a blank line."""
    content = line.rstrip(b"\r\n")
    if not content or content[:1] == b":":
        return None, content[1:]
    field, colon, value = content.partition(b":")
    if colon and value[:1] == b" ":
        value = value[1:]
    return field, value


class SSEReader:
    """Byte chunks in; out, in order, ``bytes`` to pass as they are and :class:`SSERecord`."""

    __slots__ = ("_buf", "_lines", "_max", "_size", "_skip_lf", "_started")

    def __init__(self, max_event: int) -> None:
        self._max = max_event
        self._buf = b""  # the line not ended yet
        self._lines: list[bytes] = []  # the ended lines of the event being read
        self._size = 0
        self._skip_lf = False  # the last line ended at a CR that may be half of a CRLF
        self._started = False  # past a possible BOM

    def feed(self, chunk: bytes) -> list[bytes | SSERecord]:
        if (
            chunk[:6] == b"data: "
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1:] == b"\n"
            and self._started
            and not self._buf
            and not self._lines
            and not self._skip_lf
            and b"\r" not in chunk
            and len(chunk) <= self._max
        ):  # the usual chunk: one event of one data line, LF line ends, nothing before it
            return [SSERecord.usual(chunk)]
        out: list[bytes | SSERecord] = []
        if not chunk:
            return out
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if self._lines:
                    self._lines[-1] += b"\n"
                else:
                    out.append(b"\n")
        data = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(data) < 3 and _BOM.startswith(data):
                self._buf = data
                return out
            self._started = True
            if data.startswith(_BOM):
                out.append(_BOM)
                data = data[3:]
        pos = 0
        lines = self._lines
        end = len(data)
        if not lines and b"\r" not in data:
            pos = self._whole_events(data, out)
            if pos == end:
                self._buf = b""
                return out
        for m in _LINE_END.finditer(data, pos):
            stop = m.end()
            line = data[pos:stop]
            if stop == end and line[-1] == 13:  # a CR last: an LF may follow
                self._skip_lf = True
            lines.append(line)
            if pos == m.start():  # a blank line: the event is complete
                out.append(SSERecord(lines, True))
                lines = self._lines = []
                self._size = 0
            else:
                self._size += stop - pos
            pos = stop
        self._buf = data[pos:]
        if self._size + len(self._buf) > self._max:
            raise TextFormatError(f"an event is longer than max_event ({self._max} bytes)")
        return out

    def _whole_events(self, data: bytes, out: list[bytes | SSERecord]) -> int:
        """The usual case, LF line ends only: cut the complete events out of ``data`` by their
        blank lines at once; where the rest (an event not ended yet) starts."""
        pos = 0
        limit = self._max
        while True:
            if data[pos : pos + 1] == b"\n":  # a blank line alone: an empty event
                out.append(SSERecord([b"\n"], True))
                pos += 1
                continue
            end = data.find(b"\n\n", pos)
            if end < 0:
                return pos
            if end + 2 - pos > limit:
                raise TextFormatError(f"an event is longer than max_event ({limit} bytes)")
            event = data[pos : end + 2]
            if event[:6] == b"data: " and event.find(b"\n") == end - pos:  # one data line
                out.append(SSERecord.usual(event))
            else:
                lines = event[:-1].splitlines(keepends=True)
                lines.append(b"\n")
                out.append(SSERecord(lines, True))
            pos = end + 2

    def close(self) -> list[bytes | SSERecord]:
        """The end of the body: an event cut off by it is still read (never passed raw)."""
        if self._buf and not self._started:
            self._started = True
        lines = self._lines
        if self._buf:
            lines.append(self._buf)
        self._buf, self._lines = b"", []
        return [SSERecord(lines, False)] if lines else []


def record_to_event(record: SSERecord) -> Event:
    """The public :class:`Event` of a record (for event transforms)."""
    event = Event()
    comments: list[str] = []
    for line in record.lines:
        field, value = _split(line)
        text = value.decode("utf-8", "surrogateescape")
        if field is None:
            if line.rstrip(b"\r\n"):
                comments.append(text)
        elif field == b"data":
            event.data = text if event.data is None else f"{event.data}\n{text}"
        elif field == b"event":
            event.event = text
        elif field == b"id":
            if "\x00" not in text:
                event.id = text
        elif field == b"retry" and value.isdigit():
            event.retry = int(value)
    event.comments = comments
    event.source = (record, event.fields())
    return event


def event_bytes(event: Event) -> bytes:
    """How an event goes out: as it came when unchanged, else written from its fields."""
    source = event.source
    if isinstance(source, tuple):
        record, fields = source
        now = event.fields()
        if now == fields:
            return record.raw
        if now[0] == fields[0] and now[2:] == fields[2:] and event.data is not None:
            return record.with_data(event.data.encode("utf-8", "surrogateescape"))
    return _serialize(event)


def _serialize(event: Event) -> bytes:
    out: list[bytes] = [b":" + _one_line(c) + b"\n" for c in event.comments]
    if event.event is not None:
        out.append(b"event: " + _one_line(event.event) + b"\n")
    if event.id is not None:
        out.append(b"id: " + _one_line(event.id).replace(b"\x00", b"") + b"\n")
    if event.retry is not None:
        out.append(b"retry: %d\n" % int(event.retry))
    if event.data is not None:
        data = event.data.encode("utf-8", "surrogateescape")
        out.extend(b"data: " + piece + b"\n" for piece in _NEWLINES.split(data))
    if not out:
        return b""
    out.append(b"\n")
    return b"".join(out)


def _one_line(text: str) -> bytes:
    return _NEWLINES.sub(b" ", text.encode("utf-8", "surrogateescape"))


def data_event(data: bytes, name: str | None = None) -> bytes:
    """A new event carrying ``data`` (and an ``event`` line when named)."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"".join(b"data: " + piece + b"\n" for piece in _NEWLINES.split(data)) + b"\n"


def parse_all(body: bytes, max_event: int = 1 << 30) -> list[bytes | SSERecord]:
    """Read a whole body (the reference the streamed reading must equal)."""
    reader = SSEReader(max_event)
    return [*reader.feed(body), *reader.close()]


def join_items(items: Iterable[bytes | SSERecord]) -> bytes:
    return b"".join(i if isinstance(i, bytes) else i.raw for i in items)
