"""Routing: the first route whose path prefix, host and methods all match the request."""

from __future__ import annotations

from proxy.config.models import RouteConfig
from proxy.headers import split_host
from proxy.transform.loader import RouteChains


class Route:
    """A configured route, ready for the hot path."""

    __slots__ = (
        "chains",
        "headers",
        "host",
        "methods",
        "name",
        "path_prefix",
        "preserve_host",
        "request_text",
        "strip_prefix",
        "text",
        "timeout",
        "upstream",
    )

    def __init__(self, config: RouteConfig, chains: RouteChains) -> None:
        self.name = config.name
        self.path_prefix = config.match.path_prefix
        self.host = split_host(config.match.host) if config.match.host else None
        self.methods = frozenset(config.match.methods) if config.match.methods else None
        self.upstream = config.upstream
        self.strip_prefix = config.strip_prefix
        self.preserve_host = config.preserve_host
        self.timeout = config.timeout
        self.chains = chains
        self.text = config.text
        self.request_text = config.request_text
        rules = config.headers
        self.headers = rules if rules else None  # None: no rules, nothing to do per request

    def matches(self, method: str, host: str | None, raw_path: str) -> bool:
        if not raw_path.startswith(self.path_prefix):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.host is None or (host is not None and split_host(host) == self.host)

    def upstream_path(self, raw_path: str) -> str:
        """The raw path and query to send upstream, after ``strip_prefix``."""
        if not self.strip_prefix:
            return raw_path
        rest = raw_path[len(self.path_prefix) :]
        return rest if rest.startswith("/") else "/" + rest


class Router:
    __slots__ = ("routes",)

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, host: str | None, raw_path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, host, raw_path):
                return route
        return None


def has_dot_segment(raw_path: str) -> bool:
    """Does the path hold a ``.`` or ``..`` segment, plainly or percent-encoded?

    Encoded slashes and backslashes count as separators too, so ``a%2F..%2Fb`` is caught: an
    upstream that decodes them would otherwise resolve the segment itself.
    """
    path = raw_path.split("?", 1)[0]
    if "." not in path and "%" not in path:
        return False
    decoded = (
        path.replace("%2e", ".")
        .replace("%2E", ".")
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%5c", "/")
        .replace("%5C", "/")
        .replace("\\", "/")
    )
    return any(seg in (".", "..") for seg in decoded.split("/"))
