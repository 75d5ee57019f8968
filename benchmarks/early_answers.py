"""Uploads to upstreams that answer early: a 50 MiB upload to an upstream that answers at once
and keeps reading (time through the proxy against direct, byte-exact by SHA-256; ``WF_PATH=/late``
for one that reads everything first), then N early-401 uploads (8 MiB, the upstream resets after
64 KiB) with a CPU burner on the load core: every one must be a 401.

    taskset -c 1 python benchmarks/early_answers.py [N]

The proxy runs pinned to core 0; this process (client and upstream) belongs on core 1.
Setup is synchronous on purpose (a config file, one proxy process) before the async load.
"""

# ruff: noqa: ASYNC220, ASYNC240

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UP_PORT = 19311
PROXY_PORT = 19312


async def counting(reader, writer):
    # early 200, then read the whole body (Content-Length), answer with size and sha256
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            path = head.split(b" ")[1]
            if path.startswith(b"/401"):
                await reader.readexactly(2**16)
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied")
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            late = path.startswith(b"/late")
            if not late:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            h = hashlib.sha256()
            left = length
            while left:
                data = await reader.read(min(left, 2**18))
                if not data:
                    return
                h.update(data)
                left -= len(data)
            if late:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            text = b"%d %s" % (length, h.hexdigest().encode())
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(text), text))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


BLOCK = os.urandom(2**18)


async def upload(port, size, path=b"/", read_all=True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, size))
    h = hashlib.sha256()

    async def send():
        with contextlib.suppress(ConnectionError):
            left = size
            while left:
                n = min(left, len(BLOCK))
                writer.write(BLOCK[:n])
                h.update(BLOCK[:n])
                left -= n
                await writer.drain()

    t = asyncio.create_task(send())
    try:
        async with asyncio.timeout(60):
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ")[1]
            if b"content-length: 6" in head.lower():
                body = await reader.readexactly(6)
            else:
                body = await reader.readuntil(b"\r\n0\r\n\r\n")
        if read_all:
            await t
        return status, body, h.hexdigest()
    finally:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
        writer.close()


async def main():
    server = await asyncio.start_server(counting, "127.0.0.1", UP_PORT)
    cfg = os.path.join(tempfile.mkdtemp(), "proxy.yaml")
    Path(cfg).write_text(f"""
server: {{host: 127.0.0.1, port: {PROXY_PORT}, access_log: false, max_request_body: 1GiB}}
admin: {{host: 127.0.0.1, port: 0}}
upstreams:
  up: {{targets: ["http://127.0.0.1:{UP_PORT}"]}}
routes:
  - {{name: all, match: {{path_prefix: /}}, upstream: up}}
""")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "proxy", "-c", cfg],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        while b"listening" not in proc.stderr.readline():
            pass
        size = 50 * 2**20
        times = {"direct": [], "proxy": []}
        PATH = os.environ.get("WF_PATH", "/").encode()
        for _ in range(7):
            for label, port in (("direct", UP_PORT), ("proxy", PROXY_PORT)):
                t0 = time.perf_counter()
                status, body, digest = await upload(port, size, PATH)
                dt = time.perf_counter() - t0
                assert status == b"200", (label, status)
                assert body.split(b"\r\n")[1] == b"%d %s" % (size, digest.encode()), (label, body)
                times[label].append(dt)
        for k, v in times.items():
            v.sort()
            print(f"50MiB {k}: median {v[3] * 1000:.0f} ms  (all {[round(x * 1000) for x in v]})")
        print(f"ratio proxy/direct (median): {times['proxy'][3] / times['direct'][3]:.3f}")
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
        burner = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])
        try:
            counts = {}
            done = 0
            t0 = time.perf_counter()
            while done < n:
                batch = min(48, n - done)
                results = await asyncio.gather(
                    *(upload(PROXY_PORT, 8 * 2**20, b"/401", False) for _ in range(batch)),
                    return_exceptions=True,
                )
                for r in results:
                    key = (
                        r[0].decode() + ":" + r[1].decode()
                        if not isinstance(r, BaseException)
                        else repr(r)
                    )
                    counts[key] = counts.get(key, 0) + 1
                done += batch
            print(
                f"{n} early-401 uploads (8 MiB, reset after 64 KiB) under a CPU burner: "
                f"{counts} in {time.perf_counter() - t0:.1f}s"
            )
        finally:
            burner.kill()
            burner.wait()
    finally:
        proc.kill()
        proc.wait()
        server.close()


asyncio.run(main())
