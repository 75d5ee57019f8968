"""M6 idle: the proxy's RSS per idle LLM answer stream, by route kind.

    python benchmarks/m6_idle.py [--streams 400] [--modes plain,body,openai]

An aiohttp upstream (this process) answers ``POST /v1/chat/completions`` with
``text/event-stream`` and then, per ``--phase``, either sends nothing more (``first``: the answer
waits for its first token) or sends four chat.completion.chunk events ending in ``sk-`` plus
three more characters, a partial match that ``redact`` must hold (``held``), and waits. A
fresh ``python -m proxy`` (pinned to core 0) fronts it with one route: no transforms
(``plain``), ``redact`` with the five M6 patterns on the raw body (``body``), or the same with
``text: openai`` (``openai``). After 20 warm-up streams, ``--streams`` streams are opened and
held; the proxy's RSS growth over them, per stream, is printed (KiB). Every process started is
ended by its PID; listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = [
    r"sk-[A-Za-z0-9]{20,}",
    r"AKIA[A-Z0-9]{16}",
    r"(?i)password=\S+",
    r"[\w.+-]+@[\w-]+\.[\w.]+",
    r"\b(?:\d[ -]?){13,16}\b",
]
HELD = ("", "Hello ", "my key is sk-", "abc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chunk(content: str) -> bytes:
    obj = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def measure(mode: str, phase: str, streams: int) -> float:
    release = asyncio.Event()
    deltas = HELD if phase == "held" else ()

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for d in deltas:
            await resp.write(chunk(d))
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    up_port, port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    route: dict[str, object] = {"name": "llm", "match": {"path_prefix": "/"}, "upstream": "u"}
    if mode != "plain":
        route["transforms"] = [{"redact": {"patterns": PATTERNS}}]
        route["text"] = "openai" if mode == "openai" else "body"
    config = {
        "server": {"host": "127.0.0.1", "port": port, "access_log": False},
        "upstreams": {"u": {"targets": [f"http://127.0.0.1:{up_port}"]}},
        "routes": [route],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    proc = await asyncio.create_subprocess_exec(
        *("taskset", "-c", "0", sys.executable, "-m", "proxy", "-c", f.name),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # bounded wait for the listener
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.05)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def open_stream() -> aiohttp.ClientResponse:
                resp = await session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
                got = b""
                async with asyncio.timeout(10):
                    while got.count(b"\n\n") < len(deltas):
                        got += await resp.content.readany()
                return resp

            held = [await open_stream() for _ in range(20)]
            await asyncio.sleep(0.5)
            before = rss_kib(proc.pid)
            held += await asyncio.gather(*(open_stream() for _ in range(streams)))
            await asyncio.sleep(1.0)
            after = rss_kib(proc.pid)
            release.set()
            for resp in held:
                resp.close()
        return (after - before) / streams
    finally:
        proc.send_signal(2)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        os.unlink(f.name)
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, default=400)
    ap.add_argument("--modes", default="plain,body,openai")
    ap.add_argument("--phases", default="first,held")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("| route | phase | RSS KiB per idle stream (median) | runs |")
    print("|---|---|---|---|")
    for phase in args.phases.split(","):
        for mode in args.modes.split(","):
            runs = sorted(
                asyncio.run(measure(mode, phase, args.streams)) for _ in range(args.repeat)
            )
            runs_text = ", ".join(f"{r:.1f}" for r in runs)
            print(f"| {mode} | {phase} | {runs[len(runs) // 2]:.1f} | {runs_text} |", flush=True)


if __name__ == "__main__":
    main()
