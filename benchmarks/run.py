"""Benchmarks of this proxy side by side with nginx and a naive aiohttp proxy.

    python benchmarks/run.py [--quick] [--only M1,M2] [--out results.json]

Starts the upstream, every peer and the load generators; pins the proxies under test to core 0
and the upstream and load to core 1; repeats each measurement, interleaving the peers; prints a
Markdown table of medians and ratios; writes the raw numbers as JSON. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measures
import peers
import procs
import procstat
import report
from measures import MEASURES, Ctx, Measure
from peers import Peer
from procstat import CoreMeter, CpuMeter, wait_quiet

HERE = Path(__file__).resolve().parent


class BudgetExceeded(BaseException):
    """The whole run went past its time budget."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def select(only: str | None) -> list[Measure]:
    if not only:
        return list(MEASURES)
    tokens = [t.strip() for t in only.split(",") if t.strip()]

    def wanted(mid: str) -> bool:
        # "M1" picks M1 and M1w2, "M4" picks M4i and M4s, "M5r1" only itself
        return any(mid == t or (mid.startswith(t) and not mid[len(t)].isdigit()) for t in tokens)

    chosen = [m for m in MEASURES if wanted(m.id)]
    if not chosen:
        raise SystemExit(f"--only {only}: no such measure (known: {[m.id for m in MEASURES]})")
    return chosen


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else "n/a"


def machine() -> dict[str, str]:
    import aiohttp

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "missing"
    return procstat.machine() | {
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "nginx": _version(["nginx", "-v"]),
        "caddy": _version(["caddy", "version"]),
        "wrk": _version(["wrk", "-v"]),
        "pinning": "proxy on core 0, upstream + load on core 1" if procs.can_pin() else "off",
    }


def start_peers(
    names: set[str],
    logdir: Path,
    upstream: int,
    python: str,
    log: list[str],
    base_repo: str | None = None,
) -> dict[str, Peer]:
    out: dict[str, Peer] = {}
    if "direct" in names:
        out["direct"] = peers.direct(upstream)
    if "naive" in names:
        say("starting naive proxy ...")
        out["naive"] = peers.start_naive(logdir, upstream)
    for workers in (1, 2):
        base = "nginx" if workers == 1 else "nginx-w2"
        if names & {base, f"{base}-64k"}:
            say(f"starting {base} ...")
            for p in peers.start_nginx(logdir, upstream, workers, log):
                out[p.name] = p
        for client in peers.PROXY_CLIENTS.values():
            name = peers.proxy_name(workers, client)
            if name in names:
                how = f", client: {client}" if client else ""
                say(f"starting {name} (python -m proxy{how}) ...")
                out[name] = peers.start_proxy(logdir, upstream, workers, python, client=client)
    if "base" in names and base_repo:
        say(f"starting base (python -m proxy from {base_repo}) ...")
        out["base"] = peers.start_proxy(logdir, upstream, 1, python, Path(base_repo), "base")
    if "caddy" in names:
        say("starting caddy ...")
        out["caddy"] = peers.start_caddy(logdir, upstream, log)
    if "mitmproxy" in names:
        say("starting mitmproxy (mitmdump) ...")
        out["mitmproxy"] = peers.start_mitmproxy(logdir, upstream, log)
    for p in out.values():
        for note in (p.note, *p.skipped.values()):
            if note:
                say(f"  {p.name}: {note.splitlines()[0]}")
                for line in note.splitlines()[1:12]:
                    say(f"    {line}")
    return out


def _brief(res: dict[str, object]) -> str:
    if "na" in res:
        return str(res["na"]).splitlines()[0][:200]
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()]
    return " ".join(parts)[:300]


def run_one(
    m: Measure, peer: Peer | None, ctx: Ctx, tools: dict[str, bool], quiet_wait: float
) -> dict[str, object]:
    if peer is None or not peer.available:
        note = (peer.note if peer else "") or "n/a: not started"
        if peer is not None and peer.proc is not None and not peer.proc.alive():
            note = f"n/a: exited; stderr: {peer.proc.stderr_tail(500)}"
        return {"na": note if note.startswith("n/a") else f"n/a: {note}"}
    if m.id.startswith("M5") and m.id[2:] in peer.skipped:
        return {"na": peer.skipped[m.id[2:]]}
    if m.id.startswith("M1") and not tools["wrk"]:
        return {"na": "n/a: wrk is not installed"}
    # M4 measures memory in fresh instances: the noise figure would count them as "other"
    pinned = procs.can_pin() and not m.id.endswith("w2") and m.timed
    waited = wait_quiet(int(peers.PROXY_CPU), 15.0, quiet_wait) if pinned and quiet_wait else 0.0
    # how busy the proxy's core was with anything but the peer: the noise of a shared machine
    core = CoreMeter(int(peers.PROXY_CPU))
    mine = CpuMeter(peer.pid) if peer.pid else None
    core.start()
    if mine:
        mine.start()
    t0 = time.monotonic()
    try:
        res: dict[str, object] = dict(m.run(peer, ctx))
    except Exception as e:  # one failed run must not stop the others
        res = {"error": f"{type(e).__name__}: {e}"[:2000]}
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
    res["seconds"] = round(time.monotonic() - t0, 2)
    busy, used = core.stop(), (mine.stop() if mine else 0.0)
    if pinned:
        res["core0_other_pct"] = round(max(0.0, busy - used), 1)
        res["waited_quiet_s"] = round(waited, 1)
    return res


