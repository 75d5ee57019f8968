"""The proxies under test: how each is configured, started, checked and named.

Every peer serves the same paths: ``/1k``, ``/big``, ``/ticks``, ``/idle`` go to the upstream
untouched; ``/tag/`` and each redact route of ``textgen.ROUTES`` (``/r1/``, ``/r10/``,
``/d1/`` ..., prefix stripped) go through the M5 rewrites.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from procs import Proc, ensure_tool, ensure_venv_tool, free_port, http_get, pinned, wait_port
from textgen import ROUTES, TAG

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PROXY_CPU = "0"  # the proxy under test
LOAD_CPU = "1"  # upstream, wrk and the Python load client
BOTH_CPUS = "0,1"
_FRESH = itertools.count(1)  # names the extra instances that M4 starts


@dataclass
class Peer:
    """One thing to measure: a base URL and the process tree to watch (None: not a proxy)."""

    name: str
    url: str | None
    pid: int | None = None
    proc: Proc | None = None
    note: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # M5 route -> why it is n/a here
    spawn: Callable[[], Peer] | None = None  # starts a new instance of the same (for M4)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.url is not None and (self.proc is None or self.proc.alive())


M5_ROUTES = [*ROUTES, "tag"]
NGINX_SKIPS = {  # sub_filter replaces literal strings only
    name: "n/a: nginx sub_filter replaces literal strings only, not this regex"
    for name, r in ROUTES.items()
    if r.literals is None
}


def text_path(route: str, size: int) -> str:
    corpus = ROUTES[route].corpus if route in ROUTES else "sparse"
    return f"/{route}/text?size={size}&corpus={corpus}"


def _smoke(peer: Peer, m5_routes: list[str]) -> str | None:
    """None when the peer relays a 1 KiB body and rewrites a text body on each M5 route."""
    status, body = http_get(f"{peer.url}/1k")
    if status != 200 or len(body) != 1024:
        return f"GET /1k gave {status} with {len(body)} bytes: {body[:200]!r}"
    for route in m5_routes:
        status, body = http_get(f"{peer.url}{text_path(route, 4096)}")
        want = TAG if route == "tag" else b"[REDACTED]"
        if status != 200 or want not in body:
            return f"GET /{route}/text gave {status}, no {want!r} in {body[:200]!r}"
    return None


def _gist(stderr: str) -> str:
    """The telling line of a stderr tail: a traceback's last line, a Go program's ``Error:``
    line, else the first line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return ""
    errors = [ln for ln in lines if ln.startswith("Error:")]
    if errors and "Traceback" not in stderr:
        return ": " + errors[-1].strip()[:300]
    return ": " + (lines[-1] if "Traceback" in stderr else lines[0]).strip()[:300]


def _started(peer: Peer, port: int, m5_routes: list[str], timeout: float = 20.0) -> Peer:
    """Wait for the port and smoke-test; on failure the peer becomes n/a with the reason."""
    assert peer.proc is not None
    ok = wait_port(port, peer.proc, timeout)
    problem = None if ok else "did not listen"
    if ok:
        problem = _smoke(peer, m5_routes)
    if problem:
        tail = peer.proc.stderr_tail()
        rc = peer.proc.popen.poll() if peer.proc.popen else None
        peer.proc.stop()
        peer.note = f"n/a: {problem} (exit code {rc}){_gist(tail)}" + (f"\n{tail}" if tail else "")
        peer.url = None
    return peer


def start_upstream(logdir: Path, lifetime: float) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    argv += ["--lifetime", str(int(lifetime))]
    proc = Proc("upstream", pinned(argv, LOAD_CPU), logdir).start()
    if not wait_port(port, proc, 60.0):
        raise RuntimeError(f"upstream did not start:\n{proc.stderr_tail()}")
    return proc, port


