"""The proxy's own errors: one small hierarchy, each with its status, code and log outcome.

Lower-layer (aiohttp, asyncio, codec) exceptions are translated into these at the upstream
boundary (:mod:`proxy.upstream.group`); :func:`error_response` turns one into the JSON response the
client sees, in exactly one place. After the response headers have gone out an error can no
longer become a status: the relay aborts the client connection instead.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web


class ProxyError(Exception):
    status = 502
    code = "bad_gateway"
    outcome = "upstream_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ProxyError):
    status, code, outcome = 400, "bad_request", "ok"


class NoRoute(ProxyError):
    status, code, outcome = 404, "no_route", "ok"


class PayloadTooLarge(ProxyError):
    status, code, outcome = 413, "request_body_too_large", "ok"


class HeadersTooLarge(ProxyError):
    status, code, outcome = 431, "request_header_too_large", "ok"


class UpstreamUnavailable(ProxyError):
    status, code, outcome = 502, "upstream_unavailable", "upstream_error"


class UpstreamTimeout(ProxyError):
    status, code, outcome = 504, "upstream_timeout", "timeout"


class UpstreamBodyError(ProxyError):
    """The upstream failed after its response headers (reset, truncation, bad encoding)."""

    status, code, outcome = 502, "upstream_body_error", "upstream_error"


class UpstreamBodyTimeout(UpstreamBodyError):
    status, code, outcome = 504, "upstream_timeout", "timeout"


class ClientAbort(ProxyError):
    """The client went away or sent a broken body."""

    status, code, outcome = 400, "client_abort", "client_abort"


# What the listener refuses itself, before a request reaches the relay.


class UriTooLong(ProxyError):
    status, code, outcome = 414, "uri_too_long", "ok"


class NotImplementedByProxy(ProxyError):
    status, code, outcome = 501, "not_implemented", "ok"


class VersionNotSupported(ProxyError):
    status, code, outcome = 505, "http_version_not_supported", "ok"


class InternalError(ProxyError):
    status, code, outcome = 500, "internal_error", "upstream_error"


class TooManyConnections(ProxyError):
    status, code, outcome = 503, "too_many_connections", "ok"


class RequestHeadTimeout(ProxyError):
    """The client did not deliver its request head within ``server.header_timeout``."""

    status, code, outcome = 408, "request_timeout", "client_abort"


# The one status table: the error a status the listener refuses with stands for, and the detail
# said when nothing more precise is known.
REFUSALS: dict[int, tuple[type[ProxyError], str]] = {
    400: (BadRequest, "the request is not valid HTTP/1.1"),
    408: (RequestHeadTimeout, "no complete request head in time"),
    413: (PayloadTooLarge, "the request body is too large"),
    414: (UriTooLong, "the request line is too long"),
    431: (HeadersTooLarge, "the request head is too large"),
    500: (InternalError, "the proxy failed while handling the request"),
    501: (NotImplementedByProxy, "the request uses a feature the proxy does not implement"),
    503: (TooManyConnections, "the proxy is at its connection limit"),
    504: (UpstreamTimeout, "the request timed out"),
    505: (VersionNotSupported, "only HTTP/1.0 and HTTP/1.1 are served"),
}


def refusal(status: int, detail: str | None = None) -> ProxyError:
    """The proxy error for a status the listener refuses a request with."""
    error, default = REFUSALS.get(status, (ProxyError, "the request failed"))
    exc = error(detail or default)
    if error is ProxyError:
        exc.status = status
    return exc


def error_body(code: str, detail: str, request_id: str) -> bytes:
    return json.dumps({"error": code, "detail": detail, "request_id": request_id}).encode()


def error_response(exc: ProxyError, request_id: str, close: bool = False) -> web.Response:
    """The one builder of the proxy's own error responses (``close``: the connection ends)."""
    resp = web.Response(
        status=exc.status,
        body=error_body(exc.code, exc.detail, request_id),
        content_type="application/json",
    )
    resp.headers["X-Request-ID"] = request_id
    if close:
        resp.force_close()
    return resp


def error_bytes(exc: ProxyError, request_id: str, extra: str = "") -> bytes:
    """The same response as bytes, for a connection refused before any request exists (the
    connection limit): HTTP/1.1, ``Connection: close``, ``extra`` header lines added."""
    body = error_body(exc.code, exc.detail, request_id)
    reason = HTTPStatus(exc.status).phrase
    head = (
        f"HTTP/1.1 {exc.status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode() + body
