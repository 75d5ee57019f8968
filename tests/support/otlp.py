"""An in-process OTLP/HTTP trace receiver: an aiohttp app that decodes what exporters send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass
class Span:
    name: str
    kind: str  # "server", "client", ...
    trace_id: str
    span_id: str
    parent_id: str
    start: int  # ns since the epoch
    end: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error


_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Receiver:
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    content_types: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.content_types.append(request.content_type)
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for rs in message.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            name=s.name,
                            kind=_KINDS.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            attributes=_attrs(s.attributes),
                            resource=resource,
                            status=s.status.code,
                        )
                    )
        self._changed.set()
        reply = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=reply.SerializeToString(), content_type="application/x-protobuf")

    async def until(self, n: int, timeout: float = 10.0) -> list[Span]:
        """Wait (bounded) until at least ``n`` spans arrived."""
        async with asyncio.timeout(timeout):
            while len(self.spans) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.spans

    def of_kind(self, kind: str) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]