def start_naive(logdir: Path, upstream: int, tag: str = "") -> Peer:
    port = free_port()
    argv = [sys.executable, str(HERE / "naive_proxy.py"), "--port", str(port)]
    argv += ["--upstream", f"http://127.0.0.1:{upstream}", "--transforms"]
    proc = Proc(f"naive{tag}", pinned(argv, PROXY_CPU), logdir).start()
    peer = Peer("naive", f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.spawn = lambda: start_naive(logdir, upstream, f"-fresh{next(_FRESH)}")
    return _started(peer, port, M5_ROUTES)


# ---------------------------------------------------------------- this project


def proxy_config(
    port: int,
    admin: int,
    upstream: int,
    workers: int,
    m5_routes: list[str] = M5_ROUTES,
    client: str | None = None,
) -> dict[str, object]:
    """This project's config. ``client``: the upstream transport (``native``, ``aiohttp``);
    None leaves the key out, so the proxy's default (native) is measured."""

    def m5_route(name: str, transform: dict[str, object]) -> dict[str, object]:
        return {
            "name": name,
            "match": {"path_prefix": f"/{name}/"},
            "upstream": "bench",
            "strip_prefix": True,
            "transforms": [transform],
        }

    transforms: dict[str, dict[str, object]] = {
        **{name: {"redact": {"patterns": r.patterns}} for name, r in ROUTES.items()},
        "tag": {"tag_lines": {"tag": TAG.decode()}},
    }
    bench: dict[str, object] = {
        "targets": [f"http://127.0.0.1:{upstream}"],
        "connect_timeout": "5s",
        "read_timeout": "120s",
    }
    if client is not None:
        bench["client"] = client
    return {
        "server": {"host": "127.0.0.1", "port": port, "workers": workers, "shutdown_grace": "2s"},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstreams": {"bench": bench},
        "routes": [
            *(m5_route(name, transforms[name]) for name in m5_routes),
            {"name": "plain", "match": {"path_prefix": "/"}, "upstream": "bench"},
        ],
    }


# the columns of this project: column -> the upstream's ``client:`` (None: the default, native)
PROXY_CLIENTS: dict[str, str | None] = {"proxy": None, "proxy-aiohttp": "aiohttp"}


def proxy_name(workers: int, client: str | None = None) -> str:
    """``proxy``, ``proxy-aiohttp``, ``proxy-w2``, ``proxy-aiohttp-w2``."""
    base = "proxy" if client is None else f"proxy-{client}"
    return base if workers == 1 else f"{base}-w{workers}"


def _launch_proxy(
    logdir: Path,
    upstream: int,
    workers: int,
    python: str,
    m5_routes: list[str],
    attempt: str,
    repo: Path = REPO,
    name: str | None = None,
    client: str | None = None,
) -> Peer:
    name = name or proxy_name(workers, client)
    port, admin = free_port(), free_port()
    cfg = logdir / f"{name}-{attempt}.yaml"
    conf = proxy_config(port, admin, upstream, workers, m5_routes, client)
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
    }
    argv = [python, "-m", "proxy", "-c", str(cfg)]
    cpus = PROXY_CPU if workers == 1 else BOTH_CPUS
    proc = Proc(f"{name}-{attempt}", pinned(argv, cpus), logdir, cwd=str(repo), env=env).start()
    peer = Peer(name, f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.info = {
        "config": str(cfg),
        "admin": f"http://127.0.0.1:{admin}",
        "client": client or "native (default)",
    }
    return _started(peer, port, m5_routes, timeout=30.0)


def start_proxy(
    logdir: Path,
    upstream: int,
    workers: int,
    python: str,
    repo: Path = REPO,
    name: str | None = None,
    client: str | None = None,
) -> Peer:
    """This project with every M5 route; when the config is refused, again without the M5
    routes it names (``routes[N]...: problem``, per the contract), then without any.
    ``repo``: another checkout of it (the ``base`` column: the code before a change);
    ``client``: the upstream transport (``aiohttp`` for the ``proxy-aiohttp`` column)."""
    routes = list(M5_ROUTES)
    first: Peer | None = None
    skipped: dict[str, str] = {}
    for attempt in range(1, 4):
        peer = _launch_proxy(
            logdir, upstream, workers, python, routes, str(attempt), repo, name, client
        )
        first = first or peer
        if peer.available:
            peer.skipped = skipped
            peer.spawn = lambda ok=list(routes): _launch_proxy(
                logdir, upstream, workers, python, ok, f"fresh{next(_FRESH)}", repo, name, client
            )
            return peer
        text = peer.proc.stderr_tail() if peer.proc else ""
        bad: dict[str, str] = {}
        for m in re.finditer(r"^routes\[(\d+)\][^\n]*", text, re.M):
            i = int(m.group(1))
            if i < len(routes):
                bad.setdefault(routes[i], f"n/a: the proxy refused this route: {m.group(0)}")
        for m in re.finditer(r"GET /(\w+)/text gave .*", peer.note):
            if m.group(1) in routes:
                bad.setdefault(m.group(1), f"n/a: {m.group(0)}"[:500])
        if not routes:
            break
        if not bad:  # not a transform problem we can tell: try once with no M5 route at all
            bad = {
                r: f"n/a: the proxy did not start with the M5 routes{_gist(text)}" for r in routes
            }
        skipped |= bad
        routes = [r for r in routes if r not in bad]
    assert first is not None
    return first  # fails even without transforms: report the first failure


def proxy_version(python: str) -> str | None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        r = subprocess.run(
            [python, "-m", "proxy", "--version"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.decode(errors="replace").strip() if r.returncode == 0 else None


# ---------------------------------------------------------------- nginx


def _q(s: str) -> str:
    """An nginx quoted string."""
    return json.dumps(s)


def _m5_locations() -> str:
    def loc(prefix: str, pairs: list[tuple[str, str]]) -> str:
        subs = "".join(f"      sub_filter {_q(a)} {_q(b)};\n" for a, b in pairs)
        return (
            f"    location /{prefix}/ {{\n"
            f"      proxy_pass http://bench/;\n"
            f'      proxy_set_header Accept-Encoding "";\n'
            f"{subs}"
            f"      sub_filter_once off;\n"
            f"      sub_filter_types text/plain;\n"
            f"    }}\n"
        )

    red = "[REDACTED]"
    return (
        "".join(
            loc(name, [(lit, red) for lit in r.literals])
            for name, r in ROUTES.items()
            if r.literals is not None
        )
        # sub_filter cannot see a line start: "\n" -> "\n[x] " misses the first line
        + loc("tag", [("\n", "\n" + TAG.decode())])
    )


def nginx_config(workdir: Path, upstream: int, servers: dict[int, str], workers: int) -> str:
    blocks = ""
    for port, buffers in servers.items():
        blocks += (
            f"  server {{\n"
            f"    listen 127.0.0.1:{port} backlog=4096;\n"
            f"    proxy_http_version 1.1;\n"
            f'    proxy_set_header Connection "";\n'
            f"    proxy_buffering off;\n"
            f"{buffers}"
            f"    location / {{ proxy_pass http://bench; }}\n"
            f"{_m5_locations()}"
            f"  }}\n"
        )
    w = workdir
    return (
        f"worker_processes {workers};\n"
        f"daemon off;\n"
        f"pid {w}/nginx.pid;\n"
        f"error_log {w}/error.log warn;\n"
        f"worker_rlimit_nofile 16384;\n"
        f"events {{ worker_connections 8192; }}\n"
        f"http {{\n"
        f"  access_log /dev/null;\n"
        f"  client_body_temp_path {w}/body;\n"
        f"  proxy_temp_path {w}/proxy;\n"
        f"  fastcgi_temp_path {w}/fastcgi;\n"
        f"  uwsgi_temp_path {w}/uwsgi;\n"
        f"  scgi_temp_path {w}/scgi;\n"
        f"  keepalive_requests 1000000;\n"
        f"  proxy_read_timeout 120s;\n"
        f"  upstream bench {{\n"
        f"    server 127.0.0.1:{upstream};\n"
        f"    keepalive 64;\n"
        f"    keepalive_requests 1000000;\n"
        f"  }}\n"
        f"{blocks}"
        f"}}\n"
    )


BUFFERS_64K = (
    "    proxy_buffer_size 64k;\n    proxy_buffers 8 64k;\n    proxy_busy_buffers_size 128k;\n"
)


def start_nginx(
    logdir: Path, upstream: int, workers: int, log: list[str], tag: str = ""
) -> list[Peer]:
    """nginx with default buffers (``nginx``) and 64k buffers (``nginx-64k``) on two ports."""
    base = "nginx" if workers == 1 else f"nginx-w{workers}"
    names = [base] if workers > 1 else [base, f"{base}-64k"]
    binary = ensure_tool("nginx", ["nginx-light", "nginx"], log)
    if binary is None:
        return [Peer(n, None, note="n/a: nginx is not installed and could not be") for n in names]
    workdir = logdir / f"{base}{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in names]
    servers = {ports[0]: ""} | ({ports[1]: BUFFERS_64K} if len(ports) > 1 else {})
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, upstream, servers, workers))
    argv = [binary, "-p", str(workdir), "-c", str(conf)]
    cpus = PROXY_CPU if workers == 1 else BOTH_CPUS
    proc = Proc(f"{base}{tag}", pinned(argv, cpus), logdir).start()
    peers = []
    for name, port in zip(names, ports, strict=True):
        peer = Peer(name, f"http://127.0.0.1:{port}", proc.pid, proc)
        peer.spawn = lambda name=name: _pick(
            start_nginx(logdir, upstream, workers, log, f"-fresh{next(_FRESH)}"), name
        )
        peers.append(peer)
        if not wait_port(port, proc, 20.0):
            peer.url, peer.note = None, f"n/a: nginx did not start: {proc.stderr_tail()}"
            continue
        peer.skipped = dict(NGINX_SKIPS)
        problem = _smoke(peer, [r for r in M5_ROUTES if r not in NGINX_SKIPS])
        if problem:
            peer.url, peer.note = None, f"n/a: {problem}"
    return peers


# ---------------------------------------------------------------- caddy


def caddy_config(workdir: Path, port: int, upstream: int) -> str:
    """A Caddyfile: plain HTTP on 127.0.0.1 only, no admin API, no certificates, streaming
    reverse proxy. Settings chosen to match the nginx peer: access log formatted and written
    (to stdout, which the harness sends to /dev/null, as nginx's goes to /dev/null), up to 64
    idle upstream connections kept (nginx: ``keepalive 64``), 2 s shutdown grace."""
    return (
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tgrace_period 2s\n"
        f"\tstorage file_system {workdir / 'data'}\n"
        "}\n"
        "\n"
        f"http://:{port} {{\n"  # no host matcher: every request is proxied
        "\tbind 127.0.0.1\n"
        "\tlog {\n"
        "\t\toutput stdout\n"
        "\t}\n"
        f"\treverse_proxy 127.0.0.1:{upstream} {{\n"
        "\t\tflush_interval -1\n"
        "\t\ttransport http {\n"
        "\t\t\tkeepalive_idle_conns_per_host 64\n"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


def start_caddy(logdir: Path, upstream: int, log: list[str], tag: str = "") -> Peer:
    """Caddy (Debian's ``caddy``), one core: ``GOMAXPROCS=1`` and pinned like nginx."""
    binary = ensure_tool("caddy", ["caddy"], log)
    if binary is None:
        return Peer("caddy", None, note="n/a: caddy is not installed and could not be")
    workdir = logdir / f"caddy{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "Caddyfile"
    conf.write_text(caddy_config(workdir, port, upstream))
    env = {
        **os.environ,
        "GOMAXPROCS": "1",
        "HOME": str(workdir),  # Caddy's data and config folders, instead of the user's
        "XDG_DATA_HOME": str(workdir / "data"),
        "XDG_CONFIG_HOME": str(workdir / "config"),
    }
    argv = [binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
    proc = Proc(f"caddy{tag}", pinned(argv, PROXY_CPU), logdir, cwd=str(workdir), env=env).start()
    peer = Peer("caddy", f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.info = {"config": str(conf)}
    peer.spawn = lambda: start_caddy(logdir, upstream, log, f"-fresh{next(_FRESH)}")
    return _started(peer, port, [])


# ---------------------------------------------------------------- mitmproxy

MITM_VENV = Path("/tmp/streamproxy-bench-mitmproxy")  # kept between runs: pip is slow


def start_mitmproxy(logdir: Path, upstream: int, log: list[str]) -> Peer:
    """mitmdump in reverse-proxy mode, bodies streamed, its flow log on (stdout, to /dev/null)."""
    binary = ensure_venv_tool("mitmdump", "mitmproxy", MITM_VENV, log)
    if binary is None:
        return Peer("mitmproxy", None, note="n/a: mitmproxy is not installed and could not be")
    workdir = logdir / "mitmproxy"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--mode", f"reverse:http://127.0.0.1:{upstream}@{port}"]
    argv += ["--listen-host", "127.0.0.1"]
    argv += ["--set", f"confdir={workdir / 'conf'}"]  # its CA files, instead of ~/.mitmproxy
    argv += ["--set", "stream_large_bodies=1"]  # relay bodies as they come, never hold them
    env = {**os.environ, "HOME": str(workdir)}
    proc = Proc("mitmproxy", pinned(argv, PROXY_CPU), logdir, cwd=str(workdir), env=env).start()
    peer = Peer("mitmproxy", f"http://127.0.0.1:{port}", proc.pid, proc)
    peer.info = {"command": " ".join(argv)}
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=False)
        peer.info["version"] = r.stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return _started(peer, port, [], timeout=30.0)


def _pick(peers: list[Peer], name: str) -> Peer:
    return next(p for p in peers if p.name == name)


def direct(upstream: int) -> Peer:
    """No proxy at all: the client talks to the upstream (the floor of every latency)."""
    return Peer("direct", f"http://127.0.0.1:{upstream}", None, None)
