"""Small helpers many test modules share."""

from __future__ import annotations

import socket
from typing import Any

# One route taking every request to the upstream named "up".
ROUTE: list[dict[str, Any]] = [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}]


def free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
