"""One configuration generation: its router and upstreams, in use until its last request ends.

On reload a new Runtime takes new requests; the old one is *retired* and closes the upstream
sessions the new one did not carry over once its in-flight requests are done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config.models import Config
from proxy.routing import Route, Router
from proxy.transform.loader import chains_for
from proxy.upstream.group import Upstream


class Runtime:
    def __init__(self, config: Config, previous: Runtime | None = None) -> None:
        self.config = config
        chains = chains_for(config)  # the transform stages: built by the loader, once per load
        self.router = Router([Route(r, c) for r, c in zip(config.routes, chains, strict=True)])
        self.upstreams: dict[str, Upstream] = {}
        self._fresh: list[Upstream] = []
        for name, upstream_config in config.upstreams.items():
            old = previous.upstreams.get(name) if previous else None
            if old is not None and old.config == upstream_config:
                self.upstreams[name] = old  # same settings: keep its pool and health state
            else:
                self.upstreams[name] = Upstream(name, upstream_config)
                self._fresh.append(self.upstreams[name])
        # Tracing is made in start() (never in a supervisor, which serves no requests); the same
        # settings on reload keep the same exporter.
        self.tracing: Any = None
        self._previous_tracing = previous.tracing if previous is not None else None
        self.users = 0
        self.retired = False
        self._successor: Runtime | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        for upstream in self._fresh:
            await upstream.start()
        tracing = self.config.tracing
        if tracing is not None:
            old = self._previous_tracing
            if old is not None and old.config == tracing:
                self.tracing = old
            else:
                from proxy.tracing import Tracing

                self.tracing = Tracing(tracing)
        self._previous_tracing = None

    def retire(self, successor: Runtime | None) -> None:
        """Stop taking new requests; close what ``successor`` does not share once idle."""
        self.retired = True
        self._successor = successor
        self.release_if_retired()

    def release_if_retired(self) -> None:
        if self.retired and self.users == 0 and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        kept = set(map(id, self._successor.upstreams.values())) if self._successor else set()
        try:
            for upstream in self.upstreams.values():
                if id(upstream) not in kept:
                    await upstream.close()
            tracing = self.tracing
            successor = self._successor
            if tracing is not None and (successor is None or successor.tracing is not tracing):
                # Exports what is left; blocking, so off the event loop.
                await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)
        finally:
            self._closed.set()

    async def closed(self) -> None:
        """Wait until a retired runtime has closed what its successor does not share."""
        await self._closed.wait()
