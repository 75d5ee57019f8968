"""M1 with tracing off and on, side by side: what tracing costs, and that off costs nothing.

    python benchmarks/m1_tracing.py [--base REF] [--seconds 5] [--repeat 3]

Columns, each this project on core 0 with M1's load (wrk -t1 -c50, 1 KiB responses, keep-alive)
and the benchmark upstream on core 1:

- ``base``: the code at ``--base`` (any git ref, default ``main``; extracted with
  ``git archive`` into a temporary folder), without tracing: today's figures;
- ``off``: this tree, no ``tracing:`` in the config;
- ``on``: this tree, ``tracing:`` to a collector stand-in (``otlp_sink.py``, core 1) with
  ``sample_ratio: 1.0``: every request makes a server and a client span, exported over OTLP/HTTP;
- ``on-unsampled``: the same with ``sample_ratio: 0``: spans are made but not recorded.

The repeats interleave the columns (base, off, on, ..., base, off, on, ...), and the table
gives medians and each column's ratio to ``base``. Absolute figures from a shared machine are
worth little; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import load
import yaml
from peers import HERE, LOAD_CPU, PROXY_CPU, REPO, proxy_config, start_upstream
from procs import Proc, free_port, http_get, pinned, stop_all, wait_port
from procstat import CpuMeter

COLUMNS = ["base", "off", "on", "on-unsampled"]


def extract(ref: str, into: Path) -> Path:
    """The repository at ``ref`` as plain files (no checkout, no worktree)."""
    archive = into / "base.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", ref], stdout=f, check=True)
    root = into / "base"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def start(
    name: str, code: Path, tracing: dict[str, object] | None, *, upstream: int, logdir: Path
) -> tuple[Proc, str]:
    port, admin = free_port(), free_port()
    conf = proxy_config(port, admin, upstream, 1, m5_routes=[])
    if tracing is not None:
        conf["tracing"] = tracing
    cfg = logdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(code)}
    argv = [sys.executable, "-m", "proxy", "-c", str(cfg)]
    proc = Proc(name, pinned(argv, PROXY_CPU), logdir, cwd=str(code), env=env).start()
    if not wait_port(port, proc, 30.0):
        raise RuntimeError(f"{name} did not start:\n{proc.stderr_tail()}")
    url = f"http://127.0.0.1:{port}"
    status, _ = http_get(url + "/1k")
    assert status == 200, (name, status)
    return proc, url


def measure(proc: Proc, url: str, seconds: float) -> dict[str, float]:
    meter = CpuMeter(proc.pid)
    meter.start()
    res = load.wrk(url + "/1k", seconds, 50, 1, LOAD_CPU)
    res["cpu_pct"] = meter.stop()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", default="main", help="git ref of today's code (the base column)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per column")
    ap.add_argument("--out", help="raw JSON results (default: benchmarks/results/)")
    ap.add_argument(
        "--columns",
        default=",".join(COLUMNS),
        help=f"comma list of columns (default all: {COLUMNS})",
    )
    args = ap.parse_args()
    columns = [c for c in COLUMNS if c in args.columns.split(",")]
    assert columns and columns[0] == "base", "the base column is needed for the ratios"

    work = Path(tempfile.mkdtemp(prefix="streamproxy-m1-tracing-"))
    logdir = work / "logs"
    logdir.mkdir()
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in columns}
    try:
        base = extract(args.base, work)
        _, upstream = start_upstream(logdir, 3600)
        sink_port = free_port()
        sink = Proc(
            "otlp-sink",
            pinned(
                [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(sink_port)], LOAD_CPU
            ),
            logdir,
        ).start()
        assert wait_port(sink_port, sink, 30.0), sink.stderr_tail()
        collector = f"http://127.0.0.1:{sink_port}"
        settings: dict[str, tuple[Path, dict[str, object] | None]] = {
            "base": (base, None),
            "off": (REPO, None),
            "on": (REPO, {"otlp_endpoint": collector}),
            "on-unsampled": (REPO, {"otlp_endpoint": collector, "sample_ratio": 0.0}),
        }
        peers = {c: start(c, *settings[c], upstream=upstream, logdir=logdir) for c in columns}
        for name, (_, url) in peers.items():
            load.wrk(url + "/1k", 1, 50, 1, LOAD_CPU)  # warm-up
            print(f"warmed up {name}", file=sys.stderr)
        for i in range(args.repeat):
            # Every other round runs the columns backwards (A B C, C B A, ...): no column
            # always follows the same one.
            order = list(peers.items()) if i % 2 == 0 else list(reversed(peers.items()))
            for name, (proc, url) in order:
                res = measure(proc, url, args.seconds)
                runs[name].append(res)
                print(f"run {i + 1} {name}: {res}", file=sys.stderr)
        _, body = http_get(collector + "/stats")
        sink_stats = json.loads(body)
    finally:
        stop_all()

    def med(col: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[col])

    keys = [("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("cpu_pct", "CPU %")]
    keys = [(k, label) for k, label in keys if all(k in r for c in columns for r in runs[c])]
    for r in (r for c in columns for r in runs[c]):
        r["per_cpu_s"] = r["rps"] / (r["cpu_pct"] / 100) if r.get("cpu_pct") else 0.0
    keys.append(("per_cpu_s", "req per CPU-second"))
    head = "| | " + " | ".join(columns) + " | " + " | ".join(f"{c}/base" for c in columns[1:])
    lines = [head + " |", "|---" * (1 + 2 * len(columns) - 1) + "|"]
    for key, label in keys:
        vals = [med(c, key) for c in columns]
        ratios = [v / vals[0] if vals[0] else float("nan") for v in vals[1:]]
        cells = [f"{v:,.1f}" for v in vals] + [f"{r:.3f}" for r in ratios]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(
        f"\n{args.repeat} interleaved runs of {args.seconds:g} s per column, medians; "
        f"the collector stand-in took {sink_stats['exports']} exports, {sink_stats['bytes']} bytes."
    )
    out = (
        Path(args.out)
        if args.out
        else REPO / "benchmarks" / "results" / (f"m1-tracing-{time.strftime('%Y%m%d-%H%M%S')}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "runs": runs, "sink": sink_stats}, indent=1))
    print(f"raw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