def run(args: argparse.Namespace) -> int:
    chosen = select(args.only)
    repeats = args.repeat or (1 if args.quick else 3)
    cols = {c.strip() for c in args.peers.split(",") if c.strip()} if args.peers else None
    if cols is None:
        cols = set(report.COLUMNS)
    elif cols - set(report.COLUMNS):
        raise SystemExit(f"--peers: no such column {sorted(cols - set(report.COLUMNS))}")
    if not args.base:
        cols.discard("base")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else HERE / "results" / f"results-{stamp}.json"
    logdir = HERE / "results" / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    install_log: list[str] = []
    tools = {"wrk": True}
    if any(m.id.startswith("M1") for m in chosen):
        tools["wrk"] = procs.ensure_tool("wrk", ["wrk"], install_log) is not None
        if not tools["wrk"]:
            say("wrk is missing and could not be installed: M1 is n/a")
    names = {m.columns[c] for m in chosen for c in m.columns if c in cols}
    runs: report.Runs = {m.id: {c: [] for c in m.columns if c in cols} for m in chosen}
    started = dt.datetime.now().isoformat(timespec="seconds")
    all_peers: dict[str, Peer] = {}
    try:
        up_proc, up_port = peers.start_upstream(logdir, lifetime=args.budget + 120)
        upstream_url = f"http://127.0.0.1:{up_port}"
        say(f"upstream on {upstream_url} (pid {up_proc.pid})")
        if any(m.id.startswith("M5") for m in chosen):
            say("building the M5 reference outputs ...")
            measures.warm_references([m.id[2:] for m in chosen if m.id.startswith("M5")])
        late = {"proxy-w2", "nginx-w2"}  # unpinned: started only for their own measure
        all_peers = start_peers(names - late, logdir, up_port, args.python, install_log, args.base)
        ctx = Ctx(quick=args.quick, upstream_url=upstream_url)
        for m in chosen:
            own: dict[str, Peer] = {}
            if set(m.columns.values()) & late & names:
                own = start_peers(
                    set(m.columns.values()) & late & names,
                    logdir,
                    up_port,
                    args.python,
                    install_log,
                )
                all_peers |= own
            for r in range(repeats):
                ctx.first_repeat = r == 0
                for col in runs[m.id]:
                    peer = all_peers.get(m.columns[col])
                    res = run_one(m, peer, ctx, tools, args.quiet_wait)
                    runs[m.id][col].append(res)  # type: ignore[arg-type]
                    say(f"[{m.id} {r + 1}/{repeats}] {col:<13} {_brief(res)}")
            for p in own.values():
                if p.proc:
                    p.proc.stop()
    finally:
        procs.stop_all()

    med = report.medians(chosen, runs)
    table = report.table(chosen, med)
    print(table)
    issues = report.problems(chosen, med)
    if issues:
        print("\nNot measured:\n" + "\n".join(issues))
    noisy = report.noisy(runs)
    if noisy:
        print("\nCore 0 busy with other work (% of the run), where over 10 %:\n" + "\n".join(noisy))
    doc = {
        "started": started,
        "argv": sys.argv,
        "quick": args.quick,
        "repeats": repeats,
        "machine": machine() | {"proxy": peers.proxy_version(args.python) or "n/a"},
        "peers": {
            n: {"url": p.url, "note": p.note, "skipped": p.skipped, **p.info}
            for n, p in all_peers.items()
        },
        "install_log": install_log,
        "runs": runs,
        "medians": med,
        "table": table,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2))
    say(f"\nraw numbers: {out_path}\nlogs: {logdir}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="1 repeat, 3 s wrk runs, 256 MiB slow read"
    )
    ap.add_argument(
        "--only", help="comma list of measures: M1 M2 M3 M4 M5 (or M4i, M5r10, M1w2 ...)"
    )
    ap.add_argument("--out", help="where to write the raw JSON (default benchmarks/results/)")
    ap.add_argument("--repeat", type=int, help="repeats per measure (default 3, 1 with --quick)")
    ap.add_argument("--peers", help=f"comma list of columns to run (default all: {report.COLUMNS})")
    ap.add_argument("--python", default=sys.executable, help="interpreter for python -m proxy")
    ap.add_argument(
        "--base",
        help="another checkout of this project (e.g. the commit before a change), measured "
        "as the `base` column of M5 beside `proxy`",
    )
    ap.add_argument("--budget", type=int, help="hard limit for the whole run, seconds")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many s for core 0 to be < 15%% busy "
        "(default 5, 15 without --quick; 0: don't)",
    )
    args = ap.parse_args()
    args.budget = args.budget or (1200 if args.quick else 3600)
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 15.0

    procs.set_up_client(peers.LOAD_CPU)  # the Python load client's core

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BudgetExceeded(f"run exceeded its budget of {args.budget} s")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    return procs.run_within_budget(
        lambda: run(args), args.budget, BudgetExceeded, lambda: 3, "the benchmarks"
    )


if __name__ == "__main__":
    sys.exit(main())
