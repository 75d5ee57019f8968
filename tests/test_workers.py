"""``server.workers: 2``: two processes serve one port, metrics add up, they drain together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import start_proxy_process, stop_process
from .support.common import assert_the_stream_ends_whole, demo_config, demo_log_stream


async def test_two_workers_share_the_port_add_up_metrics_and_drain_together(
    tmp_path: Path,
) -> None:
    config, port, admin = demo_config(tmp_path, workers=2)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Two workers and the supervisor each say "listening".
    proc = await start_proxy_process(
        config, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, listeners=3
    )
    try:
        requests = 40
        # every request bounded: a request that hangs fails as itself, not as the test's timeout
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=15),
        ) as s:
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

            stream = await demo_log_stream(s, port)
            proc.send_signal(signal.SIGTERM)
            for _ in range(100):  # bounded: the signal reaches another process
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    if r.status == 503:
                        break
                await asyncio.sleep(0.02)
            assert r.status == 503
            await assert_the_stream_ends_whole(stream)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await stop_process(proc)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


async def _exited(pid: int) -> None:
    """Until the process ``pid`` (not a child of this one) has exited: its pidfd turns readable."""
    fd = os.pidfd_open(pid)
    done = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
async def test_workers_drain_and_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    config, _, _ = demo_config(tmp_path, workers=2, grace="2s")
    proc = await start_proxy_process(config, listeners=3)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()  # no SIGTERM to forward: the workers are on their own
        await proc.wait()
        # each worker drains and exits, instead of serving on with no supervisor
        await asyncio.wait_for(asyncio.gather(*(_exited(pid) for pid in workers)), 20)
    finally:
        await stop_process(proc)
