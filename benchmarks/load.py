"""Load generators: wrk for request rates, an aiohttp + uvloop client for everything else.

Every function here is bounded: wrk by its duration plus a margin, the client by timeouts on
each read and on the whole operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from procs import pinned

T = TypeVar("T")
MB = 1_000_000


def run_async(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on a fresh uvloop (or asyncio) loop, cancelled after ``timeout`` seconds."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None

    try:
        import uvloop

        return uvloop.run(bounded())
    except ImportError:
        return asyncio.run(bounded())


def session(read_bufsize: int = 2**16, sock_read: float = 30.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=sock_read),
        auto_decompress=False,
        read_bufsize=read_bufsize,
    )


# ---------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError(f"no Requests/sec in wrk output:\n{out[-1500:]}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            res[f"p{pct}_ms"] = _ms(m.group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    res["errors"] = errors
    return res


def wrk(url: str, duration: float, conns: int, threads: int, cpus: str | None) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency"]
    argv += ["--timeout", "5s", url]
    r = subprocess.run(pinned(argv, cpus), capture_output=True, timeout=duration + 30, check=False)
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return parse_wrk(out)


# ---------------------------------------------------------------- aiohttp client


@dataclass
class Download:
    nbytes: int
    secs: float  # from the request to the last byte (or to the time limit)
    body: bytes  # only when asked to keep it
    complete: bool  # False: the time limit cut it short


async def download(
    s: aiohttp.ClientSession, url: str, keep: bool = False, limit: float = 60.0
) -> Download:
    """GET ``url`` to the end, or until ``limit`` seconds have passed."""
    chunks: list[bytes] = []
    n = 0
    complete = False
    t0 = time.perf_counter()
    async with s.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: status {resp.status}")
        try:
            async with asyncio.timeout(limit):
                async for data in resp.content.iter_any():
                    n += len(data)
                    if keep:
                        chunks.append(data)
            complete = True
        except TimeoutError:
            pass
    secs = time.perf_counter() - t0
    return Download(n, secs, b"".join(chunks) if keep else b"", complete)


@dataclass
class TickStats:
    latencies_ns: list[int]
    coalesced: int
    reads: int


async def tick_stream(s: aiohttp.ClientSession, url: str) -> TickStats:
    """Read a /ticks stream; latency = receive time - the send time each tick carries."""
    lat: list[int] = []
    coalesced = reads = 0
    buf = b""
    async with s.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: status {resp.status}")
        async for data in resp.content.iter_any():
            now = time.time_ns()
            reads += 1
            buf += data
            *lines, buf = buf.split(b"\n")
            if len(lines) > 1:
                coalesced += len(lines) - 1  # ticks that came in the same read as another
            lat.extend(now - int(line) for line in lines if line)
    return TickStats(lat, coalesced, reads)


async def idle_streams(
    s: aiohttp.ClientSession,
    url: str,
    n: int,
    sample: Callable[[], int],
    ramp_timeout: float,
    ramp_concurrency: int = 64,
    settle: float = 1.0,
) -> tuple[int, int]:
    """Hold ``n`` streams open after their first chunk; (streams opened, ``sample()`` then)."""
    gate = asyncio.Semaphore(ramp_concurrency)
    release = asyncio.Event()
    all_open = asyncio.Event()
    opened = 0

    async def one() -> None:
        nonlocal opened
        async with gate:
            resp = await s.get(url)
        try:
            first = await resp.content.readany()
            if resp.status == 200 and first:
                opened += 1
                if opened >= n:
                    all_open.set()
            await release.wait()
        finally:
            resp.close()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), ramp_timeout)
        await asyncio.sleep(settle)
        value = max(sample() for _ in range(3))
        return opened, value
    finally:
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def slow_read(
    s: aiohttp.ClientSession, url: str, rate: float, sample: Callable[[], int], every: float = 0.2
) -> tuple[int, float, list[int]]:
    """Read ``url`` at ``rate`` bytes/s; (bytes, seconds, ``sample()`` every ``every`` s)."""
    samples: list[int] = []
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            samples.append(sample())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)

    task = asyncio.create_task(sampler())
    got = 0
    t0 = time.monotonic()
    try:
        async with s.get(url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: status {resp.status}")
            while True:
                data = await resp.content.read(2**16)
                if not data:
                    break
                got += len(data)
                delay = t0 + got / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
    finally:
        done.set()
        await task
    return got, time.monotonic() - t0, samples
