"""``server.workers: 2``: two processes serve one port, metrics add up, they drain together."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from .conftest import start_proxy_process, stop_process
from .test_operations import free_port


async def test_two_workers_share_the_port_add_up_metrics_and_drain_together(
    tmp_path: Path,
) -> None:
    port, admin, demo = free_port(), free_port(), free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}, workers: 2, shutdown_grace: 10s}}
admin: {{host: 127.0.0.1, port: {admin}}}
demo: {{host: 127.0.0.1, port: {demo}, interval: 50ms}}
upstreams:
  demo: {{targets: ["http://127.0.0.1:{demo}"]}}
routes:
  - name: demo
    upstream: demo
"""
    )
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Two workers and the supervisor each say "listening".
    proc = await start_proxy_process(
        config, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, listeners=3
    )
    try:
        requests = 40
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(requests):
                async with s.get(f"http://127.0.0.1:{port}/") as r:
                    assert r.status == 200
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("proxy_requests_total{")
            )
            assert total == requests
            # Both workers served: each wrote its own counter file.
            assert len(list(metrics_dir.glob("counter_*.db"))) >= 2

            stream = await s.get(f"http://127.0.0.1:{port}/logs?n=10")
            await stream.content.readuntil(b"\n")
            proc.send_signal(signal.SIGTERM)
            for _ in range(100):  # bounded: the signal reaches another process
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    if r.status == 503:
                        break
                await asyncio.sleep(0.02)
            assert r.status == 503
            body = await asyncio.wait_for(stream.content.read(), 10)
            assert body.count(b"\n") == 9  # the stream in flight finished whole
            stream.release()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await stop_process(proc)
