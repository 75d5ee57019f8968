"""Running the server: one process, or ``server.workers`` processes sharing the port."""

from __future__ import annotations

import asyncio
import contextlib

from .config import Config
from .server import serve


def _event_loop_runner() -> asyncio.Runner:
    with contextlib.suppress(ImportError):
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run_workers(config: Config, path: str) -> int:
    with _event_loop_runner() as runner:
        runner.run(serve(config, path))
    return 0
