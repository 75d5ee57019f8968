"""Admin endpoints, graceful drain, and the real process under signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from .conftest import MakeProxy, ProxyTo, origin, serve_one, start_proxy_process, stop_process
from .support.common import (
    ROUTE,
    assert_the_stream_ends_whole,
    demo_config,
    demo_log_stream,
    free_port,
    paused_stream,
    stalled_stream,
)


async def test_healthz_and_readyz(aiohttp_server, make_proxy: MakeProxy) -> None:
    app = web.Application()
    up = await aiohttp_server(app)
    proxy = await make_proxy({"up": [origin(up)]}, ROUTE)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.admin_url("/healthz")) as r:
            assert r.status == 200
        async with s.get(proxy.admin_url("/readyz")) as r:
            assert r.status == 200


async def test_drain_finishes_streams_in_flight_and_refuses_new_ones(proxy_to: ProxyTo) -> None:
    release = asyncio.Event()

    stream = paused_stream(b"begin\n", b"end\n", release, timeout=10)

    proxy = await proxy_to(stream, shutdown_grace="10s")
    async with aiohttp.ClientSession() as s:
        r = await s.get(proxy.url("/"))
        assert await r.content.readuntil(b"\n") == b"begin\n"
        stopping = proxy.server.stop()
        async with asyncio.timeout(5):
            while not proxy.server.draining:  # noqa: ASYNC110 - set by the stop task's first step
                await asyncio.sleep(0)
        async with s.get(proxy.admin_url("/readyz")) as ready:
            assert ready.status == 503
        # Listening has stopped: a new connection is refused.
        await asyncio.sleep(0)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        release.set()
        assert await r.content.read() == b"end\n"  # the stream in flight completed cleanly
        r.release()
        await asyncio.wait_for(stopping, 5)


async def test_drain_aborts_what_outlives_the_grace(proxy_to: ProxyTo) -> None:
    proxy = await proxy_to(stalled_stream(b"begin\n", seconds=30), shutdown_grace="300ms")
    async with aiohttp.ClientSession() as s:
        r = await s.get(proxy.url("/"))
        assert await r.content.readuntil(b"\n") == b"begin\n"
        await asyncio.wait_for(proxy.server.stop(), 5)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.content.read()  # cut: not a clean end
        r.release()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_drains_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    path, port, _admin = demo_config(tmp_path)
    proc = await start_proxy_process(path)
    try:
        async with aiohttp.ClientSession() as s:
            stream = await demo_log_stream(s, port)
            proc.send_signal(sig)
            await assert_the_stream_ends_whole(stream)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await stop_process(proc)


async def test_sighup_reloads_a_valid_config_and_keeps_the_old_on_errors(tmp_path: Path) -> None:
    path, port, _admin = demo_config(tmp_path)
    proc = await start_proxy_process(path)
    assert proc.stderr is not None
    try:
        original = path.read_text()
        path.write_text(
            original.replace(
                "name: demo\n",
                "name: demo\n    match: {path_prefix: /v2/}\n    strip_prefix: true\n",
            )
        )
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while b"reloaded" not in await proc.stderr.readline():
                pass
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/v2/logs?n=1") as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/logs?n=1") as r:
                assert r.status == 404
            path.write_text(original.replace("upstream: demo\n", "upstream: gone\n"))
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                while b"unknown upstream 'gone'" not in await proc.stderr.readline():
                    pass
            async with s.get(f"http://127.0.0.1:{port}/v2/logs?n=1") as r:
                assert r.status == 200  # still the last valid config
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await stop_process(proc)


async def test_the_readme_run_command_serves_the_demo_stream_redacted_and_tagged() -> None:
    port, admin, demo = free_port(), free_port(), free_port()
    env = {
        "PROXY_PORT": str(port),
        "PROXY_ADMIN_PORT": str(admin),
        "PROXY_DEMO_PORT": str(demo),
    }
    proc = await start_proxy_process("proxy.yaml", env)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/demo/logs") as r:
                assert r.status == 200
                lines = [await asyncio.wait_for(r.content.readline(), 5) for _ in range(7)]
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                metrics = await r.text()
        text = b"".join(lines).decode()
        assert [line.split(b"] ", 1)[0] for line in lines] == [
            f"[demo #{n}".encode() for n in range(1, 8)
        ]
        assert "hunter2" not in text and "sk-demo" not in text and "AKIAFAKE" not in text
        assert text.count("[REDACTED]") == 3
        assert 'proxy_redactions_total{route="demo"} 3.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await stop_process(proc)


async def test_reload_keeps_in_flight_streams_and_closes_removed_upstreams_once_idle(
    aiohttp_server, tmp_path: Path
) -> None:
    import io

    from proxy.accesslog import AccessLog
    from proxy.config.models import load_config
    from proxy.server.listener import ProxyServer

    release = asyncio.Event()

    stream = paused_stream(b"begin\n", b"end\n", release, timeout=10)

    up = await serve_one(aiohttp_server, stream, "/{t:.*}")
    target = f"http://127.0.0.1:{up.port}"
    path = tmp_path / "proxy.yaml"
    before = f"""
server: {{host: 127.0.0.1, port: 0}}
upstreams:
  kept: {{targets: ["{target}"]}}
  removed: {{targets: ["{target}"]}}
routes:
  - {{name: old, match: {{path_prefix: /old/}}, upstream: removed}}
  - {{name: keep, upstream: kept}}
"""
    path.write_text(before)
    server = ProxyServer(load_config(path), str(path), access_log=AccessLog(stream=io.StringIO()))
    await server.start()
    try:
        old = server.runtime
        kept, removed = old.upstreams["kept"], old.upstreams["removed"]
        async with aiohttp.ClientSession() as s:
            r = await s.get(f"http://127.0.0.1:{server.proxy_port}/old/x")
            assert await r.content.readuntil(b"\n") == b"begin\n"
            path.write_text(
                before.replace("  removed: {targets", "  gone: {targets").replace(
                    "upstream: removed", "upstream: gone"
                )
            )
            assert await server.reload()
            assert server.runtime.upstreams["kept"] is kept  # same settings: same pool
            assert not removed.closed  # still serving the stream in flight
            release.set()
            assert await r.content.read() == b"end\n"
            r.release()
            await asyncio.wait_for(old.closed(), 5)
            assert removed.closed
            assert not kept.closed
    finally:
        await server.stop()
