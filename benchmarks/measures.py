"""M1-M5: what is measured on one peer, once. Each returns a flat dict of numbers."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import load
import textgen
from peers import BOTH_CPUS, LOAD_CPU, Peer, text_path
from procs import http_get, pinned
from procstat import CpuMeter, rss_kib, tree

MiB = 1024**2
Result = dict[str, float]


@dataclass
class Ctx:
    quick: bool
    upstream_url: str
    first_repeat: bool = True

    @property
    def m1_seconds(self) -> float:
        return 3.0 if self.quick else 10.0

    @property
    def m2_downloads(self) -> int:
        return 5 if self.quick else 10

    @property
    def slow_size(self) -> int:
        return 256 * MiB if self.quick else 1024 * MiB


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str = ""  # "higher", "lower" or "" (informative only)
    digits: int = 1
    ratio: bool = False  # worth a "this project / peer" ratio


@dataclass
class Measure:
    id: str
    title: str
    columns: dict[str, str]  # table column -> peer name
    metrics: list[Metric]
    run: Callable[[Peer, Ctx], Result]
    timed: bool = True  # False: memory only (no quiet-wait, no core 0 noise figure)


# ---------------------------------------------------------------- M1


def _m1(peer: Peer, ctx: Ctx, threads: int, cpus: str) -> Result:
    assert peer.url is not None
    url = f"{peer.url}/1k"
    if ctx.first_repeat:
        load.wrk(url, 1, 50, threads, cpus)  # warm-up: connections, caches, JIT-free paths
    meter = CpuMeter(peer.pid) if peer.pid else None
    if meter:
        meter.start()
    res = load.wrk(url, ctx.m1_seconds, 50, threads, cpus)
    if meter:
        res["cpu_pct"] = meter.stop()
    return res


def m1(peer: Peer, ctx: Ctx) -> Result:
    return _m1(peer, ctx, 1, LOAD_CPU)


def m1_w2(peer: Peer, ctx: Ctx) -> Result:
    return _m1(peer, ctx, 2, BOTH_CPUS)


# ---------------------------------------------------------------- M2


M2_LIMIT = 30.0  # seconds per 64 MiB download


def m2(peer: Peer, ctx: Ctx) -> Result:
    size = 64 * MiB
    url = f"{peer.url}/big?size={size}"

    async def go() -> Result:
        total = secs = 0.0
        async with load.session(read_bufsize=2**20) as s:
            if ctx.first_repeat:
                await load.download(s, url, limit=M2_LIMIT)  # warm-up, not counted
            for _ in range(ctx.m2_downloads):
                d = await load.download(s, url, limit=M2_LIMIT)
                if not d.complete:
                    raise RuntimeError(f"64 MiB not through in {M2_LIMIT:.0f} s")
                if d.nbytes != size:
                    raise RuntimeError(f"got {d.nbytes} bytes of {size}")
                total += d.nbytes
                secs += d.secs
        return {"mbps": total / secs / load.MB}

    return load.run_async(go(), M2_LIMIT * (ctx.m2_downloads + 1) + 10)


# ---------------------------------------------------------------- M3

STREAMS, TICKS, INTERVAL = 20, 50, 0.02


def m3(peer: Peer, ctx: Ctx) -> Result:
    url = f"{peer.url}/ticks?n={TICKS}&interval={INTERVAL}"

    async def go() -> list[load.TickStats]:
        async with load.session() as s:
            return await asyncio.gather(*(load.tick_stream(s, url) for _ in range(STREAMS)))

    stats = load.run_async(go(), TICKS * INTERVAL + 30)
    lat = sorted(x / 1e6 for st in stats for x in st.latencies_ns)
    if not lat:
        raise RuntimeError("no tick arrived")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": lat[-1],
        "coalesced": sum(st.coalesced for st in stats),
        "lost": STREAMS * TICKS - len(lat),
    }


# ---------------------------------------------------------------- M4


@contextmanager
def fresh(peer: Peer) -> Iterator[Peer]:
    """A new instance of ``peer`` for one memory measurement, stopped afterwards.

    A process that already served earlier runs keeps freed memory resident and reuses it, so
    its RSS would not grow for what the measurement adds."""
    if peer.spawn is None:
        yield peer
        return
    new = peer.spawn()
    try:
        if not new.available or new.pid is None:
            first = new.note.splitlines()[0] if new.note else "?"
            raise RuntimeError(f"a fresh instance did not start: {first}")
        yield new
    finally:
        if new.proc is not None:
            new.proc.stop()


def _rss_sampler(root: int) -> Callable[[], int]:
    pids = tree(root)
    return lambda: sum(rss_kib(p) for p in pids)


IDLE_STREAMS = 1000


def m4_idle(peer: Peer, ctx: Ctx) -> Result:
    with fresh(peer) as p:
        return _m4_idle(p, ctx)


def _m4_idle(peer: Peer, ctx: Ctx) -> Result:
    assert peer.pid is not None
    url = f"{peer.url}/idle?hold=90"
    sample = _rss_sampler(peer.pid)
    time.sleep(0.5)
    base = min(sample() for _ in range(3))

    async def go() -> tuple[int, int]:
        async with load.session(sock_read=60) as s:
            return await load.idle_streams(s, url, IDLE_STREAMS, sample, ramp_timeout=40)

    try:
        opened, after = load.run_async(go(), 90)
    finally:
        http_get(f"{ctx.upstream_url}/release")  # ends the upstream side of every idle stream
        time.sleep(1.0)
    if opened == 0:
        raise RuntimeError("no idle stream opened")
    return {
        "kib_per_stream": (after - base) / opened,
        "base_mib": base / 1024,
        "opened": opened,
    }


def m4_slow(peer: Peer, ctx: Ctx) -> Result:
    with fresh(peer) as p:
        return _m4_slow(p, ctx)


def _m4_slow(peer: Peer, ctx: Ctx) -> Result:
    assert peer.pid is not None
    size, rate = ctx.slow_size, 20 * load.MB
    url = f"{peer.url}/big?size={size}"
    sample = _rss_sampler(peer.pid)
    time.sleep(0.5)
    base = min(sample() for _ in range(3))

    async def go() -> tuple[int, float, list[int]]:
        async with load.session() as s:
            return await load.slow_read(s, url, rate, sample)

    n, secs, samples = load.run_async(go(), size / rate + 60)
    if n != size:
        raise RuntimeError(f"got {n} bytes of {size}")
    return {
        "growth_mib": (max(samples, default=base) - base) / 1024,
        "base_mib": base / 1024,
        "read_mbps": n / secs / load.MB,
    }


# ---------------------------------------------------------------- M5

TEXT_SIZE = 64 * MiB


@cache
def _reference(kind: str) -> tuple[bytes, int]:
    """The reference output of an M5 route, and how many replacements it makes."""
    if kind == "tag":
        return textgen.tag_reference(textgen.make_text(TEXT_SIZE)), 0
    route = textgen.ROUTES[kind]
    body = textgen.make_text(TEXT_SIZE, route.corpus)
    return textgen.redact_reference_counted(body, route.patterns)


M5_LIMIT = 90.0  # seconds for the 64 MiB body; a slower peer is measured on what came through


def _curl(url: str, limit: float, keep: bool) -> load.Download:
    """GET ``url`` with curl: C, so that the peer is what is measured, not the client."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(dir=shm, prefix="m5-") as f:
        argv = ["curl", "-s", "-o", f.name if keep else "/dev/null", "--max-time", str(limit)]
        argv += ["-w", "%{http_code} %{time_total} %{size_download}"]
        r = subprocess.run(
            pinned([*argv, url], LOAD_CPU), capture_output=True, timeout=limit + 20, check=False
        )
        code, secs, size = r.stdout.decode().split()
        if code != "200" and r.returncode != 28:
            raise RuntimeError(f"GET {url}: status {code}, curl exit {r.returncode}")
        body = Path(f.name).read_bytes() if keep else b""
    return load.Download(int(size), float(secs), body, r.returncode == 0)


