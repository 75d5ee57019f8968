"""The command line: ``run`` (default), ``check`` and ``transform``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

from proxy import PRODUCT, __version__
from proxy.config.models import Config, ConfigError, default_config_path, load_config
from proxy.logs import setup_logging
from proxy.transform.loader import chains_for

EXIT_INVALID = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy", description=f"{PRODUCT}: a streaming reverse proxy"
    )
    parser.add_argument("--version", action="version", version=f"{PRODUCT} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=None,
        help="the config file (default: $PROXY_CONFIG, else ./proxy.yaml)",
    )
    parser.add_argument("-c", "--config", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", parents=[common], help="run the proxy (the default)")
    sub.add_parser("check", parents=[common], help="validate the config and exit (0 valid, 2 not)")
    tr = sub.add_parser(
        "transform", parents=[common], help="pipe stdin through a route's transforms to stdout"
    )
    tr.add_argument("--route", required=True, help="the route whose transforms to apply")
    tr.add_argument(
        "--request", action="store_true", help="use the request transforms, not the response ones"
    )
    tr.add_argument(
        "--content-type",
        default="text/plain; charset=utf-8",
        help="the body's content type (default: text/plain; charset=utf-8)",
    )
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    path = args.config or default_config_path()
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    if command == "check":
        print(f"{path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams)")
        return 0
    if command == "transform":
        return asyncio.run(_transform(config, args.route, args.request, args.content_type))
    setup_logging(config.server.log_level)
    from proxy.server.workers import run_workers

    return run_workers(config, path)


async def _stdin_chunks(size: int = 65536) -> AsyncIterator[bytes]:
    read = sys.stdin.buffer.read1
    while chunk := read(size):
        yield chunk


async def _transform(config: Config, route_name: str, request: bool, content_type: str) -> int:
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.transform.plan import plan_body
    from proxy.transform_api import TransformContext

    names = [r.name for r in config.routes]
    if route_name not in names:
        print(f"--route: unknown route {route_name!r} (known: {', '.join(names)})", file=sys.stderr)
        return EXIT_INVALID
    index = names.index(route_name)
    route = config.routes[index]
    chains = chains_for(config)[index]
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
    ctx = TransformContext(
        route=route_name,
        upstream=route.upstream,
        request_id="cli",
        direction="request" if request else "response",
        headers=CIMultiDictProxy(headers),
    )
    stages = chains.request if request else chains.response
    plan = plan_body(stages, headers, None, ctx, route.request_text if request else route.text)
    out = sys.stdout.buffer
    if plan is None:
        async for chunk in _stdin_chunks():
            out.write(chunk)
        out.flush()
        return 0
    try:
        async for chunk in plan.chain(_stdin_chunks()):
            out.write(chunk)
            out.flush()
    finally:
        await plan.aclose()
    return 0
