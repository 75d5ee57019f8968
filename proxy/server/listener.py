"""The server's life: listeners up, signals, reload, graceful drain, down."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.accesslog import AccessLog
from proxy.config.models import Config, ConfigError, load_config
from proxy.demo import demo_app
from proxy.metrics import Metrics
from proxy.relay import Relay
from proxy.runtime import Runtime
from proxy.server.admin import admin_app
from proxy.server.protocol import ProxyWebServer, bound_port

log = logging.getLogger("proxy.server")
PORT_ENV = "PROXY_WORKER_PORT"  # the port a worker binds (the supervisor resolved port 0)


class ProxyServer:
    """Everything one process serves: the proxy listener, the admin listener, the demo."""

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        role: str = "single",
    ) -> None:
        """``role``: ``single`` serves everything; with ``server.workers`` > 1 the ``supervisor``
        serves admin and demo while each ``worker`` serves the proxy port."""
        self.role = role
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.access_log = access_log or AccessLog(enabled=config.server.access_log)
        self.reuse_port = reuse_port
        self.runtime = Runtime(config)
        self.relay = Relay(self.runtime, self.metrics, self.access_log)
        self.draining = False
        self._runners: list[web.BaseRunner] = []
        self._proxy_runner: web.ServerRunner | None = None
        self.proxy_port: int | None = None
        self.admin_port: int | None = None
        self.demo_port: int | None = None
        self.stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self.on_drain: Callable[[], Awaitable[None]] | None = None  # the supervisor's workers

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.demo is not None and self.role != "worker":
            runner = web.AppRunner(demo_app(cfg.demo.interval), access_log=None)
            self.demo_port = await self._listen(runner, cfg.demo.host, cfg.demo.port)
        if cfg.admin is not None and self.role != "worker":
            runner = web.AppRunner(
                admin_app(self.metrics, lambda: not self.draining), access_log=None
            )
            self.admin_port = await self._listen(runner, cfg.admin.host, cfg.admin.port)
        if self.role == "supervisor":
            return
        await self.runtime.start()
        self._watch_targets(self.runtime)
        server = ProxyWebServer(
            self.relay.handle,
            header_timeout=cfg.server.header_timeout,
            max_connections=cfg.server.max_connections,
            refused=self.relay.refused,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
            keepalive_timeout=cfg.server.keepalive_timeout,
            max_line_size=max(cfg.server.max_url_length + 64, 8190),
            max_field_size=cfg.server.max_header_size,
            # The pure-Python parser counts the request line and the blank line too; the relay
            # enforces the exact count.
            max_headers=cfg.server.max_header_count + 2,
            lingering_time=2.0,
        )
        runner = web.ServerRunner(server, shutdown_timeout=cfg.server.shutdown_grace)
        self._proxy_runner = runner
        tls = None
        if cfg.server.tls is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cfg.server.tls.cert, cfg.server.tls.key)
        port = int(os.environ.get(PORT_ENV, cfg.server.port))
        self.proxy_port = await self._listen(
            runner, cfg.server.host, port, tls=tls, reuse_port=self.reuse_port
        )
        log.info(
            "listening on %s:%s (admin %s)",
            cfg.server.host,
            self.proxy_port,
            f"{cfg.admin.host}:{self.admin_port}" if cfg.admin else "off",
        )

    async def _listen(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(
            runner, host, port, ssl_context=tls, reuse_port=reuse_port or None, backlog=1024
        )
        await site.start()
        return bound_port(site)

    def _watch_targets(self, runtime: Runtime) -> None:
        for upstream in runtime.upstreams.values():
            upstream.on_target_error = self._target_error
        self.metrics.refresh = self._refresh_targets
        self._refresh_targets()

    def _refresh_targets(self) -> None:
        now = time.monotonic()
        for upstream in self.runtime.upstreams.values():
            for target in upstream.targets:
                self.metrics.set_target(upstream.name, target.origin, target.available(now))

    def _target_error(self, upstream: Any, target: Any, kind: str) -> None:
        self.metrics.upstream_errors.labels(upstream.name, kind).inc()
        self.metrics.set_target(upstream.name, target.origin, target.available(time.monotonic()))

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the config file again; switch to it when valid, else keep the old one."""
        if self.config_path is None:
            return False
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return False
        runtime = Runtime(config, previous=self.runtime)
        try:
            await runtime.start()
        except Exception as exc:
            log.error("reload refused: %r", exc)
            return False
        self._watch_targets(runtime)
        old, self.runtime = self.runtime, runtime
        self.relay.runtime = runtime
        self.config = config
        old.retire(runtime)
        log.info("configuration reloaded from %s", self.config_path)
        return True

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> asyncio.Task[None]:
        """Drain: readiness fails, listening stops, streams get ``shutdown_grace`` to finish."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self.draining = True
        log.info(
            "draining: %d request(s) in flight, up to %ss",
            self.relay.active,
            self.config.server.shutdown_grace,
        )
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        if self.on_drain is not None:
            await self.on_drain()
        self.runtime.retire(None)
        await self.runtime.closed()
        for runner in reversed(self._runners):
            if runner is not self._proxy_runner:
                await runner.cleanup()
        self.access_log.flush()
        self.stopped.set()
        log.info("stopped")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
