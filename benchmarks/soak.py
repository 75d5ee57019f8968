"""Soak: mixed traffic with injected faults against ``python -m proxy``; leaks fail the run.

    python benchmarks/soak.py                   # 10 minutes
    python benchmarks/soak.py --duration 30     # a quick run

The proxy runs as a child process with a generated config (loopback only, free ports). Its
upstreams are an aiohttp origin in this process and a second one in a child process that is
killed (SIGKILL) and restarted on the same port every ``--flap-every`` seconds. The traffic mix:

- ``small``    GET of 1 KiB                                   -> 200, whole body
- ``stream``   20 chunks 10 ms apart                          -> 200, whole body
- ``redact``   the same through a ``redact`` transform        -> 200, whole body, no secret
- ``upload``   POST of 256 KiB                                -> 200, its size echoed
- ``abort``    an endless stream the client drops mid-body    -> (aborted by the client)
- ``silent``   a stream that goes silent past read_timeout    -> body cut by the proxy
- ``reset``    a stream whose upstream resets mid-body        -> body cut by the proxy

Every ``--sample-every`` seconds it samples the proxy's RSS (``/proc/PID/status`` VmRSS), its
open file descriptors (``/proc/PID/fd``) and ``proxy_active_streams`` from ``/metrics``. The
baseline is taken after a warm-up of the same traffic, once the clients have closed and idle
upstream connections have expired; the end figures after the same settling. It exits non-zero
when file descriptors or active streams leaked, RSS grew by more than ``--rss-limit`` MiB, the
proxy died, or it did not exit 0 on SIGTERM. Children are ended by their own process id only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import Proc, free_port, wait_port
from procstat import rss_kib

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_KEEPALIVE = 3.0  # the origins close idle keep-alive connections after this long
SECRET = b"secret=hunter2"
SMALL = b"s" * 1023 + b"\n"
UPLOAD = b"u" * (256 * 1024)
KINDS = {  # kind: weight
    "small": 35,
    "stream": 15,
    "redact": 10,
    "upload": 10,
    "abort": 15,
    "silent": 5,
    "reset": 10,
}
EXPECTED = {"abort": "aborted", "silent": "cut", "reset": "cut"}  # else "ok"
MiB = 1024 * 1024


# -- the origin ------------------------------------------------------------------------------------


async def _plain_text_stream(request: web.Request) -> web.StreamResponse:
    """A streamed text/plain response to ``request``, its head sent."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    return resp


