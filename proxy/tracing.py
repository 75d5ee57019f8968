"""OpenTelemetry tracing (``tracing:``): a server span per request, a client span per attempt.

Off unless configured: the relay then only checks ``rec.trace is None``, and nothing of
OpenTelemetry is imported. On, each request gets a :class:`RequestTrace`:

- the server span continues the client's ``traceparent`` (W3C Trace Context; parent-based
  sampling, new traces sampled at ``sample_ratio``),
- each upstream attempt (retries included) is a client span, child of the server span, and the
  upstream is sent that client span's ``traceparent`` (and the client's ``tracestate``),
- both spans end when the body ends, so a stream of any length is one span each,
- attributes follow the OpenTelemetry HTTP semantic conventions, plus ``route``, ``upstream``,
  ``outcome`` and ``redactions``; the access log carries ``trace_id``.

Spans leave in batches over OTLP/HTTP from the SDK's own thread, never on the event loop. Each
process (each of ``server.workers``) has its own exporter.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.accesslog import AccessRecord
    from proxy.config.models import TracingConfig
    from proxy.routing import Route

_PACKAGES = {
    "opentelemetry-sdk": "opentelemetry.sdk.trace",
    "opentelemetry-exporter-otlp-proto-http": "opentelemetry.exporter.otlp.proto.http",
}
# Methods the semantic conventions know; any other is reported as _OTHER.
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
_NOT_ERRORS = frozenset({"ok", "client_abort"})


def missing_packages() -> list[str]:
    """The OpenTelemetry distributions tracing needs that are not installed."""
    missing = []
    for dist, module in _PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(dist)
    return missing


def traces_url(endpoint: str) -> str:
    """The collector's traces URL: ``/v1/traces`` on the endpoint, unless it already ends so."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """One process's tracer provider and exporter, for one ``tracing:`` configuration."""

    def __init__(self, config: TracingConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from proxy import __version__

        self.config = config
        resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.version": __version__,
                "process.pid": os.getpid(),
            }
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,
        )
        # Timeouts, headers (a collector's token) and batching come from the SDK's OTEL_*
        # environment variables: the config keys are the contract's three.
        exporter = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("streamproxy", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.SERVER = SpanKind.SERVER
        self.CLIENT = SpanKind.CLIENT
        self.ERROR = Status(StatusCode.ERROR)
        self.in_context = set_span_in_context

    def begin(self, request: web.BaseRequest, rec: AccessRecord) -> RequestTrace:
        """The trace of one request, its server span started."""
        return RequestTrace(self, request, rec)

    def flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        """Export what is left and stop the exporter's thread (blocking: run off the loop)."""
        self.provider.shutdown()


def _method(method: str) -> tuple[str, dict[str, str]]:
    if method in _KNOWN_METHODS:
        return method, {"http.request.method": method}
    return "HTTP", {"http.request.method": "_OTHER", "http.request.method_original": method}


def _server_attributes(
    request: web.BaseRequest, rec: AccessRecord, method: dict[str, str]
) -> dict[str, Any]:
    headers = request.headers
    attributes: dict[str, Any] = {**method, "url.path": rec.path, "url.scheme": request.scheme}
    version = request.version
    if version.minor != 1 or version.major != 1:  # HTTP/1.1 is the default: not repeated
        attributes["network.protocol.version"] = f"{version.major}.{version.minor}"
    host = headers.get("Host") or ""
    address, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not address or not port.isdigit():
        address, port = host, ""
    if address:
        attributes["server.address"] = address.strip("[]")
    if port:
        attributes["server.port"] = int(port)
    if request.remote:
        attributes["client.address"] = request.remote
    agent = headers.get("User-Agent")
    if agent is not None:
        attributes["user_agent.original"] = agent
    return attributes


