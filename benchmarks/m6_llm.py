"""M6: LLM token streams through this proxy, side by side with its peers, in one run.

    python benchmarks/m6_llm.py [--quick] [--peers direct,proxy,naive,litellm] [--out FILE]

An OpenAI-format upstream (``llm_upstream.py``, core 1) streams Chat Completions answers with
planted secrets, 1-12 characters per event, ``--rate`` events/s per stream. Each peer (core 0)
stands between it and a client built on the official ``openai`` SDK (core 1), which runs
``--streams`` concurrent streams. The table says, per peer: secrets leaked, streams the SDK
could not parse, added time to first token and per-event latency against ``direct``, events per
second per proxy CPU second, and RSS per open stream. See benchmarks/README.md, "M6".
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import importlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llm_upstream as llm
import procs
import procstat
import yaml
from load import run_async
from peers import LOAD_CPU, PROXY_CPU, REPO, Peer
from procs import Proc, free_port, http_get, pinned, wait_port
from procstat import CoreMeter, cpu_seconds, rss_kib, tree, wait_quiet

HERE = Path(__file__).resolve().parent
COLUMNS = ["direct", "proxy", "proxy-body", "naive", "litellm"]
MODEL = "m6"
CLIENT_KEY = "m6-client-key"  # what the client sends where no key is checked
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = Path("/tmp/streamproxy-bench-litellm")  # kept between runs: pip is slow
LITELLM_KEY = "m6-litellm-master-key"
# LiteLLM masks with "[{NAME}_REDACTED]": one name per pattern, in llm.PATTERNS order
LITELLM_NAMES = ["openai_key", "aws_key_id", "password", "email", "card"]
SEED_BASE = 1_000_000  # seed of stream k in repeat r: SEED_BASE * (r + 1) + k
SMOKE_SEED = 7


class Abort(BaseException):
    """The run must end now: its time budget ran out, or a signal (Ctrl-C, SIGTERM) came."""


# Why the run must end. A signal can land inside an event loop callback, where uvloop logs and
# swallows the exception it raises; the loops below poll this instead.
STOP: list[str] = []


def check_stop() -> None:
    if STOP:
        raise Abort(STOP[0])


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Settings:
    streams: int
    events: int
    rate: float
    repeat: int
    stream_timeout: float
    quiet_wait: float
    python: str
    ramp: float

    @property
    def interval(self) -> float:
        return 1.0 / self.rate


# ---------------------------------------------------------------- the peers


def start_upstream(logdir: Path, s: Settings, lifetime: float) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, str(HERE / "llm_upstream.py"), "--port", str(port)]
    argv += ["--rate", str(s.rate), "--events", str(s.events), "--lifetime", str(int(lifetime))]
    proc = Proc("llm-upstream", pinned(argv, LOAD_CPU), logdir).start()
    if not wait_port(port, proc, 60.0):
        raise RuntimeError(f"the LLM upstream did not start:\n{proc.stderr_tail()}")
    return proc, port


def proxy_config(port: int, admin: int, upstream: int, text: str | None) -> dict[str, object]:
    """This project: one route for ``/v1/`` with the five patterns; ``text`` as given, or no
    ``text`` key at all."""
    route: dict[str, object] = {
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "upstream": "llm",
    }
    if text is not None:
        route["text"] = text
    route["transforms"] = [
        {"redact": {"patterns": list(llm.PATTERNS), "replacement": llm.REPLACEMENT}}
    ]
    return {
        "server": {"host": "127.0.0.1", "port": port, "workers": 1, "shutdown_grace": "2s"},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstreams": {
            "llm": {
                "targets": [f"http://127.0.0.1:{upstream}"],
                "connect_timeout": "5s",
                "read_timeout": "120s",
            }
        },
        "routes": [route],
    }


def _proxy_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def check_config(python: str, cfg: Path) -> tuple[bool, str]:
    """``python -m proxy check -c cfg``: (accepted, what it printed)."""
    try:
        r = subprocess.run(
            [python, "-m", "proxy", "check", "-c", str(cfg)],
            cwd=REPO,
            env=_proxy_env(),
            capture_output=True,
            timeout=90,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{type(e).__name__}: {e}"
    text = (r.stdout + r.stderr).decode(errors="replace").strip()
    return r.returncode == 0, text


def _write_proxy_config(logdir: Path, name: str, upstream: int, text: str | None) -> Path:
    port, admin = free_port(), free_port()
    cfg = logdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(proxy_config(port, admin, upstream, text), sort_keys=False))
    return cfg


def _launch_proxy(logdir: Path, name: str, cfg: Path, python: str) -> Peer:
    conf = yaml.safe_load(cfg.read_text())
    port = int(conf["server"]["port"])
    argv = [python, "-m", "proxy", "-c", str(cfg)]
    proc = Proc(name, pinned(argv, PROXY_CPU), logdir, cwd=str(REPO), env=_proxy_env()).start()
    peer = Peer(name, f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.info = {"config": str(cfg), "config_text": cfg.read_text()}
    return _started(peer, port, 30.0)


def start_proxy(logdir: Path, upstream: int, python: str) -> Peer:
    """``text: openai``: n/a with the proxy's own words when ``check`` refuses it."""
    cfg = _write_proxy_config(logdir, "proxy", upstream, "openai")
    ok, out = check_config(python, cfg)
    if not ok:
        lines = "; ".join(ln for ln in out.splitlines() if ln.strip())[:600]
        note = f"n/a: `python -m proxy check` refuses `text: openai`: {lines or '(no output)'}"
        return Peer("proxy", None, note=note, info={"config": str(cfg)})
    return _launch_proxy(logdir, "proxy", cfg, python)