def origin_app() -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/small")
    async def small(_: web.Request) -> web.Response:
        return web.Response(body=SMALL, content_type="text/plain")

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        n = min(int(request.query.get("n", "20")), 1000)
        interval = min(float(request.query.get("interval", "0.01")), 1.0)
        resp = await _plain_text_stream(request)
        with contextlib.suppress(ConnectionError):
            for i in range(n):
                await resp.write(b"line %d " % i + SECRET + b"\n")
                await asyncio.sleep(interval)
        return resp

    @routes.get("/endless")
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = await _plain_text_stream(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(30_000):  # bounded: ten minutes of ticks
                await resp.write(b"tick\n" * 50)
                await asyncio.sleep(0.02)
        return resp

    @routes.get("/silent")
    async def silent(request: web.Request) -> web.StreamResponse:
        resp = await _plain_text_stream(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(b"first and last words\n")
            await asyncio.sleep(5)  # far past the route's read_timeout
        return resp

    @routes.get("/reset")
    async def reset(request: web.Request) -> web.StreamResponse:
        resp = await _plain_text_stream(request)
        await resp.write(b"partial\n" * 100)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            transport.abort()  # RST
        return resp

    @routes.post("/upload")
    async def upload(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.add_routes(routes)
    return app


async def start_origin(port: int) -> web.AppRunner:
    runner = web.AppRunner(origin_app(), keepalive_timeout=UPSTREAM_KEEPALIVE, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def serve_origin(port: int) -> None:
    """``--serve-origin PORT``: the flapping target's process."""
    runner = await start_origin(port)
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await runner.cleanup()


# -- the proxy and the flapping target -------------------------------------------------------------


def proxy_yaml(port: int, admin: int, steady: int, flapping: int) -> str:
    main = [f"http://127.0.0.1:{steady}", f"http://127.0.0.1:{flapping}"]
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "shutdown_grace": "5s",
            "max_request_body": "1MiB",
            "log_level": "error",
        },
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstreams": {
            "main": {
                "targets": main,
                "connect_timeout": "1s",
                "read_timeout": "5s",
                "max_fails": 1,
                "fail_timeout": "1s",
                "retries": 1,
            },
            "slow": {"targets": main[:1], "read_timeout": "500ms"},
        },
        "routes": [
            {"name": "silent", "match": {"path_prefix": "/silent"}, "upstream": "slow"},
            {
                "name": "redact",
                "match": {"path_prefix": "/redact/"},
                "upstream": "main",
                "strip_prefix": True,
                "transforms": [{"redact": {"patterns": [r"secret=\S+"]}}],
            },
            {"name": "main", "match": {"path_prefix": "/"}, "upstream": "main"},
        ],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


class Flapper:
    """The second target of ``main``: a child process, killed and restarted on one port."""

    def __init__(self, python: str, port: int, logdir: Path) -> None:
        self.argv = [python, os.path.abspath(__file__), "--serve-origin", str(port)]
        self.port = port
        self.logdir = logdir
        self.proc: Proc | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = Proc("flapping-origin", self.argv, self.logdir, cwd=str(REPO)).start()
        if not wait_port(self.port, self.proc, 20.0):
            raise RuntimeError(f"the flapping origin did not start:\n{self.proc.stderr_tail()}")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)  # its own id, no grace: a crash
        proc.popen.wait(timeout=10)
        proc.stop()  # reaped; forget it
        self.kills += 1

    async def run(self, stop: asyncio.Event, every: float, down: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                break
            await loop.run_in_executor(None, self.kill)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), down)
            await loop.run_in_executor(None, self.start)


# -- traffic ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def add(self, kind: str, outcome: str, seconds: float) -> None:
        self.outcomes[(kind, outcome)] += 1
        if outcome == "ok":
            self.latencies.append(seconds)


async def one_request(s: aiohttp.ClientSession, base: str, kind: str) -> str:
    """Run one request of ``kind``; return its outcome."""
    if kind == "small":
        async with s.get(base + "/small") as r:
            body = await r.read()
            return "ok" if r.status == 200 and body == SMALL else f"status_{r.status}"
    if kind in ("stream", "redact"):
        prefix = "/redact" if kind == "redact" else ""
        async with s.get(base + prefix + "/stream?n=20&interval=0.01") as r:
            body = await r.read()
            if r.status != 200:
                return f"status_{r.status}"
            if body.count(b"\n") != 20:
                return "short"
            if kind == "redact" and SECRET in body:
                return "LEAKED_SECRET"
            return "ok"
    if kind == "upload":
        async with s.post(base + "/upload", data=UPLOAD) as r:
            text = await r.text()
            return "ok" if r.status == 200 and text == str(len(UPLOAD)) else f"status_{r.status}"
    if kind == "abort":
        r = await s.get(base + "/endless")
        try:
            if r.status != 200:
                return f"status_{r.status}"
            for _ in range(random.randint(1, 5)):
                await r.content.readany()
            return "aborted"
        finally:
            r.close()  # drops the connection mid-body
    path = "/silent" if kind == "silent" else "/reset"
    async with s.get(base + path) as r:
        if r.status != 200:
            return f"status_{r.status}"
        try:
            await r.read()
        except aiohttp.ClientPayloadError:
            return "cut"
        return "complete"  # a cut body must never look complete


