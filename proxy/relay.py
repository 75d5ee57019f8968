"""The request driver: one function that knows the phases of a proxied request, in order.

1. admit     — request id; reject CONNECT, absolute-form targets, dot segments, oversize heads
2. route     — the first matching route (404 when none)
3. upstream request — end-to-end headers plus X-Forwarded-*, the body streamed (and transformed)
4. response headers — hop-by-hop removed; the transform plan settles the body headers; prepare()
5. body      — each upstream chunk through the chain and to the client at once
6. end       — write_eof on success; on any failure after prepare(), abort the connection
7. log       — access log line and metrics, whatever happened
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from proxy.accesslog import AccessLog, AccessRecord
from proxy.errors import (
    BadRequest,
    ClientAbort,
    HeadersTooLarge,
    NoRoute,
    PayloadTooLarge,
    ProxyError,
    UpstreamBodyError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
)
from proxy.headers import (
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_REQUEST_ID,
    end_to_end,
    has_control,
    request_id,
)
from proxy.metrics import Metrics
from proxy.routing import Route, has_dot_segment
from proxy.server.protocol import HeadWithBody, RelayedResponse
from proxy.transform.body import UpstreamBody
from proxy.transform.codecs import UnsupportedEncoding
from proxy.transform.media import parse_content_type
from proxy.transform.plan import BodyPlan, filter_accept_encoding, plan_body
from proxy.transform.text.errors import TextFormatError
from proxy.transform_api import TransformContext
from proxy.upstream.group import BodyState, Exchange, limited_body
from proxy.websocket import is_websocket_upgrade, relay_websocket

if TYPE_CHECKING:
    from proxy.runtime import Runtime

log = logging.getLogger("proxy.relay")

REQUEST_DROP = frozenset(
    {"Host", "Expect", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"}
)
RANGE_HEADERS = frozenset({"Range", "If-Range"})
NO_BODY_STATUS = frozenset({204, 304})


class Relay:
    """Serves proxied requests against the current :class:`~proxy.runtime.Runtime`."""

    def __init__(self, runtime: Runtime, metrics: Metrics, access_log: AccessLog) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.access_log = access_log
        self.active = 0
        # The event loop, looked up once: on Python 3.11 every asyncio.get_running_loop() is a
        # getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        start = loop.time()
        runtime = self.runtime  # requests finish on the config they started with
        rid = request_id(request.headers.get(X_REQUEST_ID))
        raw = request.raw_path
        rec = AccessRecord(request.method, raw.split("?", 1)[0], rid, start)
        if runtime.tracing is not None:
            rec.trace = runtime.tracing.begin(request, rec)
        self.active += 1
        self.metrics.active_streams.inc()
        runtime.users += 1
        try:
            return await self._serve(request, runtime, raw, rid, rec)
        finally:
            self.active -= 1
            runtime.users -= 1
            self.metrics.active_streams.dec()
            self._done(rec, loop.time())
            runtime.release_if_retired()

    def refused(
        self, method: str | None, path: str | None, error: ProxyError, rid: str, size: int
    ) -> None:
        """A request the listener refused itself (framing, head size or time, the connection
        limit): its access log line and count, like any request's."""
        now = asyncio.get_running_loop().time()
        rec = AccessRecord(method, path, rid, now)  # type: ignore[arg-type]
        rec.status = error.status
        rec.outcome = error.outcome
        rec.bytes_out = size
        self._done(rec, now)

    def _done(self, rec: AccessRecord, end: float) -> None:
        self.metrics.request_done(
            rec.route or "", rec.upstream or "", rec.status, end - rec.start, rec.bytes_out
        )
        if rec.trace is not None:
            try:
                rec.trace.end(rec)
            except Exception:  # a tracing fault never costs the request its log line
                log.exception(
                    "ending the request's spans failed", extra={"request_id": rec.request_id}
                )
        self.access_log.write(rec, end)

    def _now(self) -> float:
        loop = self._loop
        assert loop is not None, "set by handle()"
        return loop.time()

    async def _serve(
        self, request: web.BaseRequest, runtime: Runtime, raw: str, rid: str, rec: AccessRecord
    ) -> web.StreamResponse:
        try:
            route = self._admit(request, runtime, raw)
            rec.route = route.name
            rec.upstream = route.upstream
            timeout = route.timeout
            if timeout and not is_websocket_upgrade(request):
                async with asyncio.timeout(timeout):
                    return await self._forward(request, runtime, route, raw, rid, rec)
            return await self._forward(request, runtime, route, raw, rid, rec)
        except ProxyError as exc:
            return self._error(request, exc, rid, rec)
        except TimeoutError:
            if rec.response is not None and rec.response.prepared:
                # The route's total time ran out mid-body: the body must not look complete.
                rec.outcome = "timeout"
                abort(request)
                return rec.response
            return self._error(
                request, UpstreamTimeout("the route's total timeout passed"), rid, rec
            )

    def _error(
        self, request: web.BaseRequest, exc: ProxyError, rid: str, rec: AccessRecord
    ) -> web.Response:
        rec.status = exc.status
        rec.outcome = exc.outcome
        resp = error_response(exc, rid, close=exc.status == 400 or exc.status == 431)
        rec.bytes_out = len(resp.body or b"")  # type: ignore[arg-type]
        return resp

    # -- phase 1 and 2 ---------------------------------------------------------------------

    def _admit(self, request: web.BaseRequest, runtime: Runtime, raw: str) -> Route:
        server = runtime.config.server
        if request.method == "CONNECT":
            raise BadRequest("CONNECT is not supported: this is a reverse proxy")
        if not raw.startswith("/"):
            raise BadRequest("the request target must be a path (origin-form)")
        if len(raw) > server.max_url_length:
            raise BadRequest(f"the URL is longer than {server.max_url_length} bytes")
        if has_dot_segment(raw):
            raise BadRequest("the path holds a dot segment ('.' or '..')")
        head = len(request.method) + len(raw) + 12
        for name, value in request.raw_headers:
            head += len(name) + len(value) + 4
        if head > server.max_header_size:
            raise HeadersTooLarge(f"the request head is larger than {server.max_header_size} bytes")
        if len(request.raw_headers) > server.max_header_count:
            raise HeadersTooLarge(f"the request has more than {server.max_header_count} headers")
        route = runtime.router.match(request.method, request.headers.get("Host"), raw)
        if route is None:
            raise NoRoute("no route matches this request")
        return route

    # -- phase 3 to 6 ----------------------------------------------------------------------

    async def _forward(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        raw: str,
        rid: str,
        rec: AccessRecord,
    ) -> web.StreamResponse:
        upstream = runtime.upstreams[route.upstream]
        limit = runtime.config.server.max_request_body
        length = request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")

        upgrade = is_websocket_upgrade(request)
        headers = end_to_end(request.headers, REQUEST_DROP, keep_upgrade=upgrade)
        prior = request.headers.getall(X_FORWARDED_FOR, ())
        remote = request.remote or ""
        headers[X_FORWARDED_FOR] = ", ".join((*prior, remote)) if prior else remote
        headers[X_FORWARDED_PROTO] = request.scheme
        client_host = request.headers.get("Host")
        if client_host is not None:
            headers[X_FORWARDED_HOST] = client_host
        headers[X_REQUEST_ID] = rid
        rules = route.headers
        host_header = client_host if route.preserve_host else None
        if rules is not None:
            rules.request.apply(headers)  # after the proxy's own headers, before transforms
            host_header = rules.request.host or host_header
        trace = rec.trace
        if trace is not None:
            trace.routed(route, headers)
        if route.chains.response:
            for name in RANGE_HEADERS:
                headers.popall(name, None)
            accept = filter_accept_encoding(request.headers.get("Accept-Encoding"))
            headers.popall("Accept-Encoding", None)
            if accept:
                headers["Accept-Encoding"] = accept

        if upgrade:
            if route.chains.response or route.chains.request:
                # Fail closed: messages would bypass the route's transforms.
                raise BadRequest("WebSocket upgrades are refused on routes with transforms")
            if trace is not None:
                trace.inject(headers)
            return await relay_websocket(
                request, upstream, route.upstream_path(raw), headers, host_header, rec
            )

        body_state = BodyState()
        body: AsyncIterator[bytes] | None = None
        request_plan: BodyPlan | None = None
        if request.body_exists:
            await self._continue(request)
            body = limited_body(request.content.iter_any(), limit, body_state)
            if route.chains.request:
                ctx = self._context(route, rid, "request", request.headers, trace)
                try:
                    request_plan = plan_body(
                        route.chains.request, headers, "*", ctx, route.request_text
                    )
                except UnsupportedEncoding:
                    raise BadRequest(
                        "request transforms cannot decode this request's Content-Encoding"
                    ) from None
                if request_plan is not None:
                    body = _rejecting(request_plan.chain(body), body_state)
        path_qs = route.upstream_path(raw)

        upstream_resp: Exchange | None = None
        plan: BodyPlan | None = None
        response: RelayedResponse | None = None
        done = False
        try:
            upstream_resp = await upstream.send(
                request.method, path_qs, headers, body, host_header, body_state, trace=trace
            )
            del headers, body  # sent: not kept for the life of the stream
            rec.target = upstream_resp.target.origin
            if trace is not None:
                trace.answered(upstream_resp.status)
            response, plan = self._response_head(request, route, upstream_resp, rid, trace)
            rec.response = response
            rec.status = response.status
            await response.prepare(request)
            rec.ttfb = self._now()
            if not _has_body(request.method, upstream_resp.status):
                await response.write_eof()
                done = True
                return response
            await self._relay_body(upstream_resp, response, plan, rec)
            await response.write_eof()
            done = True
            return response
        except asyncio.CancelledError:
            rec.outcome = "client_abort" if request.transport is None else "timeout"
            raise
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            rec.outcome = "client_abort"
            if response is None or not response.prepared:
                raise
            return response
        except Exception as exc:
            if response is None or not response.prepared:
                if isinstance(exc, ProxyError):
                    raise
                log.exception("request failed before its response", extra={"request_id": rid})
                raise UpstreamBodyError("the proxy failed while handling the request") from exc
            self._mid_stream_failure(request, route, exc, rid, rec)
            return response
        finally:
            if upstream_resp is not None:
                # Released or closed, outstanding counted down; the request body's sender (full
                # duplex) stopped before the body's generators are closed under it.
                await upstream_resp.finish(done)
            rec.bytes_in = body_state.received
            if request_plan is not None:
                await request_plan.aclose()
            if plan is not None:
                await plan.aclose()

    async def _continue(self, request: web.BaseRequest) -> None:
        expect = request.headers.get("Expect")
        if expect is None:
            return
        if expect.lower() != "100-continue":
            raise BadRequest(f"unsupported Expect: {expect}")
        if request.version >= aiohttp.HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _context(
        self, route: Route, rid: str, direction: str, headers: object, trace: Any = None
    ) -> TransformContext:
        metrics = self.metrics
        name = route.name
        counter_of_route: Any = None  # the route's child of the counter, looked up once

        def sink(counter: str, n: int) -> None:
            nonlocal counter_of_route
            if counter == "redactions":
                if counter_of_route is None:
                    counter_of_route = metrics.redactions.labels(name)
                counter_of_route.inc(n)
                if trace is not None:
                    trace.redactions += n

        return TransformContext(
            route=route.name,
            upstream=route.upstream,
            request_id=rid,
            direction=direction,
            headers=headers,  # type: ignore[arg-type]
            sink=sink,
        )

    def _response_head(
        self,
        request: web.BaseRequest,
        route: Route,
        upstream_resp: Exchange,
        rid: str,
        trace: Any = None,
    ) -> tuple[RelayedResponse, BodyPlan | None]:
        if upstream_resp.status < 200:
            # A 1xx as the final answer (an upgrade nobody asked for, a status such as 099)
            # cannot be relayed as a response: the client could not parse it as one.
            raise UpstreamUnavailable(
                f"upstream sent an unusable final status {upstream_resp.status}"
            )
        upstream_headers = upstream_resp.take_headers()
        headers = end_to_end(upstream_headers)
        for value in headers.values():
            if has_control(value):
                # llhttp refuses CR, LF and NUL; no other control byte but HTAB goes out either.
                # obs-text passes, as its bytes (see RelayedResponse).
                raise UpstreamUnavailable("upstream sent a control character in a header value")
        headers[X_REQUEST_ID] = rid
        if parse_content_type(headers.get("Content-Type"))[0] == "text/event-stream":
            headers["X-Accel-Buffering"] = "no"
        if route.headers is not None:
            # After the proxy's own headers; before the transforms settle the body headers.
            route.headers.response.apply(headers)
        plan = None
        if route.chains.response and _has_body(request.method, upstream_resp.status):
            ctx = self._context(route, rid, "response", upstream_headers, trace)
            try:
                plan = plan_body(
                    route.chains.response,
                    headers,
                    request.headers.get("Accept-Encoding"),
                    ctx,
                    route.text,
                )
            except UnsupportedEncoding:
                # Fail closed: a body the transforms cannot read must not pass unredacted.
                raise UpstreamBodyError(
                    "the upstream used a Content-Encoding the route's transforms cannot decode"
                ) from None
        # When the body's first bytes are already here and go out untransformed, the head can
        # leave in the same write as them: one system call less, and no later for the client.
        ready = plan is None and upstream_resp.ready
        response = (HeadWithBody if ready else RelayedResponse)(
            status=upstream_resp.status, reason=upstream_resp.reason, headers=headers
        )
        return response, plan

    async def _relay_body(
        self,
        upstream_resp: Exchange,
        response: RelayedResponse,
        plan: BodyPlan | None,
        rec: AccessRecord,
    ) -> None:
        send = response.send  # straight to the transport where it can (see RelayedResponse)
        sent = 0
        try:
            if plan is None:
                read = upstream_resp.read
                while chunk := await read():
                    sent += len(chunk)
                    if (pending := send(chunk)) is not None:
                        await pending
                    del chunk  # not kept while the next one is awaited
            else:
                async for chunk in plan.chain(UpstreamBody(upstream_resp.read)):
                    if chunk:
                        sent += len(chunk)
                        if (pending := send(chunk)) is not None:
                            await pending
                    del chunk
        finally:
            rec.bytes_out = sent

    def _mid_stream_failure(
        self,
        request: web.BaseRequest,
        route: Route,
        exc: BaseException,
        rid: str,
        rec: AccessRecord,
    ) -> None:
        """After prepare(): abort the client connection so the body never looks complete."""
        extra = {"request_id": rid, "route": route.name, "upstream": route.upstream}
        if isinstance(exc, ClientAbort | PayloadTooLarge | BadRequest):
            # The client's request body broke off, grew too large or did not parse while an
            # early answer was being relayed (full duplex): not the upstream's failure.
            rec.outcome = "client_abort"
            log.info("the request body failed mid-response: %s", exc.detail, extra=extra)
        elif isinstance(exc, ProxyError):
            rec.outcome = exc.outcome
            self.metrics.upstream_errors.labels(route.upstream, exc.code).inc()
            log.warning("upstream failed mid-body: %s", exc.detail, extra=extra)
        else:
            rec.outcome = "transform_error"
            self.metrics.transform_errors.labels(route.name).inc()
            log.error("a transform failed mid-body: %r", exc, extra=extra, exc_info=exc)
        abort(request)


async def _rejecting(body: AsyncIterator[bytes], state: BodyState) -> AsyncIterator[bytes]:
    """A request body whose text does not parse as its route's ``request_text`` declares is the
    client's error (400), never sent on."""
    try:
        async for chunk in body:
            yield chunk
    except TextFormatError as exc:
        state.error = BadRequest(
            f"the request body does not parse as the route's request_text: {exc}"
        )
        raise state.error from exc


def _has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status not in NO_BODY_STATUS and status >= 200


def abort(request: web.BaseRequest) -> None:
    """Close the client connection without the final chunk; what was written still flushes."""
    transport = request.transport
    if transport is not None:
        transport.close()
    with contextlib.suppress(Exception):
        request.protocol.force_close()  # type: ignore[union-attr]
