"""The M5 corpora: realistic log lines with known secrets planted at known places.

Shared by the upstream (which serves them) and the harness (which checks what came back), so
both build the very same bytes for a given size and corpus. Four corpora (``CORPORA``):

- ``sparse``: one line in 37 carries ``password=hunter2`` (one secret per ~4 KiB);
- ``dense``: one line in 3 carries the six-letter host name ``qxhost`` (one per ~350 bytes);
- ``numeric``: metric lines full of numbers; ``\\b\\d{3,4}\\b`` matches one in ~40 bytes;
- ``nonascii``: ``sparse`` with ``é😀`` on one line in ten.

Each M5 route (``ROUTES``) is one corpus and a pattern set: the corpus's own pattern alone, or
with the nine realistic ones of ``PATTERNS_10`` that match nothing in any corpus.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
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

DENSE_TOKEN = "qxhost"  # six letters, no proper prefix equal to a suffix
NUMERIC_PATTERN = r"\b\d{3,4}\b"
NON_ASCII = "é😀"
CORPORA = ("sparse", "dense", "numeric", "nonascii")


@dataclass(frozen=True)
class Route:
    """One M5 redact route: a corpus and the patterns applied to it."""

    name: str  # the path prefix, and the measure id after "M5"
    corpus: str
    patterns: list[str]
    leak: str  # a regex (bytes) counting the secrets still visible in the output
    literals: list[str] | None  # nginx sub_filter's literal stand-ins; None: not expressible


def _routes() -> dict[str, Route]:
    own = {
        "r": ("sparse", PATTERNS_1[0], re.escape(LEAK.decode()), PATTERNS_1[0]),
        "d": ("dense", DENSE_TOKEN, DENSE_TOKEN, DENSE_TOKEN),
        "n": ("numeric", NUMERIC_PATTERN, NUMERIC_PATTERN, None),
        "u": ("nonascii", PATTERNS_1[0], re.escape(LEAK.decode()), PATTERNS_1[0]),
    }
    routes = {}
    for key, (corpus, pattern, leak, literal) in own.items():
        lits = None if literal is None else [literal]
        routes[f"{key}1"] = Route(f"{key}1", corpus, [pattern], leak, lits)
        lits10 = None if literal is None else [literal, *LITERALS_10[1:]]
        routes[f"{key}10"] = Route(f"{key}10", corpus, [pattern, *PATTERNS_10[1:]], leak, lits10)
    return routes


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


def _numeric_block(n_lines: int = 12_000) -> bytes:
    """Metric lines: numbers of 1 to 6 digits, about one in three of them 3 or 4 digits."""
    rnd = random.Random(4321)
    lines: list[str] = []
    for i in range(n_lines):
        ts = f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z"
        nums = " ".join(
            f"{k}={rnd.randint(0, 10 ** rnd.randint(1, 6) - 1)}"
            for k in ("cpu", "mem", "rx", "tx", "lat", "q", "err", "conn")
        )
        lines.append(f"{ts} metrics host=web{i % 16:02d} {nums}\n")
    return "".join(lines).encode()


def _block(corpus: str = "sparse", n_lines: int = 12_000) -> bytes:
    """About 1.3 MiB of log lines; every PLANT_EVERY-th line carries the secret."""
    if corpus == "numeric":
        return _numeric_block(n_lines)
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
        if corpus == "dense" and i % 3 == 1:
            line += f" host={DENSE_TOKEN}"
        if corpus == "nonascii" and i % 10 == 3:
            line = line.replace(" user=", f" {NON_ASCII} user=", 1)
        lines.append(line + "\n")
    return "".join(lines).encode()


@lru_cache(maxsize=8)
def make_text(size: int, corpus: str = "sparse") -> bytes:
    """Exactly ``size`` bytes of the corpus (the last line may be cut short, at a character:
    a body is never cut inside a UTF-8 sequence)."""
    if corpus not in CORPORA:
        raise ValueError(f"no corpus {corpus!r}")
    block = _block(corpus)
    reps = size // len(block) + 1
    body = (block * reps)[:size]
    while body and body[-1] >= 0x80 and not _complete_utf8(body):
        body = body[:-1] + b" "
    return body


def _complete_utf8(body: bytes) -> bool:
    try:
        body[-4:].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def planted(body: bytes) -> int:
    return body.count(SECRET)


def redact_reference(body: bytes, patterns: list[str]) -> bytes:
    """What the contract's ``redact`` must produce for ``body``."""
    return redact_reference_counted(body, patterns)[0]


def redact_reference_counted(body: bytes, patterns: list[str]) -> tuple[bytes, int]:
    """The reference output and how many replacements it made (the secrets planted)."""
    text = body.decode("utf-8", "surrogateescape")
    count = 0
    for p in patterns:
        text, n = re.subn(p, REPLACEMENT.decode(), text)
        count += n
    return text.encode("utf-8", "surrogateescape"), count


def leaked(out: bytes, route: Route) -> int:
    """How many of the route's secrets are still visible in ``out``."""
    return len(re.findall(route.leak, out.decode("utf-8", "surrogateescape")))


def tag_reference(body: bytes, tag: bytes = TAG) -> bytes:
    """What the contract's ``tag_lines`` must produce for ``body``."""
    if not body:
        return b""
    lines = body.split(b"\n")
    last = lines.pop()  # "" when the body ends with a newline
    out = b"".join(tag + line + b"\n" for line in lines)
    return out + (tag + last if last else b"")


ROUTES: dict[str, Route] = _routes()
