"""The access log: one JSON object per request on stdout."""

from __future__ import annotations

import json
import sys
import time
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
        "ttfb",
        "upstream",
        "wall",
    )

    def __init__(self, method: str, path: str, request_id: str, start: float) -> None:
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


class AccessLog:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled

    def write(self, rec: AccessRecord, end: float) -> None:
        if not self.enabled:
            return
        line = json.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.wall))
                + f".{int(rec.wall * 1000) % 1000:03d}Z",
                "request_id": rec.request_id,
                "method": rec.method,
                "path": rec.path,
                "route": rec.route,
                "upstream": rec.upstream,
                "target": rec.target,
                "status": rec.status,
                "bytes_in": rec.bytes_in,
                "bytes_out": rec.bytes_out,
                "ttfb_ms": None if rec.ttfb is None else round((rec.ttfb - rec.start) * 1000, 3),
                "duration_ms": round((end - rec.start) * 1000, 3),
                "outcome": rec.outcome,
            },
            separators=(",", ":"),
        )
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()
