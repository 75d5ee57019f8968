"""The access log: one JSON object per request on stdout."""

from __future__ import annotations

import asyncio
import sys
import time
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, TextIO


class AccessRecord:
    """What the access log says of one request; filled in as the request moves on."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "method",
        "outcome",
        "path",
        "request_id",
        "response",
        "route",
        "start",
        "status",
        "target",
        "trace",
        "ttfb",
        "upstream",
        "wall",
    )

    def __init__(self, method: str | None, path: str | None, request_id: str, start: float) -> None:
        self.wall = time.time()
        self.start = start
        self.method = method
        self.path = path
        self.request_id = request_id
        self.route: str | None = None
        self.upstream: str | None = None
        self.target: str | None = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.ttfb: float | None = None
        self.outcome = "ok"
        self.response: Any = None  # the prepared response, once headers went out
        self.trace: Any = None  # a tracing.RequestTrace when tracing is on


def _s(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


class AccessLog:
    """Writes the records as JSON lines; the lines of one event-loop turn go out in one write."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def write(self, rec: AccessRecord, end: float) -> None:
        if not self.enabled:
            return
        wall = rec.wall
        second = int(wall)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ttfb = "null" if rec.ttfb is None else repr(round((rec.ttfb - rec.start) * 1000, 3))
        line = (
            f'{{"ts":"{self._stamp}.{int(wall * 1000) % 1000:03d}Z",'
            f'"request_id":{_s(rec.request_id)},"method":{_s(rec.method)},'
            f'"path":{_s(rec.path)},"route":{_s(rec.route)},"upstream":{_s(rec.upstream)},'
            f'"target":{_s(rec.target)},"status":{int(rec.status)},'
            f'"bytes_in":{int(rec.bytes_in)},"bytes_out":{int(rec.bytes_out)},'
            f'"ttfb_ms":{ttfb},"duration_ms":{round((end - rec.start) * 1000, 3)!r},'
            f'"outcome":{_s(rec.outcome)}'
        )
        trace = rec.trace
        line += "}\n" if trace is None else f',"trace_id":"{trace.trace_id}"}}\n'

        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a direct call): write at once
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        stream = self.stream or sys.stdout
        stream.write("".join(lines))
        stream.flush()
