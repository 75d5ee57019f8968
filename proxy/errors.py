"""The proxy's own errors: one small hierarchy, each with its status, code and log outcome.

Lower-layer (aiohttp, asyncio, codec) exceptions are translated into these at the upstream
boundary (:mod:`proxy.upstream`); :func:`error_response` turns one into the JSON response the
client sees, in exactly one place. After the response headers have gone out an error can no
longer become a status: the relay aborts the client connection instead.
"""

from __future__ import annotations

import json

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


def error_body(code: str, detail: str, request_id: str) -> bytes:
    return json.dumps({"error": code, "detail": detail, "request_id": request_id}).encode()


def error_response(exc: ProxyError, request_id: str) -> web.Response:
    resp = web.Response(
        status=exc.status,
        body=error_body(exc.code, exc.detail, request_id),
        content_type="application/json",
    )
    resp.headers["X-Request-ID"] = request_id
    return resp