def start_proxy_body(logdir: Path, upstream: int, python: str) -> Peer:
    """The same route with the regex on the raw body: ``text: body`` where the proxy knows the
    key (once it does, a route without ``text`` is ``auto``, which would read the stream as
    OpenAI's), else no ``text`` key at all (today's behaviour)."""
    cfg = _write_proxy_config(logdir, "proxy-body", upstream, "body")
    ok, out = check_config(python, cfg)
    how = "text: body"
    if not ok:
        first = next((ln for ln in out.splitlines() if ln.strip()), "")
        cfg = _write_proxy_config(logdir, "proxy-body", upstream, None)
        how = f"no text key (the proxy refused `text: body`: {first[:200]})"
        ok, out = check_config(python, cfg)
        if not ok:
            lines = "; ".join(ln for ln in out.splitlines() if ln.strip())[:600]
            return Peer("proxy-body", None, note=f"n/a: `python -m proxy check`: {lines}")
    peer = _launch_proxy(logdir, "proxy-body", cfg, python)
    peer.info["text"] = how
    return peer


def start_naive(logdir: Path, upstream: int) -> Peer:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "naive-peer", "--port", str(port)]
    argv += ["--upstream", f"http://127.0.0.1:{upstream}"]
    proc = Proc("naive", pinned(argv, PROXY_CPU), logdir).start()
    peer = Peer("naive", f"http://127.0.0.1:{port}/m6", proc.pid, proc)
    peer.info = {"command": " ".join(argv), "patterns": json.dumps(llm.PATTERNS)}
    return _started(peer, port, 30.0)


def serve_naive(argv: list[str]) -> None:
    """``naive_proxy.py`` as M5 runs it, with one more prefix, ``/m6/``: ``re.sub`` of the five
    M6 patterns over each chunk's bytes as it arrives (the prefix is stripped upstream)."""
    import naive_proxy

    naive_proxy.MODES = {
        "/m6/": naive_proxy.subber([re.compile(p.encode()) for p in llm.PATTERNS]),
    }
    sys.argv = ["naive_proxy.py", *argv, "--transforms"]
    naive_proxy.main()


def litellm_config(port_upstream: int) -> dict[str, object]:
    patterns = [
        {"pattern_type": "regex", "name": name, "pattern": p, "action": "MASK"}
        for name, p in zip(LITELLM_NAMES, llm.PATTERNS, strict=True)
    ]
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://127.0.0.1:{port_upstream}/v1",
                    "api_key": "m6-upstream-key",
                },
            }
        ],
        "guardrails": [
            {
                "guardrail_name": "m6-redact",
                "litellm_params": {
                    "guardrail": "litellm_content_filter",
                    "mode": "post_call",  # what its streaming hook runs under
                    "default_on": True,
                    "patterns": patterns,
                },
            }
        ],
        "general_settings": {"master_key": LITELLM_KEY},
    }


