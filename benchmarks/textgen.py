"""The M5 corpus: realistic log lines with a known secret planted at known places.

Shared by the upstream (which serves it) and the harness (which checks what came back), so both
build the very same bytes for a given size.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

SECRET = b"password=hunter2"
LEAK = b"hunter2"
REPLACEMENT = b"[REDACTED]"
TAG = b"[x] "
PLANT_EVERY = 37  # one line in this many carries the secret

# One pattern that matches the planted secret, nine realistic ones that match nothing else in
# the corpus (so the expected number of replacements stays the number planted).
PATTERNS_1: list[str] = ["password=hunter2"]
PATTERNS_10: list[str] = [
    "password=hunter2",
    r"api_key=[A-Za-z0-9]{32}",
    r"AKIA[0-9A-Z]{16}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\b\d{4}-\d{4}-\d{4}-\d{4}\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"(?i)authorization: bearer [\w.-]+",
    r"xox[baprs]-[0-9A-Za-z-]{10,}",
    r"ghp_[0-9A-Za-z]{36}",
    r"(?i)client_secret=\S+",
]
# nginx sub_filter only knows literal strings: one literal stand-in per pattern above.
LITERALS_10: list[str] = [
    "password=hunter2",
    "api_key=0123456789abcdef0123456789abcdef",
    "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN RSA PRIVATE KEY-----",
    "4111-1111-1111-1111",
    "078-05-1120",
    "authorization: bearer eyJhbGciOi",
    "xoxb-123456789012",
    "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
    "client_secret=s3cr3t",
]

_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_PATHS = ["/api/v1/items", "/api/v1/orders", "/login", "/static/app.js", "/healthz", "/search"]
_LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
_WORDS = [
    "request",
    "served",
    "cache",
    "miss",
    "upstream",
    "retry",
    "slow",
    "query",
    "rows",
    "user",
    "session",
    "token",
]


def _block(n_lines: int = 12_000) -> bytes:
    """About 1.3 MiB of log lines; every PLANT_EVERY-th line carries the secret."""
    rnd = random.Random(1234)
    lines: list[str] = []
    for i in range(n_lines):
        ts = (
            f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}Z"
        )
        words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(3, 9)))
        line = (
            f"{ts} {rnd.choice(_LEVELS)} {words} user={rnd.choice(_USERS)} "
            f"path={rnd.choice(_PATHS)} status={rnd.choice((200, 200, 201, 304, 404, 500))} "
            f"dur={rnd.randint(1, 900)}ms"
        )
        if i % PLANT_EVERY == PLANT_EVERY // 2:
            line += " " + SECRET.decode()
        lines.append(line + "\n")
    return "".join(lines).encode()


@lru_cache(maxsize=4)
def make_text(size: int) -> bytes:
    """Exactly ``size`` bytes of the corpus (the last line may be cut short)."""
    block = _block()
    reps = size // len(block) + 1
    return (block * reps)[:size]


def planted(body: bytes) -> int:
    return body.count(SECRET)


def redact_reference(body: bytes, patterns: list[str]) -> bytes:
    """What the contract's ``redact`` must produce for ``body``."""
    text = body.decode("utf-8", "surrogateescape")
    for p in patterns:
        text = re.sub(p, REPLACEMENT.decode(), text)
    return text.encode("utf-8", "surrogateescape")


def tag_reference(body: bytes, tag: bytes = TAG) -> bytes:
    """What the contract's ``tag_lines`` must produce for ``body``."""
    if not body:
        return b""
    lines = body.split(b"\n")
    last = lines.pop()  # "" when the body ends with a newline
    out = b"".join(tag + line + b"\n" for line in lines)
    return out + (tag + last if last else b"")