def _fetch_text(peer: Peer, route: str, warm: bool) -> load.Download:
    """The speed of one download to /dev/null, the body of a second one (writing 64 MiB to a
    file costs the client's core more than some peers do)."""
    url = f"{peer.url}{text_path(route, TEXT_SIZE)}"
    small = f"{peer.url}{text_path(route, 4 * MiB)}"
    if shutil.which("curl"):
        if warm:  # caches, not counted
            _curl(small, 20, keep=False)
        timed = _curl(url, M5_LIMIT, keep=False)
        kept = _curl(url, M5_LIMIT, keep=True)
        return load.Download(timed.nbytes, timed.secs, kept.body, timed.complete and kept.complete)

    async def go() -> load.Download:
        async with load.session(read_bufsize=2**20) as s:
            if warm:  # connections and caches, not counted
                await load.download(s, small, limit=20)
            return await load.download(s, url, keep=True, limit=M5_LIMIT)

    return load.run_async(go(), M5_LIMIT + 40)


def _m5_redact(peer: Peer, ctx: Ctx, kind: str) -> Result:
    d = _fetch_text(peer, kind, ctx.first_repeat)
    out = d.body
    res: Result = {
        "mbps": (TEXT_SIZE if d.complete else d.nbytes) / d.secs / load.MB,
        "complete": float(d.complete),
        "leaked": textgen.leaked(out, textgen.ROUTES[kind]),
    }
    if d.complete:
        reference, planted = _reference(kind)
        res["redacted"] = out.count(textgen.REPLACEMENT)
        res["planted"] = planted
        res["exact"] = float(out == reference)
    return res


