"""Upstreams: a transport each (:mod:`proxy.upstream.transports`), target choice, health, retries.

The transports turn their clients' exceptions into :mod:`proxy.errors` or a
:class:`~proxy.upstream.transports.TransportFailure`; the one failure table (:data:`FAILURES`) below
names what the client is told for each.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config.models import UpstreamConfig
from proxy.errors import (
    ClientAbort,
    PayloadTooLarge,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.upstream.h1pool import Endpoint
from proxy.upstream.transports import (
    IDEMPOTENT,
    BodyState,
    Transport,
    TransportFailure,
    TransportResponse,
    UpstreamRequest,
    make_transport,
)

__all__ = ["IDEMPOTENT", "BodyState", "Exchange", "Target", "Upstream", "limited_body"]


class Target:
    """One origin of an upstream, with its passive-health state."""

    __slots__ = (
        "down_until",
        "endpoint",
        "fails",
        "healthy",
        "host",
        "host_header",
        "origin",
        "outstanding",
        "port",
        "requests",
        "scheme",
    )

    def __init__(self, origin: str, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        url = URL(origin)
        self.scheme = url.scheme
        self.host = url.raw_host or ""
        self.port = url.port
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        self.endpoint = Endpoint(self.host, port, ssl_ctx if tls else None)
        # The Host header a client of this origin sends: the port only when not the default.
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if url.is_default_port() else f"{host}:{port}"
        self.outstanding = 0
        self.fails = 0
        self.down_until = 0.0
        self.healthy = True  # active health check verdict
        self.requests = 0

    def url(self, path_qs: str, websocket: bool = False) -> URL:
        """The URL of ``path_qs`` on this target, the raw path and query kept byte for byte.

        The whole raw target goes in as the "path": yarl then keeps it exactly, even an empty
        query (``/x?``) that a parsed URL would drop.
        """
        scheme = self.scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        return URL.build(scheme=scheme, host=self.host, port=self.port, path=path_qs, encoded=True)

    def available(self, now: float) -> bool:
        return self.healthy and self.down_until <= now


class Upstream:
    """A named group of targets behind one transport (``client:``): target choice, passive and
    active health, the one retry loop, the one failure table, the one ``outstanding`` count."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        ssl_ctx = (
            _ssl_context(config) if any(o.startswith("https:") for o in config.targets) else None
        )
        self.targets = [Target(t, ssl_ctx) for t in config.targets]
        self._next = 0
        self.transport: Transport = make_transport(name, config, ssl_ctx)
        self.on_target_error: Callable[[Upstream, Target, str], None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        if self.config.health is not None:
            self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        self.closed = True
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        await self.transport.close()

    # -- target choice ---------------------------------------------------------------------

    def pick(self, tried: set[Target]) -> Target:
        now = time.monotonic()
        candidates = [t for t in self.targets if t not in tried and t.available(now)]
        if not candidates:
            # Every target is ejected: try the one that comes back soonest rather than fail.
            candidates = [t for t in self.targets if t not in tried]
            if not candidates:
                raise UpstreamUnavailable(f"no target of upstream {self.name!r} is available")
            candidates = [min(candidates, key=lambda t: t.down_until)]
        if len(candidates) == 1:
            return candidates[0]
        if self.config.balance == "least_outstanding":
            return min(candidates, key=lambda t: (t.outstanding, t.requests))
        self._next = (self._next + 1) % len(candidates)
        return candidates[self._next]

    def _failed(self, target: Target, kind: str) -> None:
        target.fails += 1
        if self.config.max_fails and target.fails >= self.config.max_fails:
            target.down_until = time.monotonic() + self.config.fail_timeout
            target.fails = 0
        if self.on_target_error is not None:
            self.on_target_error(self, target, kind)

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        host_header: str | None,
        body_state: BodyState,
        protocols: list[str] | None = None,
        trace: Any = None,
    ) -> Exchange:
        """Send the request to a target and return once its response headers arrived.

        Retries on another target when nothing of the request was sent (any method), or when
        the target dropped the connection before answering and the request can be repeated
        (an idempotent method). Never when the body stream was read from: it cannot be replayed.
        A client's body fault (413, a broken upload) is not held against the target.
        ``protocols`` (not None) makes it a WebSocket handshake offering those subprotocols.
        """
        headers.popall("Host", None)
        request = UpstreamRequest(
            method,
            path_qs,
            headers,
            body,
            host_header,
            body_state,
            protocols,  # type: ignore[arg-type]
        )
        tried: set[Target] = set()
        last: ProxyError | None = None
        handle = self.transport.handle
        for _ in range(1 + self.config.retries):
            try:
                target = self.pick(tried)
            except UpstreamUnavailable:
                break
            tried.add(target)
            # With tracing on, each attempt carries its own client span's traceparent.
            request.extra = "" if trace is None else trace.attempt(target, path_qs)
            target.outstanding += 1
            target.requests += 1
            try:
                resp = await handle(request, target)
            except BaseException as exc:
                target.outstanding -= 1
                if trace is not None:
                    trace.attempt_failed(exc)
                if body_state.error is not None and not isinstance(exc, asyncio.CancelledError):
                    # The client's body was too large or broke off: not the target's fault.
                    raise body_state.error from exc
                if not isinstance(exc, TransportFailure):
                    raise
                error, retry = self._translate(exc, request)
                self._failed(target, error.code)
                last = error
                # Whatever went wrong, a body stream that was read from cannot be sent again.
                if retry and not body_state.started and len(tried) < len(self.targets):
                    continue
                raise error from exc
            target.fails = 0
            return Exchange(resp, target)
        raise last or UpstreamUnavailable(f"no target of upstream {self.name!r} is available")

    def _translate(
        self, failure: TransportFailure, request: UpstreamRequest
    ) -> tuple[ProxyError, bool]:
        """(the proxy error for a transport's failure, whether another target may be tried)."""
        error, template, retry = FAILURES[failure.kind]
        if retry is None:  # the request may have reached the target
            retry = request.repeatable
        return error(template.format(name=self.name, detail=failure.detail)), retry

    # -- active health -----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        health = self.config.health
        assert health is not None
        while True:
            for target in self.targets:
                target.healthy = await self._probe(target, health.path, health.timeout)
            await asyncio.sleep(health.interval)

    async def _probe(self, target: Target, path: str, timeout: float) -> bool:
        """One health check of ``target`` through the transport: healthy below status 500."""
        request = UpstreamRequest("GET", path, CIMultiDict(), None, None, BodyState())
        try:
            async with asyncio.timeout(timeout):
                resp = await self.transport.handle(request, target)
                try:
                    while await resp.read():
                        pass
                finally:
                    resp.release()
        except (TimeoutError, TransportFailure, ProxyError, ValueError):
            return False
        return resp.status < 500


