"""A collector stand-in for the tracing benchmark: takes OTLP/HTTP exports and drops them.

``GET /stats`` answers how many exports and bytes it took, so a run can tell that spans came.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web


def app() -> web.Application:
    stats = {"exports": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        stats["exports"] += 1
        stats["bytes"] += len(await request.read())
        # An empty ExportTraceServiceResponse is zero bytes of protobuf.
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def report(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(stats), content_type="application/json")

    a = web.Application()
    a.router.add_post("/v1/traces", traces)
    a.router.add_get("/stats", report)
    return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