def _m5_route(kind: str) -> Callable[[Peer, Ctx], Result]:
    def measure(peer: Peer, ctx: Ctx) -> Result:
        return _m5_redact(peer, ctx, kind)

    return measure


def m5_tag(peer: Peer, ctx: Ctx) -> Result:
    d = _fetch_text(peer, "tag", ctx.first_repeat)
    res: Result = {
        "mbps": (TEXT_SIZE if d.complete else d.nbytes) / d.secs / load.MB,
        "complete": float(d.complete),
    }
    if d.complete:
        out = d.body
        text = textgen.make_text(TEXT_SIZE)
        lines = text.count(b"\n") + (0 if text.endswith(b"\n") else 1)
        tag = textgen.TAG
        at_line_start = out.startswith(tag) + out.count(b"\n" + tag)
        mid_line = out.count(tag) - at_line_start
        res["bad_lines"] = (lines - at_line_start) + mid_line
        res["exact"] = float(out == _reference("tag")[0])
    return res


def warm_references(kinds: list[str]) -> None:
    """Build the M5 reference outputs (of these routes) before timing anything."""
    for kind in kinds:
        _reference(kind)


# ---------------------------------------------------------------- the list

M5_CORPUS_TITLES = {
    "sparse": "sparse (1 match / 4.3 KB)",
    "dense": "dense (1 literal / 361 B)",
    "numeric": "numeric-dense (1 match / 28 B)",
    "nonascii": "non-ASCII (é😀 on 1 line in 10)",
}

