"""Running the server: one process, or ``server.workers`` processes sharing one port.

With more than one worker, this process becomes a supervisor: it resolves the port, starts the
workers (each binds it with SO_REUSEPORT, so the kernel spreads connections over them), serves
the admin listener (metrics added up over the workers through prometheus_client's multiprocess
mode) and the demo upstream, restarts a worker that dies, forwards SIGHUP, and on SIGTERM/SIGINT
drains them all before it exits. A worker whose supervisor dies drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from proxy.config.models import Config, ConfigError, load_config
from proxy.metrics import MULTIPROC_ENV
from proxy.server.listener import PORT_ENV, ProxyServer

log = logging.getLogger("proxy.workers")
WORKER_ENV = "PROXY_WORKER"
SUPERVISOR_ENV = "PROXY_SUPERVISOR"  # a worker's supervisor's pid


def _event_loop_runner() -> asyncio.Runner:
    with contextlib.suppress(ImportError):
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run_workers(config: Config, path: str) -> int:
    if os.environ.get(WORKER_ENV):
        role = "worker"
    elif config.server.workers > 1:
        role = "supervisor"
    else:
        role = "single"
    with _event_loop_runner() as runner:
        if role == "supervisor":
            runner.run(_supervise(config, path))
        else:
            runner.run(_serve(config, path, role))
    return 0


async def _serve(config: Config, path: str, role: str) -> None:
    server = ProxyServer(config, path, reuse_port=role == "worker", role=role)
    server.install_signal_handlers()  # before listening: a signal must never find the default
    await server.start()
    if role == "worker":
        _drain_when_orphaned(server)
    # What start-up made (modules, config, compiled patterns) lives as long as the process:
    # collected once, then kept out of the collector's sight, so that a full collection in the
    # middle of streaming walks only what the streams made (about 50 ms less per collection).
    gc.collect()
    gc.freeze()
    await server.stopped.wait()


def _drain_when_orphaned(server: ProxyServer) -> None:
    """A worker whose supervisor is gone without draining it (killed outright, say) drains
    and exits as on SIGTERM, instead of serving on unsupervised: Linux sends it SIGTERM when
    its parent dies (``PR_SET_PDEATHSIG``); a parent gone already is seen by its pid."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is not None and str(os.getppid()) != supervisor:
        log.warning("the supervisor is gone: draining")
        server.stop()


class Supervisor:
    def __init__(self, config: Config, path: str, port: int) -> None:
        self.config = config
        self.path = path
        self.port = port
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False

    async def spawn(self, index: int) -> None:
        env = {
            **os.environ,
            WORKER_ENV: str(index),
            PORT_ENV: str(self.port),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "-c", self.path, env=env
        )
        self.procs[index] = proc
        asyncio.get_running_loop().create_task(self._watch(index, proc))

    async def _watch(self, index: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid)
        if not self.stopping:
            log.error("worker %d (pid %d) exited with %s; restarting it", index, proc.pid, code)
            await asyncio.sleep(1.0)
            if not self.stopping:
                await self.spawn(index)

    def signal_all(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def drain(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        grace = self.config.server.shutdown_grace + 5
        waits = [p.wait() for p in self.procs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            log.error("workers outlived the grace period; killing them")
            self.signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.procs.values()))

    def reload(self) -> None:
        try:
            self.config = load_config(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return
        self.signal_all(signal.SIGHUP)


def _resolve_port(host: str, port: int) -> int:
    """Port 0 means "any": pick it once so that every worker binds the same one."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _supervise(config: Config, path: str) -> None:
    # prometheus_client's multiprocess directory: the operator's, or one of our own.
    own_dir = not os.environ.get(MULTIPROC_ENV)
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="streamproxy-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        port = _resolve_port(config.server.host, config.server.port)
        sup = Supervisor(config, path, port)
        server = ProxyServer(config, path, role="supervisor")
        server.on_drain = sup.drain
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        loop.add_signal_handler(signal.SIGHUP, sup.reload)
        await server.start()
        for index in range(config.server.workers):
            await sup.spawn(index)
        log.info(
            "listening on %s:%s with %d workers", config.server.host, port, config.server.workers
        )
        await server.stopped.wait()
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