class Exchange:
    """A response from one target, head arrived, as the relay reads it.

    ``read()`` raises only the proxy's errors. :meth:`finish` (on every path, once) gives the
    connection back after a complete body or closes it, waits until the request body is no
    longer read from, and counts the target's ``outstanding`` down.
    """

    __slots__ = ("_resp", "read", "reason", "status", "target")

    def __init__(self, resp: TransportResponse, target: Target) -> None:
        self._resp: TransportResponse | None = resp
        self.target = target
        self.status = resp.status
        self.reason = resp.reason
        self.read = resp.read

    @property
    def ready(self) -> bool:
        return self._resp is not None and self._resp.ready

    @property
    def websocket(self) -> Any:
        return None if self._resp is None else self._resp.websocket

    def take_headers(self) -> CIMultiDict[str]:
        assert self._resp is not None
        return self._resp.take_headers()

    async def finish(self, complete: bool) -> None:
        resp, self._resp = self._resp, None
        if resp is None:
            return
        self.target.outstanding -= 1
        if complete:
            resp.release()
        else:
            resp.close()
        # The request body may still have been streaming upstream (full duplex): its sender is
        # stopped before the body's generators are closed under it.
        await resp.settled()


# The one failure table. What a client is told for each kind of failure a transport reports
# (naming what failed, never what the upstream sent: exception texts can carry the upstream's
# partial response), and whether another target may be tried (None: only if the request can
# be repeated).
FAILURES: dict[str, tuple[type[ProxyError], str, bool | None]] = {
    "connect_timeout": (UpstreamTimeout, "connecting to upstream {name!r} timed out", True),
    "head_timeout": (UpstreamTimeout, "upstream {name!r} sent no response headers in time", False),
    "tls": (
        UpstreamUnavailable,
        "upstream {name!r} failed the TLS handshake (certificate not trusted?)",
        True,
    ),
    "unreachable": (UpstreamUnavailable, "upstream {name!r} is unreachable: {detail}", True),
    "closed": (UpstreamUnavailable, "upstream {name!r} closed the connection early", None),
    "invalid": (UpstreamUnavailable, "upstream {name!r} sent an invalid response", False),
    "failed": (UpstreamUnavailable, "upstream {name!r} failed ({detail})", False),
    "failed_io": (UpstreamUnavailable, "upstream {name!r} failed ({detail})", None),
}


async def limited_body(
    source: AsyncIterable[bytes], limit: int, state: BodyState
) -> AsyncIterable[bytes]:
    """Stream a request body upstream, stopping with 413 once it passes ``limit``."""
    try:
        async for chunk in source:
            state.received += len(chunk)
            if state.received > limit:
                state.error = PayloadTooLarge(f"the request body is larger than {limit} bytes")
                raise state.error
            yield chunk
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        state.error = ClientAbort(f"the client's request body broke off: {exc}")
        raise state.error from exc


def _ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The TLS context for an upstream's https targets: verified against ``tls.ca_file`` (or
    the system store) unless ``tls.verify`` is off."""
    if config.tls.verify:
        return ssl.create_default_context(cafile=config.tls.ca_file)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