# proxy-aiohttp: this project with ``client: aiohttp`` on its upstream, beside the default
STREAM_PEERS = {c: c for c in ("direct", "proxy", "proxy-aiohttp", "naive", "nginx", "caddy")}
PROXY_PEERS = {c: c for c in ("proxy", "proxy-aiohttp", "naive", "nginx", "caddy")}
M5_PEERS = {c: c for c in ("proxy", "base", "proxy-aiohttp", "naive", "nginx", "nginx-64k")}
M1_METRICS = [
    Metric("rps", "req/s", "higher", 0, ratio=True),
    Metric("p50_ms", "p50 ms", "lower", 2, ratio=True),
    Metric("p99_ms", "p99 ms", "lower", 2, ratio=True),
    Metric("cpu_pct", "proxy CPU %", "", 0),
    Metric("errors", "errors", "lower", 0),
]
REDACT_METRICS = [
    Metric("mbps", "MB/s", "higher", 0, ratio=True),
    Metric("complete", f"64 MiB through in {M5_LIMIT:.0f} s", "higher", 0),
    Metric("leaked", "secrets leaked", "lower", 0),
    Metric("redacted", "[REDACTED] count", "", 0),
    Metric("planted", "secrets planted (reference's count)", "", 0),
    Metric("exact", "output = reference", "higher", 0),
]

MEASURES: list[Measure] = [
    Measure(
        "M1",
        "M1 1 KiB responses, keep-alive, 50 conns",
        STREAM_PEERS | {"mitmproxy": "mitmproxy"},
        M1_METRICS,
        m1,
    ),
    Measure(
        "M2",
        "M2 64 MiB bodies",
        STREAM_PEERS | {"nginx-64k": "nginx-64k", "mitmproxy": "mitmproxy"},
        [Metric("mbps", "MB/s", "higher", 0, ratio=True)],
        m2,
    ),
    Measure(
        "M3",
        f"M3 {STREAMS} streams x {TICKS} chunks @ {int(INTERVAL * 1000)} ms (latency from send)",
        STREAM_PEERS,
        [
            Metric("p50_ms", "p50 ms", "lower", 2, ratio=True),
            Metric("p99_ms", "p99 ms", "lower", 2, ratio=True),
            Metric("max_ms", "max ms", "lower", 2, ratio=True),
            Metric("coalesced", "coalesced chunks", "lower", 0),
            Metric("lost", "lost chunks", "lower", 0),
        ],
        m3,
    ),
    Measure(
        "M4i",
        f"M4 {IDLE_STREAMS} idle streams",
        PROXY_PEERS,
        [
            Metric("kib_per_stream", "RSS KiB / stream", "lower", 1, ratio=True),
            Metric("base_mib", "RSS before, MiB", "", 1),
            Metric("opened", "streams held", "higher", 0),
        ],
        m4_idle,
        timed=False,
    ),
    Measure(
        "M4s",
        "M4 relaying to a 20 MB/s reader",
        PROXY_PEERS,
        [
            Metric("growth_mib", "max RSS growth MiB", "lower", 1),
            Metric("read_mbps", "reader MB/s", "", 1),
        ],
        m4_slow,
        timed=False,
    ),
    *(
        Measure(
            f"M5{name}",
            f"M5 redact, {M5_CORPUS_TITLES[r.corpus]}, {len(r.patterns)} pattern"
            + ("s" if len(r.patterns) > 1 else f" (`{r.patterns[0]}`)"),
            M5_PEERS,
            REDACT_METRICS,
            _m5_route(name),
        )
        for name, r in textgen.ROUTES.items()
    ),
    Measure(
        "M5tag",
        "M5 tag_lines, 64 MiB text",
        M5_PEERS,
        [
            Metric("mbps", "MB/s", "higher", 0, ratio=True),
            Metric("complete", f"64 MiB through in {M5_LIMIT:.0f} s", "higher", 0),
            Metric("bad_lines", "mis-tagged lines", "lower", 0),
            Metric("exact", "output = reference", "higher", 0),
        ],
        m5_tag,
    ),
    Measure(
        "M1w2",
        "M1 with 2 workers (nothing pinned, wrk -t2)",
        {"proxy": "proxy-w2", "nginx": "nginx-w2"},
        M1_METRICS,
        m1_w2,
    ),
]
