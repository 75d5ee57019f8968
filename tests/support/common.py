"""Small helpers many test modules share."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

# One route taking every request to the upstream named "up".
ROUTE: list[dict[str, Any]] = [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}]


def free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of Prometheus text with exactly these labels, or None when absent."""
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        got: dict[str, str] = {}
        if "{" in head:
            for part in head[head.index("{") + 1 : -1].split('",'):
                key, _, val = part.partition('="')
                got[key] = val.rstrip('"')
        if got == labels:
            return float(value)
    return None


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """The origin of a listener that never accepts and whose backlog is full: connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()