async def worker(base: str, stop: asyncio.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    connector = aiohttp.TCPConnector(limit=4)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                outcome = await one_request(s, base, kind)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            tally.add(kind, outcome, time.monotonic() - started)


# -- sampling --------------------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def active_streams(admin: str) -> float:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(admin + "/metrics") as r,
    ):
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("proxy_active_streams "):
            return float(line.split()[1])
    raise RuntimeError("no proxy_active_streams in /metrics")


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    active: float


async def sample(pid: int, admin: str, t0: float) -> Sample:
    active = await active_streams(admin)
    return Sample(round(time.monotonic() - t0, 1), rss_kib(pid), open_fds(pid), active)


async def sampler(
    pid: int, admin: str, t0: float, every: float, stop: asyncio.Event, out: list[Sample]
) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            s = await sample(pid, admin, t0)
            out.append(s)
            print(
                f"  t={s.t:7.1f}s  rss={s.rss_kib / 1024:7.1f} MiB  fds={s.fds:4d}  "
                f"active={s.active:4.0f}",
                file=sys.stderr,
                flush=True,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def settle(pid: int, admin: str, t0: float, limit: float, fds_goal: int | None) -> Sample:
    """After traffic stopped: wait (bounded) until no stream is active and idle keep-alive
    connections have expired (and the fds are down to ``fds_goal`` when given)."""
    await asyncio.sleep(UPSTREAM_KEEPALIVE + 1.5)
    deadline = time.monotonic() + limit
    last = await sample(pid, admin, t0)
    while time.monotonic() < deadline:
        if last.active == 0 and (fds_goal is None or last.fds <= fds_goal):
            break
        await asyncio.sleep(0.5)
        last = await sample(pid, admin, t0)
    return last


async def traffic(base: str, seconds: float, concurrency: int, tally: Tally, seed: int) -> None:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(worker(base, stop, tally, seed * 1000 + i)) for i in range(concurrency)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the run ---------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="soak-"))
    port, admin_port, steady_port, flap_port = (free_port() for _ in range(4))
    cfg = logdir / "proxy.yaml"
    cfg.write_text(proxy_yaml(port, admin_port, steady_port, flap_port))
    base = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    print(f"soak: {args.duration:.0f}s, logs and config in {logdir}", file=sys.stderr)

    steady = await start_origin(steady_port)
    flapper = Flapper(args.python, flap_port, logdir)
    proxy: Proc | None = None
    failures: list[str] = []
    try:
        await asyncio.get_running_loop().run_in_executor(None, flapper.start)
        proxy = Proc("proxy", [args.python, "-m", "proxy", "-c", str(cfg)], logdir, cwd=str(REPO))
        proxy.start()
        if not wait_port(admin_port, proxy, 30.0) or not wait_port(port, proxy, 30.0):
            raise RuntimeError(f"the proxy did not start:\n{proxy.stderr_tail()}")
        pid = proxy.pid
        t0 = time.monotonic()

        warmup = args.warmup if args.warmup is not None else min(15.0, max(3.0, args.duration / 10))
        print(f"warm-up: {warmup:.0f}s of the same traffic", file=sys.stderr, flush=True)
        await traffic(base, warmup, args.concurrency, Tally(), seed=args.seed + 1)
        start = await settle(pid, admin, t0, 30.0, None)
        print(f"baseline: {start}", file=sys.stderr, flush=True)

        tally = Tally()
        samples: list[Sample] = [start]
        stop = asyncio.Event()
        background = [
            asyncio.create_task(sampler(pid, admin, t0, args.sample_every, stop, samples)),
            asyncio.create_task(flapper.run(stop, args.flap_every, args.flap_down)),
        ]
        try:
            await traffic(base, args.duration, args.concurrency, tally, seed=args.seed)
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        if not proxy.alive():
            raise RuntimeError(f"the proxy died during the run:\n{proxy.stderr_tail()}")
        if flapper.proc is None:
            await asyncio.get_running_loop().run_in_executor(None, flapper.start)
        end = await settle(pid, admin, t0, 30.0, start.fds)
        samples.append(end)

        # Graceful stop: SIGTERM to its own id, and it must exit 0.
        os.kill(pid, signal.SIGTERM)
        assert proxy.popen is not None
        try:
            code = await asyncio.get_running_loop().run_in_executor(
                None, lambda: proxy.popen.wait(timeout=15) if proxy.popen else -1
            )
        except Exception:
            code = None
        proxy.stop()

        rss_max = max(s.rss_kib for s in samples)
        growth_mib = (end.rss_kib - start.rss_kib) / 1024
        total = sum(tally.outcomes.values())
        report: dict[str, Any] = {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "requests": total,
            "requests_per_s": round(total / args.duration, 1),
            "flapping_target_kills": flapper.kills,
            "rss_mib": {
                "start": round(start.rss_kib / 1024, 1),
                "end": round(end.rss_kib / 1024, 1),
                "max": round(rss_max / 1024, 1),
                "growth": round(growth_mib, 1),
            },
            "fds": {"baseline": start.fds, "end": end.fds, "max": max(s.fds for s in samples)},
            "active_streams_end": end.active,
            "max_active_streams": max(s.active for s in samples),
            "sigterm_exit_code": code,
            "outcomes": {
                kind: dict(sorted((o, n) for (k, o), n in tally.outcomes.items() if k == kind))
                for kind in KINDS
            },
            "ok_latency_ms_p50_p99": percentiles(tally.latencies),
            "samples": [s.__dict__ for s in samples],
        }
        if end.fds > start.fds:
            failures.append(f"file descriptors leaked: {start.fds} at the start, {end.fds} now")
        if end.active != 0:
            failures.append(f"{end.active:.0f} streams still active after traffic stopped")
        if growth_mib > args.rss_limit:
            failures.append(f"RSS grew by {growth_mib:.1f} MiB (limit {args.rss_limit} MiB)")
        if code != 0:
            failures.append(f"the proxy exited with {code} on SIGTERM (expected 0)")
        for kind in KINDS:
            want = EXPECTED.get(kind, "ok")
            if not tally.outcomes.get((kind, want)):
                failures.append(f"no {kind!r} request ended as {want!r}")
        if any(o in ("LEAKED_SECRET", "complete") for _, o in tally.outcomes):
            failures.append("a secret leaked or a cut body looked complete")
        errlog = proxy.errlog.read_text(errors="replace").splitlines()
        report["proxy_stderr_lines"] = len(errlog)
        for marker in ("Traceback", "was never retrieved", "Unclosed"):
            if any(marker in line for line in errlog):
                failures.append(f"{marker!r} in the proxy's stderr ({proxy.errlog})")
        report["failures"] = failures
        summary = {k: v for k, v in report.items() if k != "samples"}
        print(json.dumps(summary, indent=2))
        if args.json:
            await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2))
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:
        failures.append(str(exc) or repr(exc))
        print(f"soak failed: {exc}", file=sys.stderr)
    finally:
        if proxy is not None:
            proxy.stop()
        await asyncio.get_running_loop().run_in_executor(None, flapper.kill)
        await steady.cleanup()
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1 if failures else 0


def percentiles(values: list[float]) -> list[float]:
    if not values:
        return []
    ordered = sorted(values)
    return [round(ordered[int(q * (len(ordered) - 1))] * 1000, 1) for q in (0.5, 0.99)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%%)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--flap-every", type=float, default=10.0, help="seconds between kills")
    parser.add_argument(
        "--flap-down", type=float, default=2.0, help="seconds a killed target stays down"
    )
    parser.add_argument("--rss-limit", type=float, default=32.0, help="MiB of RSS growth allowed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="runs python -m proxy")
    parser.add_argument("--json", default=None, help="write the full report (with samples) here")
    parser.add_argument("--serve-origin", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_origin(args.serve_origin))
        return 0
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