class RequestTrace:
    """The spans of one request: the server span and the current upstream attempt's."""

    __slots__ = (
        "_attempt",
        "_attempts",
        "_client_ctx",
        "_method_attrs",
        "_name",
        "_tracestate",
        "_transforms",
        "recording",
        "redactions",
        "server",
        "trace_id",
        "tracing",
    )

    def __init__(self, tracing: Tracing, request: web.BaseRequest, rec: AccessRecord) -> None:
        self.tracing = tracing
        headers = request.headers
        name, attrs = _method(request.method)
        self._name = name
        self._method_attrs = attrs
        # Attributes only for a span that records: an unsampled request costs one span start.
        span = tracing.tracer.start_span(
            name, context=tracing.propagator.extract(headers), kind=tracing.SERVER
        )
        self.server = span
        self.recording = span.is_recording()
        if self.recording:
            span.set_attributes(_server_attributes(request, rec, attrs))
        self._client_ctx = tracing.in_context(span)
        self.trace_id = f"{span.get_span_context().trace_id:032x}"
        self._attempt: Any = None
        self._attempts = 0
        self._tracestate: str | None = None
        self._transforms = False
        self.redactions = 0

    # -- phases ----------------------------------------------------------------------------

    def routed(self, route: Route, headers: Any) -> None:
        """The route is known; the upstream request's headers are built (rules applied).

        The client's ``traceparent`` is replaced per attempt by the client span's; its
        ``tracestate`` goes on with it.
        """
        headers.popall("traceparent", None)
        states = headers.popall("tracestate", ())
        self._tracestate = ",".join(states) if states else None
        if self.recording:
            self._transforms = bool(route.chains.response or route.chains.request)
            self.server.update_name(f"{self._name} {route.path_prefix}")
            self.server.set_attributes(
                {"http.route": route.path_prefix, "route": route.name, "upstream": route.upstream}
            )

    def attempt(self, target: Any, path_qs: str = "/") -> str:
        """Start the client span of one attempt on ``target``; the header lines to send with it.

        ``target`` is None for a WebSocket handshake (aiohttp picks the connection).
        """
        if not self.recording:
            # Not sampled: no client span; the upstream continues the trace, unsampled.
            ctx = self.server.get_span_context()
            return self._traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags)
        self._end_attempt(None)
        tracing = self.tracing
        attrs: dict[str, Any] = dict(self._method_attrs)
        if target is not None:
            attrs["server.address"] = target.host
            attrs["server.port"] = target.endpoint.port
            attrs["url.full"] = target.origin + path_qs.split("?", 1)[0]  # no query: secrets
        if self._attempts:
            attrs["http.request.resend_count"] = self._attempts
        self._attempts += 1
        span = tracing.tracer.start_span(
            self._name, context=self._client_ctx, kind=tracing.CLIENT, attributes=attrs
        )
        self._attempt = span
        ctx = span.get_span_context()
        return self._traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags)

    def _traceparent(self, trace_id: int, span_id: int, flags: int) -> str:
        lines = f"traceparent: 00-{trace_id:032x}-{span_id:016x}-{flags:02x}\r\n"
        if self._tracestate:
            lines += f"tracestate: {self._tracestate}\r\n"
        return lines

    def inject(self, headers: Any) -> None:
        """A WebSocket handshake: one attempt, its traceparent set in ``headers``."""
        for line in self.attempt(None).split("\r\n"):
            if line:
                name, _, value = line.partition(": ")
                headers[name] = value

    def attempt_failed(self, exc: BaseException) -> None:
        """The current attempt failed before a response head arrived."""
        # the failure table's kind (unreachable, connect_timeout...), or the error's code
        kind = getattr(exc, "kind", None) or getattr(exc, "code", None)
        self._end_attempt(kind or type(exc).__name__)

    def answered(self, status: int) -> None:
        if self._attempt is not None:
            self._attempt.set_attribute("http.response.status_code", status)
            if status >= 400:
                self._attempt.set_attribute("error.type", str(status))
                self._attempt.set_status(self.tracing.ERROR)

    def _end_attempt(self, error: str | None) -> None:
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(self.tracing.ERROR)
        span.end()

    def end(self, rec: AccessRecord) -> None:
        """The body ended (or the request failed): end the spans with what the log says."""
        if not self.recording:
            return
        outcome = rec.outcome
        self._end_attempt(outcome if outcome not in _NOT_ERRORS else None)
        span = self.server
        status = rec.status
        attrs: dict[str, Any] = {"outcome": outcome, "http.response.body.size": rec.bytes_out}
        if self._transforms:  # a route without transforms redacts nothing
            attrs["redactions"] = self.redactions
        if rec.bytes_in:
            attrs["http.request.body.size"] = rec.bytes_in
        if status:
            attrs["http.response.status_code"] = status
        if status >= 500:
            attrs["error.type"] = str(status)
        elif outcome not in _NOT_ERRORS:
            attrs["error.type"] = outcome
        span.set_attributes(attrs)  # one call: the SDK takes its lock once
        if "error.type" in attrs:
            span.set_status(self.tracing.ERROR)
        span.end()