def ensure_litellm(log: list[str], timeout: float = 900.0) -> tuple[str | None, str]:
    """The ``litellm`` CLI in its own venv, pip-installed on first use: (path, version)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    py = LITELLM_VENV / "bin" / "python"
    if not exe.exists():
        spec = f"litellm[proxy]=={LITELLM_VERSION}"
        procs.pip_install_in_venv(LITELLM_VENV, spec, "litellm", log, timeout, " (a few minutes)")
    if not exe.exists():
        return None, ""
    version = ""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        r = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            timeout=60,
            capture_output=True,
            check=False,
        )
        version = r.stdout.decode().strip()
    return str(exe), version


def start_litellm(logdir: Path, upstream: int, log: list[str]) -> Peer:
    exe, version = ensure_litellm(log)
    if exe is None:
        why = log[-1] if log else "the install failed"
        return Peer("litellm", None, note=f"n/a: LiteLLM is not installed and could not be: {why}")
    workdir = logdir / "litellm"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(litellm_config(upstream), sort_keys=False))
    port = free_port()
    argv = [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no fetch of the price list
        "HOME": str(workdir),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = Proc("litellm", pinned(argv, PROXY_CPU), logdir, cwd=str(workdir), env=env).start()
    peer = Peer("litellm", f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.info = {
        "version": version,
        "command": " ".join(argv),
        "env": "LITELLM_LOCAL_MODEL_COST_MAP=True",
        "config": str(cfg),
        "config_text": cfg.read_text(),
    }
    return _started(peer, port, 240.0, health="/health/liveliness")


def _started(peer: Peer, port: int, timeout: float, health: str | None = None) -> Peer:
    """Wait for the port (and a health URL), then one short stream; n/a with the reason."""
    assert peer.proc is not None
    problem = None
    status = 0
    if not wait_port(port, peer.proc, timeout):
        problem = "did not listen"
    elif health:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout) + 1):
            status, _body = http_get(f"http://127.0.0.1:{port}{health}", timeout=5)
            if status == 200 or time.monotonic() > deadline or not peer.proc.alive() or STOP:
                break
            time.sleep(1.0)
        if status != 200:
            problem = f"GET {health} gave {status}"
    if problem is None:
        problem = smoke(peer)
    if problem:
        tail = peer.proc.stderr_tail(1500)
        peer.url, peer.note = None, f"n/a: {problem}" + (f"; stderr: {tail}" if tail else "")
    return peer


def smoke(peer: Peer) -> str | None:
    """None when one short stream comes back with status 200 and some bytes (whether the SDK
    can parse them is what the measure counts, not a reason to drop the peer)."""
    assert peer.url is not None
    try:
        recs = run_async(
            live_streams(_base_url(peer), _key(peer), [SMOKE_SEED], 30, 0.01, 30.0, None), 60
        )
    except Exception as e:
        return f"the smoke stream failed: {type(e).__name__}: {e}"[:600]
    rec = recs[0]
    if rec.error or rec.status != 200 or not rec.reads:
        return f"the smoke stream gave status {rec.status}, {len(rec.reads)} reads: {rec.error}"
    return None


def _base_url(peer: Peer) -> str:
    assert peer.url is not None
    return peer.url + "/v1"


def _key(peer: Peer) -> str:
    return LITELLM_KEY if peer.name == "litellm" else CLIENT_KEY


def start_peers(
    names: set[str], logdir: Path, upstream: int, python: str, log: list[str]
) -> dict[str, Peer]:
    out: dict[str, Peer] = {}
    if "direct" in names:
        out["direct"] = Peer("direct", f"http://127.0.0.1:{upstream}")
        problem = smoke(out["direct"])
        if problem:
            raise RuntimeError(f"the LLM upstream does not stream: {problem}")
    if "proxy" in names:
        say("starting proxy (python -m proxy, text: openai) ...")
        out["proxy"] = start_proxy(logdir, upstream, python)
    if "proxy-body" in names:
        say("starting proxy-body (python -m proxy, regex on the raw body) ...")
        out["proxy-body"] = start_proxy_body(logdir, upstream, python)
    if "naive" in names:
        say("starting naive proxy ...")
        out["naive"] = start_naive(logdir, upstream)
    if "litellm" in names:
        say("starting LiteLLM proxy ...")
        out["litellm"] = start_litellm(logdir, upstream, log)
    for p in out.values():
        if p.note:
            say(f"  {p.name}: {p.note.splitlines()[0][:400]}")
    return out


# ---------------------------------------------------------------- the client


def sdk_httpx() -> ModuleType:
    """The httpx module the installed SDK is built on (``httpx``, or ``httpx2`` in 3.x)."""
    import openai

    base = openai.DefaultAsyncHttpxClient.__mro__[1]
    return importlib.import_module(base.__module__.split(".")[0])


TRANSPORT: dict[str, str] = {}  # which HTTP client the SDK ran on, for the JSON


def sdk_http_client(streams: int, read_timeout: float) -> tuple[Any, str]:
    """The SDK's own aiohttp-backed client when it has one (much cheaper per read than its
    httpx default), else its httpx default; room for every stream in the pool."""
    import openai

    hx = sdk_httpx()
    limits = hx.Limits(max_connections=streams + 16, max_keepalive_connections=streams + 16)
    timeout = hx.Timeout(read_timeout, connect=10.0)
    with contextlib.suppress(AttributeError, RuntimeError, ImportError, TypeError):
        client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
        TRANSPORT["kind"] = f"openai.DefaultAioHttpClient ({hx.__name__} over aiohttp)"
        return client, "aiohttp"
    TRANSPORT["kind"] = f"openai.DefaultAsyncHttpxClient ({hx.__name__})"
    return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout), "httpx"


def _messages(seed: int, events: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a benchmark."},
        {"role": "user", "content": f"m6 seed={seed} events={events}"},
    ]


@dataclass
class StreamRec:
    """One stream as it came off the socket: every read and when it arrived."""

    seed: int
    start_ns: int = 0
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    reads: list[tuple[int, bytes]] = field(default_factory=list)
    error: str | None = None
    end_ns: int = 0


@dataclass
class Sampler:
    """RSS of the peer's process tree every 0.2 s, with how many streams were open then (their
    response head in, their body not ended)."""

    pids: list[int]
    streams: int
    open: int = 0
    opened: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)  # (open streams, RSS KiB)

    def sample(self) -> None:
        self.samples.append((self.open, sum(rss_kib(p) for p in self.pids)))

    def per_stream(self, idle: int) -> tuple[float, int] | None:
        """(RSS growth over ``idle`` per open stream, streams open) at the most streams open
        at once (all of them, unless the first ended before the last began)."""
        most = max((n for n, _ in self.samples), default=0)
        if most == 0:
            return None
        rss = max(r for n, r in self.samples if n == most)
        return (rss - idle) / most, most


async def live_streams(
    base_url: str,
    api_key: str,
    seeds: list[int],
    events: int,
    interval: float,
    limit: float,
    sampler: Sampler | None,
    ramp: float = 0.0,
) -> list[StreamRec]:
    """``len(seeds)`` concurrent streams through the official SDK: it builds and sends each
    request; the body is read with its ``with_streaming_response`` ... ``iter_bytes()``, each read
    time-stamped. The SDK parses the recorded bytes afterwards (``parse_streams``): parsing
    every event live costs ~150 us, more than the load core has at 20,000 events/s.

    The starts are spread evenly over ``ramp`` seconds (at least one event interval, so the
    streams' events interleave): the SDK spends a few ms of CPU on each request, and 200 of them
    at once would put a queue of the client's own into every time to first token. Every stream
    ends by ``limit`` seconds (what has not arrived by then is counted as missing)."""
    import openai

    http, _kind = sdk_http_client(len(seeds), read_timeout=min(limit, 60.0))
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)
    recs = [StreamRec(seed) for seed in seeds]
    n = len(seeds)
    ramp = max(ramp, interval)

    async def one(i: int, rec: StreamRec) -> None:
        await asyncio.sleep(i * ramp / n)
        rec.start_ns = time.time_ns()
        opened = False
        try:
            async with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=_messages(rec.seed, events), stream=True
            ) as resp:
                rec.status = resp.status_code
                rec.headers = list(resp.headers.multi_items())
                opened = True
                if sampler:
                    sampler.open += 1
                    sampler.opened += 1
                async for data in resp.iter_bytes():
                    rec.reads.append((time.time_ns(), data))
        except asyncio.CancelledError:
            rec.error = rec.error or f"TimeoutError: not finished within {limit:.0f} s"
        except Exception as e:
            rec.error = f"{type(e).__name__}: {e}"[:600]
            status = getattr(e, "status_code", None)
            if isinstance(status, int):
                rec.status = status
        finally:
            rec.end_ns = time.time_ns()
            if sampler and opened:
                sampler.open -= 1

    async def sample_rss() -> None:
        assert sampler is not None
        for _ in range(int(limit / 0.2) + 10):
            sampler.sample()
            await asyncio.sleep(0.2)

    watcher = asyncio.ensure_future(sample_rss()) if sampler else None
    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(recs)]
    deadline = time.monotonic() + limit
    pending: set[asyncio.Future[None]] = set(tasks)
    try:
        for _ in range(int(limit / 0.5) + 2):
            left = deadline - time.monotonic()
            if not pending or STOP or left <= 0:
                break
            _done, pending = await asyncio.wait(pending, timeout=min(0.5, left))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        if watcher:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)
    return recs


# ---------------------------------------------------------------- parsing and checking

_FP = re.compile(r"fp_(\d+)_(\d+)$")
_DROP = {"content-length", "content-encoding", "transfer-encoding", "connection"}


@dataclass
class Parsed:
    """What the SDK made of one recorded stream."""

    text: str = ""
    chunks: int = 0
    finished: bool = False
    error: str | None = None
    ttft_ns: int | None = None
    event_lat_ns: list[int] = field(default_factory=list)
    pieces: list[tuple[int, str]] = field(default_factory=list)  # (arrival, content)
    sends: dict[int, int] = field(default_factory=dict)  # upstream event index -> send time


async def parse_streams(recs: list[StreamRec], events: int) -> list[Parsed]:
    """Feed each recorded body, read for read, to the official SDK's own streaming parser
    (``chat.completions.create(stream=True)`` over a mock transport): its exceptions, chunks
    and assembled text are what the SDK would have made of the stream live. An event's arrival
    is that of the read which completed it."""
    import openai

    hx = sdk_httpx()
    cursor = [0]
    current: list[StreamRec] = []

    class Replay(hx.AsyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, rec: StreamRec) -> None:
            self.rec = rec

        async def __aiter__(self) -> Any:
            for i, (_t, data) in enumerate(self.rec.reads):
                cursor[0] = i
                yield data

        async def aclose(self) -> None:
            return None

    def handler(request: Any) -> Any:
        rec = current[0]
        headers = [(k, v) for k, v in rec.headers if k.lower() not in _DROP]
        return hx.Response(rec.status, headers=headers, stream=Replay(rec))

    http = hx.AsyncClient(transport=hx.MockTransport(handler))
    client = openai.AsyncOpenAI(
        base_url="http://m6-replay.invalid/v1", api_key="replay", max_retries=0, http_client=http
    )
    out: list[Parsed] = []
    try:
        for rec in recs:
            if STOP:
                break
            p = Parsed(error=rec.error)
            out.append(p)
            if rec.status != 200 or not rec.reads:
                p.error = p.error or f"status {rec.status}, no body"
                continue
            current[:] = [rec]
            cursor[0] = 0
            try:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=_messages(rec.seed, events), stream=True
                )
                async for chunk in stream:
                    arrival = rec.reads[cursor[0]][0]
                    p.chunks += 1
                    m = _FP.match(chunk.system_fingerprint or "")
                    if m:
                        sent = int(m.group(2))
                        p.sends.setdefault(int(m.group(1)), sent)
                        p.event_lat_ns.append(arrival - sent)
                    for choice in chunk.choices:
                        content = choice.delta.content if choice.delta else None
                        if content:
                            if p.ttft_ns is None:
                                p.ttft_ns = arrival - rec.start_ns
                            p.text += content
                            p.pieces.append((arrival, content))
                        if choice.finish_reason:
                            p.finished = True
            except Exception as e:  # what the SDK raises on this stream is what we count
                if p.error is None:
                    p.error = f"{type(e).__name__}: {e}"[:600]
    finally:
        await client.close()
    return out


def peer_reference(peer: str) -> Callable[[str], tuple[str, list[int]]]:
    """The text this peer should deliver, with, for each of its characters, the last input
    character needed to produce it (a redaction tag needs its whole match)."""
    if peer == "direct":
        return lambda text: (text, list(range(len(text))))
    if peer == "litellm":  # re.IGNORECASE, and a tag per pattern
        subs = [
            (re.compile(p, re.IGNORECASE), f"[{name.upper()}_REDACTED]")
            for name, p in zip(LITELLM_NAMES, llm.PATTERNS, strict=True)
        ]
    else:
        subs = [(re.compile(p), llm.REPLACEMENT) for p in llm.PATTERNS]

    def ref(text: str) -> tuple[str, list[int]]:
        need = list(range(len(text)))
        for pat, tag in subs:
            parts: list[str] = []
            new: list[int] = []
            at = 0
            for m in pat.finditer(text):
                a, b = m.span()
                parts.append(text[at:a])
                new.extend(need[at:a])
                parts.append(tag)
                new.extend([max(need[a:b], default=need[a - 1] if a else 0)] * len(tag))
                at = b
            parts.append(text[at:])
            new.extend(need[at:])
            text, need = "".join(parts), new
        return text, need

    return ref


def text_latencies(p: Parsed, ans: llm.Answer, need: list[int]) -> list[int]:
    """Per delivered character: its arrival minus the upstream send time of the event that
    carried the last input character it needed."""
    ends: list[int] = []
    total = 0
    for d in ans.deltas:
        total += len(d)
        ends.append(total)
    # an event the peer did not pass on (merged into a later one): the next known send time
    send: list[int | None] = [p.sends.get(i) for i in range(len(ans.deltas))]
    nxt: int | None = None
    for i in range(len(send) - 1, -1, -1):
        if send[i] is None:
            send[i] = nxt
        else:
            nxt = send[i]
    out: list[int] = []
    j = 0
    for arrival, content in p.pieces:
        for _ch in content:
            if j >= len(need):
                return out
            ev = bisect.bisect_right(ends, need[j])
            s = send[min(ev, len(send) - 1)]
            if s is not None:
                out.append(arrival - s)
            j += 1
    return out


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def evaluate(peer: str, recs: list[StreamRec], parsed: list[Parsed], events: int) -> dict[str, Any]:
    """The figures of one run that come from what the client saw."""
    ref = peer_reference(peer)
    leaked = planted = exact = complete = 0
    errors: Counter[str] = Counter()
    lat: list[float] = []
    text_lat: list[float] = []
    ttft: list[float] = []
    chunks = 0
    timed_text = 0
    for rec, p in zip(recs, parsed, strict=True):
        ans = llm.answer(rec.seed, events)
        counts = Counter(s.value for s in ans.secrets)
        planted += len(ans.secrets)
        leaked += sum(min(k, p.text.count(v)) for v, k in counts.items())
        chunks += p.chunks
        if p.error:
            errors[p.error.split(":", 1)[0]] += 1
        if p.finished and not p.error:
            complete += 1
        if p.ttft_ns is not None:
            ttft.append(p.ttft_ns / 1e6)
        lat.extend(x / 1e6 for x in p.event_lat_ns)
        want, need = ref(ans.text)
        if p.text == want:
            exact += 1
        elif p.text == ans.text:  # passed through unredacted: the text latency still counts
            need = list(range(len(ans.text)))
        else:
            continue
        if p.finished:
            timed_text += 1
            text_lat.extend(x / 1e6 for x in text_latencies(p, ans, need))
    first_errors = sorted({p.error for p in parsed if p.error})[:5]
    return {
        "streams": len(recs),
        "complete": complete,
        "sdk_errors": sum(1 for p in parsed if p.error),
        "error_kinds": dict(errors),
        "error_samples": first_errors,
        "leaked": leaked,
        "planted": planted,
        "exact": exact,
        "text_timed_streams": timed_text,
        "chunks": chunks,
        "ttft_ms": statistics.median(ttft) if ttft else float("nan"),
        "event_p50_ms": _pct(lat, 50),
        "event_p99_ms": _pct(lat, 99),
        "text_p50_ms": _pct(text_lat, 50),
        "text_p99_ms": _pct(text_lat, 99),
        "events_timed": len(lat),
    }


# ---------------------------------------------------------------- one measured run


def measure(peer: Peer, s: Settings, seeds: list[int], up_pid: int) -> dict[str, Any]:
    assert peer.url is not None
    waited = 0.0
    if procs.can_pin() and s.quiet_wait:
        waited = wait_quiet(int(PROXY_CPU), 15.0, s.quiet_wait)
    pids = tree(peer.pid) if peer.pid else []
    sampler = Sampler(pids, len(seeds))
    idle_rss = min(sum(rss_kib(p) for p in pids) for _ in range(3)) if pids else 0
    c0 = cpu_seconds(pids)
    load_pids = tree(up_pid)
    l0 = cpu_seconds(load_pids)
    me0 = time.process_time()
    core, core1 = CoreMeter(int(PROXY_CPU)), CoreMeter(int(LOAD_CPU))
    core.start()
    core1.start()
    t0 = time.monotonic()
    limit = s.stream_timeout
    recs = run_async(
        live_streams(
            _base_url(peer),
            _key(peer),
            seeds,
            s.events,
            s.interval,
            limit,
            sampler,
            s.ramp,
        ),
        limit + 30,
    )
    check_stop()
    wall = time.monotonic() - t0
    busy, busy1 = core.stop(), core1.stop()
    me = time.process_time() - me0
    c1 = cpu_seconds(tree(peer.pid)) if peer.pid else {}
    used = sum(c1[p] - c0.get(p, 0.0) for p in c1)
    l1 = cpu_seconds(tree(up_pid))
    up_used = sum(l1[p] - l0.get(p, 0.0) for p in l1)
    load_pct = 100.0 * (me + up_used) / wall if wall > 0 else 0.0
    res: dict[str, Any] = {
        "seconds": round(wall, 2),
        "load_core_pct": round(load_pct, 1),
        "core1_other_pct": round(max(0.0, busy1 - load_pct), 1),
        "client_cpu_s": round(me, 2),
        "upstream_cpu_s": round(up_used, 2),
        "reads": sum(len(r.reads) for r in recs),
        "streams_opened": sampler.opened,
        "peer_processes": len(pids),
    }
    if peer.pid:
        res["cpu_s"] = round(used, 3)
        res["cpu_pct"] = round(100.0 * used / wall, 1) if wall else 0.0
        res["core0_other_pct"] = round(max(0.0, busy - 100.0 * used / wall), 1) if wall else 0.0
        res["waited_quiet_s"] = round(waited, 1)
        res["idle_rss_kib"] = idle_rss
        per = sampler.per_stream(idle_rss)
        if per is not None:
            res["rss_kib_per_stream"], res["rss_open_streams"] = per
    say(f"    {len(recs)} streams in {wall:.1f} s; the SDK parses them ...")
    t1 = time.monotonic()
    parsed = run_async(parse_streams(recs, s.events), 600)
    check_stop()
    res["parse_s"] = round(time.monotonic() - t1, 2)
    res |= evaluate(peer.name, recs, parsed, s.events)
    if peer.pid and used > 0:
        res["events_per_cpu_s"] = res["chunks"] / used
    return res


# ---------------------------------------------------------------- report

# key, label, better (↑ ↓ or ""), digits
ROWS: list[tuple[str, str, str, int]] = [
    ("complete", "streams complete", "↑", 0),
    ("sdk_errors", "streams the SDK failed on (exceptions)", "↓", 0),
    ("leaked", "secrets leaked (in SDK-assembled text)", "↓", 0),
    ("planted", "secrets planted", "", 0),
    ("exact", "streams = reference redaction", "↑", 0),
    ("ttft_ms", "time to first token, median ms", "↓", 1),
    ("added_ttft_ms", "added TTFT vs direct, median ms", "↓", 1),
    ("event_p50_ms", "per-event latency p50 ms", "↓", 2),
    ("event_p99_ms", "per-event latency p99 ms", "↓", 2),
    ("added_event_p99_ms", "added p99 per-event latency vs direct, ms", "↓", 2),
    ("text_p99_ms", "per-character text latency p99 ms", "↓", 1),
    ("added_text_p99_ms", "added p99 text latency vs direct, ms", "↓", 1),
    ("chunks", "events delivered (SDK chunks)", "", 0),
    ("cpu_s", "proxy CPU s", "", 2),
    ("cpu_pct", "proxy CPU % of one core", "", 0),
    ("events_per_cpu_s", "events/s per proxy core", "↑", 0),
    ("rss_kib_per_stream", "RSS KiB per open stream (1st run)", "↓", 1),
    ("rss_open_streams", "streams open for that RSS (1st run)", "", 0),
    ("load_core_pct", "load core busy % (client + upstream)", "", 0),
    ("core0_other_pct", "core 0 busy with other work %", "", 0),
    ("core1_other_pct", "core 1 busy with other work %", "", 0),
]
ADDED = {"added_ttft_ms": "ttft_ms", "added_event_p99_ms": "event_p99_ms"}
ADDED |= {"added_text_p99_ms": "text_p99_ms"}
RATIOS = [("proxy", "litellm"), ("proxy-body", "litellm"), ("proxy", "naive"), ("naive", "litellm")]


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if f != f else f  # NaN: no figure


def add_vs_direct(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The "added vs direct" figures, repeat by repeat (each against the same repeat's direct)."""
    direct = runs.get("direct", [])
    for col, col_runs in runs.items():
        for i, r in enumerate(col_runs):
            d = direct[i] if i < len(direct) else {}
            for key, base in ADDED.items():
                a, b = _num(r.get(base)), _num(d.get(base))
                if a is not None and b is not None and col != "direct":
                    r[key] = a - b


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for col, col_runs in runs.items():
        cell: dict[str, Any] = {}
        ok = [r for r in col_runs if "na" not in r and "error" not in r]
        for key, *_ in ROWS:
            if key.startswith("rss_"):  # a process that served earlier runs reuses memory
                vals = [v for v in (_num(ok[0].get(key)) if ok else None,) if v is not None]
            else:
                vals = [v for v in (_num(r.get(key)) for r in ok) if v is not None]
            if vals:
                cell[key] = statistics.median(vals)
        if not ok and col_runs:
            first = col_runs[0]
            cell["status"] = str(first.get("na") or f"error: {first.get('error')}")
        out[col] = cell
    return out


def _fmt(v: object, digits: int) -> str:
    f = _num(v)
    if f is None:
        return "—"
    if 0 < abs(f) < 10 and f != int(f):
        digits = max(digits, 2)
    return f"{f:,.{digits}f}"


def table(cols: list[str], med: dict[str, dict[str, Any]], s: Settings) -> str:
    head = ["metric", "better", *cols]
    lines = [
        f"M6: {s.streams} streams x {s.events} events @ {s.rate:g}/s, five patterns, "
        f"{s.repeat} repeat(s), medians",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, label, better, digits in ROWS:
        row = [label, better]
        for col in cols:
            cell = med.get(col, {})
            if "status" in cell:
                row.append("n/a" if str(cell["status"]).startswith("n/a") else "err")
            else:
                row.append(_fmt(cell.get(key), digits))
        lines.append("| " + " | ".join(row) + " |")
    ratio_lines = []
    for a, b in RATIOS:
        x = _num(med.get(a, {}).get("events_per_cpu_s"))
        y = _num(med.get(b, {}).get("events_per_cpu_s"))
        if a in cols and b in cols:
            ratio_lines.append(
                f"| {a} ÷ {b} | {x / y:.2f}x |" if x is not None and y else f"| {a} ÷ {b} | — |"
            )
    if ratio_lines:
        lines += ["", "| events/s per proxy core | ratio |", "|---|---|", *ratio_lines]
    return "\n".join(lines)


def notes(cols: list[str], med: dict[str, dict[str, Any]], runs: dict[str, list[Any]]) -> str:
    out = []
    for col in cols:
        cell = med.get(col, {})
        if "status" in cell:
            out.append(f"- {col}: {str(cell['status']).splitlines()[0][:600]}")
            continue
        kinds: Counter[str] = Counter()
        samples: list[str] = []
        for r in runs.get(col, []):
            kinds.update(r.get("error_kinds", {}))
            samples += r.get("error_samples", [])
        if kinds:
            what = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
            out.append(f"- {col}: SDK exceptions: {what}; e.g. {samples[0][:300]!r}")
        load = _num(cell.get("load_core_pct"))
        if col == "direct" and load is not None and load > 85:
            out.append(
                f"- direct: the load core was {load:.0f} % busy with the client and upstream "
                "alone: every time to first token and latency includes the client's own queue "
                "(fewer --streams or a lower --rate give cleaner latencies)"
            )
        cpu = _num(cell.get("cpu_pct"))
        if cpu is not None and cpu > 90:
            out.append(
                f"- {col}: CPU-bound ({cpu:.0f} % of its core): its latencies are mostly queueing "
                "behind the load it cannot keep up with; events/s per core still holds"
            )
    return ("\nNotes:\n" + "\n".join(out)) if out else ""


def machine(python: str) -> dict[str, str]:
    import openai

    return procstat.machine() | {
        "openai_sdk": openai.__version__,
        "sdk_transport": TRANSPORT.get("kind", "?"),
        "pinning": "peers on core 0, upstream + client on core 1" if procs.can_pin() else "off",
        "proxy_python": python,
    }


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace, s: Settings) -> int:
    cols = [c.strip() for c in args.peers.split(",") if c.strip()] if args.peers else COLUMNS
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown} (known: {COLUMNS})")
    cols = [c for c in COLUMNS if c in cols]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else HERE / "results" / f"m6-{stamp}.json"
    logdir = HERE / "results" / f"logs-m6-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cols}
    started = dt.datetime.now().isoformat(timespec="seconds")
    peers: dict[str, Peer] = {}
    try:
        up, up_port = start_upstream(logdir, s, lifetime=args.budget + 120)
        say(f"LLM upstream on http://127.0.0.1:{up_port} (pid {up.pid})")
        peers = start_peers(set(cols), logdir, up_port, s.python, log)
        for r in range(s.repeat):
            seeds = [SEED_BASE * (r + 1) + k for k in range(s.streams)]
            for col in cols:
                peer = peers[col]
                if not peer.available:
                    note = peer.note or "n/a: not started"
                    if peer.proc is not None and not peer.proc.alive():
                        note = f"n/a: exited; stderr: {peer.proc.stderr_tail(600)}"
                    runs[col].append({"na": note})
                    continue
                check_stop()
                say(f"[M6 {r + 1}/{s.repeat}] {col} ...")
                try:
                    res = measure(peer, s, seeds, up.pid)
                except Exception as e:  # one failed run must not stop the others
                    res = {"error": f"{type(e).__name__}: {e}"[:2000]}
                    if os.environ.get("BENCH_DEBUG"):
                        traceback.print_exc()
                runs[col].append(res)
                say(f"    {_brief(res)}")
    finally:
        procs.stop_all()

    add_vs_direct(runs)
    med = medians(runs)
    text = table(cols, med, s)
    print(text)
    extra = notes(cols, med, runs)
    if extra:
        print(extra)
    doc = {
        "measure": "M6",
        "started": started,
        "argv": sys.argv,
        "settings": s.__dict__,
        "machine": machine(s.python),
        "patterns": llm.PATTERNS,
        "peers": {n: {"url": p.url, "note": p.note, **p.info} for n, p in peers.items()},
        "install_log": log,
        "runs": runs,
        "medians": med,
        "table": text,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str))
    say(f"\nraw numbers: {out_path}\nlogs: {logdir}")
    return 0


