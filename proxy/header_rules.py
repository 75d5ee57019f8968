"""Header rules of a route (``headers:``): set, add and remove, on the request and the response.

A rule set is applied after the proxy's own headers (so ``X-Forwarded-For`` can be removed or
replaced) and before the route's transforms decide about the body (so what a transform's
consequences need, such as dropping ``Content-Length``, always wins). Within one set the order is
``remove``, then ``set``, then ``add`` (Envoy's order): ``remove: [X]`` with ``add: {X: v}``
leaves exactly ``X: v``. Names are case-insensitive; values were expanded from the environment at
load and never hold a control byte but HTAB.

Values of secret-bearing headers are never printed: not in logs, errors, or ``check``'s output.
"""

from __future__ import annotations

import re
from typing import Any

from multidict import CIMultiDict, istr

# Headers that carry credentials: their values never appear in a log line, an error or a repr.
SECRET_HEADERS = frozenset(
    h.lower() for h in ("Authorization", "Cookie", "Proxy-Authorization", "X-Api-Key", "Set-Cookie")
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Framing and hop-by-hop headers are the proxy's own: a rule cannot set or add them.
_FRAMING = frozenset(
    h.lower()
    for h in (
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
    )
)
_REQUEST_ONLY_PROXY = frozenset({"expect"})
HOST = "host"
MASK = "***"


def header_name(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError("not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")
    return value


def header_values(value: Any) -> tuple[str, ...]:
    """A rule's value: one string, or a list of them (each one more field of that name).

    Messages never quote the value: it may be a secret.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("a list of values needs at least one value")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError("a header value must be a string (quote it in YAML)")
        text = str(item)
        if _CONTROL.search(text):
            raise ValueError(
                "the value (after ${VAR} expansion) holds CR, LF, NUL or another control "
                "character: it would split or corrupt the header"
            )
        if text != text.strip(" \t"):
            raise ValueError("the value starts or ends with white space")
        out.append(text)
    return tuple(out)


class RuleSet:
    """The rules of one direction, ready for the hot path (immutable)."""

    __slots__ = ("add", "host", "remove", "secret", "set")

    def __init__(
        self,
        set_: dict[str, tuple[str, ...]],
        add: dict[str, tuple[str, ...]],
        remove: list[str],
        secret: frozenset[str],
    ) -> None:
        self.remove = tuple(istr(n) for n in remove)
        self.set = tuple((istr(n), v) for n, v in set_.items() if n.lower() != HOST)
        self.add = tuple((istr(n), v) for n, v in add.items())
        host = next((v for n, v in set_.items() if n.lower() == HOST), None)
        self.host = host[0] if host else None  # request only: the Host sent upstream
        self.secret = secret

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add or self.host)

    def apply(self, headers: CIMultiDict[str]) -> None:
        """remove, then set, then add; order and repeats of every other header are kept."""
        for name in self.remove:
            headers.popall(name, None)
        for name, values in self.set:
            headers.popall(name, None)
            for value in values:
                headers.add(name, value)
        for name, values in self.add:
            for value in values:
                headers.add(name, value)

    def __repr__(self) -> str:
        def shown(pairs: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
            return {n: MASK if n.lower() in self.secret else list(v) for n, v in pairs}

        return f"RuleSet(set={shown(self.set)}, add={shown(self.add)}, remove={list(self.remove)})"


def check_rule_set(
    raw: Any, direction: str, path: str, problems: list[str], secret: frozenset[str]
) -> RuleSet:
    """Read ``headers.request`` or ``headers.response``; problems name their key path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping with set, add and remove")
        return RuleSet({}, {}, [], secret)
    parsed: dict[str, Any] = {"set": {}, "add": {}, "remove": []}
    for key, value in raw.items():
        if key not in parsed:
            from proxy.config.models import suggest

            problems.append(f"{path}.{key}: unknown key{suggest(str(key), list(parsed))}")
            continue
        if key == "remove":
            parsed[key] = _names(value, f"{path}.remove", direction, problems)
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{path}.{key}: expected a mapping of header name to value")
            continue
        for name, values in value.items():
            where = f"{path}.{key}.{name}" if isinstance(name, str) else f"{path}.{key}"
            try:
                header_name(name)
                _settable(name, key, direction)
                parsed[key][name] = header_values(values)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
    for key in ("set", "add"):
        seen: set[str] = set()
        for name in parsed[key]:
            if name.lower() in seen:
                problems.append(f"{path}.{key}.{name}: named twice (names are case-insensitive)")
            seen.add(name.lower())
    return RuleSet(parsed["set"], parsed["add"], parsed["remove"], secret)


def _names(value: Any, path: str, direction: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list of header names")
        return []
    out = []
    for i, name in enumerate(value):
        try:
            header_name(name)
            if name.lower() == HOST and direction == "request":
                raise ValueError("a request always carries Host (use set: {Host: ...})")
        except ValueError as exc:
            problems.append(f"{path}[{i}]: {exc}")
            continue
        out.append(name)
    return out


def _settable(name: str, key: str, direction: str) -> None:
    n = name.lower()
    if n in _FRAMING:
        raise ValueError(
            f"{name} is the proxy's to manage (framing or hop-by-hop); a rule may only remove it"
            if n == "content-length"
            else f"{name} is the proxy's to manage (framing or hop-by-hop)"
        )
    if direction == "request" and n in _REQUEST_ONLY_PROXY:
        raise ValueError(f"{name} is the proxy's to manage on requests")
    if n == HOST and direction == "request" and key == "add":
        raise ValueError("a request carries one Host: use set")


class HeaderRules:
    """A route's ``headers:``, read and checked at load."""

    CONFIG_TYPE = "mapping"
    __slots__ = ("request", "response", "secret")

    def __init__(self, request: RuleSet, response: RuleSet, secret: frozenset[str]) -> None:
        self.request = request
        self.response = response
        self.secret = secret

    def __bool__(self) -> bool:
        return bool(self.request or self.response)

    def __repr__(self) -> str:
        return f"HeaderRules(request={self.request!r}, response={self.response!r})"

    def __str__(self) -> str:
        return repr(self) if self else "{}"  # "{}": the configuration reference's default

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderRules) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


NO_RULES = HeaderRules(
    RuleSet({}, {}, [], SECRET_HEADERS), RuleSet({}, {}, [], SECRET_HEADERS), SECRET_HEADERS
)


def parse_header_rules(raw: Any, path: str, problems: list[str]) -> HeaderRules:
    """A route's ``headers:`` mapping → :class:`HeaderRules`; problems name their key path and
    never quote a value."""
    if raw is None:
        return NO_RULES
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping with request, response and secret")
        return NO_RULES
    for key in raw:
        if key not in ("request", "response", "secret"):
            from proxy.config.models import suggest

            problems.append(
                f"{path}.{key}: unknown key{suggest(str(key), ['request', 'response', 'secret'])}"
            )
    marked = _names(raw.get("secret"), f"{path}.secret", "response", problems)
    secret = SECRET_HEADERS | frozenset(n.lower() for n in marked)
    request = check_rule_set(raw.get("request"), "request", f"{path}.request", problems, secret)
    response = check_rule_set(raw.get("response"), "response", f"{path}.response", problems, secret)
    return HeaderRules(request, response, secret)
