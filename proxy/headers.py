"""Header rules of a proxy: hop-by-hop removal both ways, forwarding headers, request ids."""

from __future__ import annotations

import itertools
import re
import secrets

from multidict import CIMultiDict, CIMultiDictProxy, istr

HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
X_REQUEST_ID = istr("X-Request-ID")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
# What never goes into a header: the control bytes but HTAB (CR, LF and NUL among them).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# New ids: 32 hex digits, a random per-process prefix and a counter; unique across processes
# and restarts without a system call per request.
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count(secrets.randbelow(2**32))


def request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is safe to echo (visible ASCII, ≤ 200), else a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(
        istr(token.strip()) for value in values for token in value.split(",") if token.strip()
    )


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    drop: frozenset[str] = frozenset(),
    keep_upgrade: bool = False,
) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers (and those ``Connection`` names), order and repeats kept.

    ``drop`` names further headers to leave out; ``keep_upgrade`` keeps ``Upgrade`` (and a
    ``Connection: upgrade``) for a WebSocket handshake.
    """
    named = _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key in drop:
            continue
        if key in HOP_BY_HOP or key in named:
            if keep_upgrade and key in ("Upgrade", "Connection"):
                out.add(key, "upgrade" if key == "Connection" else value)
            continue
        out.add(key, value)
    return out


def has_control(text: str) -> bool:
    """Does a header name or value hold a control byte other than HTAB?

    obs-text (bytes 0x80-0xFF, held as surrogate escapes or UTF-8 text) is not one: RFC 9110
    §5.5 allows it in values, and it is relayed as the bytes that came.
    """
    return _CONTROL.search(text) is not None


def undecodable(text: str) -> bool:
    """Does a header name or value hold a byte that was not UTF-8 (a surrogate escape)?

    aiohttp's writers would drop or choke on such bytes, so what holds one is refused, never
    relayed altered.
    """
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def split_host(host: str) -> str:
    """The host part of a Host header, lower case, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host