def _brief(res: dict[str, Any]) -> str:
    if "error" in res:
        return str(res["error"]).splitlines()[0][:300]
    keys = ["complete", "sdk_errors", "leaked", "ttft_ms", "event_p99_ms", "text_p99_ms"]
    keys += ["events_per_cpu_s", "rss_kib_per_stream", "load_core_pct", "core0_other_pct"]
    parts = []
    for k in keys:
        v = res.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif v is not None:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def main() -> int:
    if sys.argv[1:2] == ["naive-peer"]:
        serve_naive(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 streams x 200 events, 1 repeat")
    ap.add_argument("--peers", help=f"comma list of columns (default all: {','.join(COLUMNS)})")
    ap.add_argument("--out", help="the raw JSON (default benchmarks/results/m6-<time>.json)")
    ap.add_argument("--streams", type=int, help="concurrent streams (default 200, 50 quick)")
    ap.add_argument("--events", type=int, help="events per answer (default 1000, 200 quick)")
    ap.add_argument("--rate", type=float, default=100.0, help="events/s per stream (100)")
    ap.add_argument("--repeat", type=int, help="repeats, peers interleaved (default 3, 1 quick)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for python -m proxy")
    ap.add_argument("--budget", type=int, help="hard limit on the whole run, s (900/3600)")
    ap.add_argument(
        "--stream-timeout",
        type=float,
        help="a run's streams are cut off after this many s (default 3 x their length + 60)",
    )
    ap.add_argument(
        "--ramp",
        type=float,
        help="spread the stream starts over this many s (default 5 ms per stream)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run wait up to S s for core 0 to be < 15%% busy (5 quick, 15; 0: off)",
    )
    args = ap.parse_args()
    streams = args.streams or (50 if args.quick else 200)
    events = args.events or (200 if args.quick else 1000)
    if not (1 <= streams <= 5000 and 1 <= events <= llm.MAX_EVENTS and 0.1 <= args.rate <= 1e4):
        raise SystemExit("--streams 1..5000, --events 1..100000, --rate 0.1..10000")
    length = events / args.rate
    s = Settings(
        streams=streams,
        events=events,
        rate=args.rate,
        repeat=max(1, args.repeat or (1 if args.quick else 3)),
        stream_timeout=args.stream_timeout or 3 * length + 60,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (5.0 if args.quick else 15),
        python=args.python,
        ramp=args.ramp if args.ramp is not None else 0.005 * streams,
    )
    args.budget = args.budget or (900 if args.quick else 3600)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"  # the SDK's httpx honours *_PROXY
    procs.set_up_client(LOAD_CPU)  # the client's core, with the upstream

    code = {"n": 3}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            why = f"the run exceeded its budget of {args.budget} s"
        else:
            why = f"stopped by {signal.Signals(signum).name}"
            code["n"] = 128 + signum
        if not STOP:
            STOP.append(why)
        procs.stop_all()  # the children go now, whatever becomes of the exception below
        raise Abort(why)

    for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return procs.run_within_budget(
        lambda: run(args, s), args.budget, Abort, lambda: code["n"], "M6"
    )


if __name__ == "__main__":
    sys.exit(main())
