"""Header rules (``headers:`` on a route) through the running proxy, and their checks at load."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config.models import ConfigError, validate_data

from .conftest import ROOT, MakeProxy, origin, proxy_config

SECRET = "sk-live-0123456789abcdefSECRET"


def recording_upstream(
    seen: list[list[tuple[str, str]]], **response_headers: Any
) -> web.Application:
    """An upstream that records every request's raw header fields, in order, and answers with
    ``response_headers`` (a list value: repeated fields)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append([(k.decode(), v.decode()) for k, v in request.raw_headers])
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        for name, value in response_headers.items():
            for v in value if isinstance(value, list) else [value]:
                resp.headers.add(name.replace("_", "-"), v)
        body = b"line one\nline two\n"
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in fields if k.lower() == name.lower()]


async def test_request_set_add_remove_keep_order_and_repeats(
    aiohttp_server, make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", SECRET)
    seen: list[list[tuple[str, str]]] = []
    up = await aiohttp_server(recording_upstream(seen))
    rules = {
        "request": {
            "set": {"authorization": "Bearer ${TEST_API_KEY}", "X-Env": ["a", "b"]},
            "add": {"X-Multi": "c", "Via": "1.1 sidecar"},
            "remove": ["Cookie", "x-drop"],
        }
    }
    proxy = await make_proxy({"api": [origin(up)]}, [{"upstream": "api", "headers": rules}])
    sent = [
        ("X-First", "1"),
        ("Authorization", "Bearer from-the-app"),
        ("X-Multi", "a"),
        ("Cookie", "session=1"),
        ("X-Multi", "b"),
        ("Authorization", "Basic second"),
        ("X-Drop", "gone"),
        ("X-Last", "2"),
    ]
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/x"), headers=sent) as r:
        assert r.status == 200
    (fields,) = seen
    names = [k.lower() for k, _ in fields]
    # set replaces every value (the client's two are gone), add appends one more after the
    # client's, remove drops every value; the other headers keep their order.
    assert values(fields, "Authorization") == [f"Bearer {SECRET}"]
    assert values(fields, "X-Multi") == ["a", "b", "c"]
    assert values(fields, "X-Env") == ["a", "b"]
    assert values(fields, "Via") == ["1.1 sidecar"]
    assert "cookie" not in names and "x-drop" not in names
    assert names.index("x-first") < names.index("x-multi") < names.index("x-last")


async def test_rules_run_after_the_proxys_own_headers(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    seen: list[list[tuple[str, str]]] = []
    up = await aiohttp_server(recording_upstream(seen))
    routes = [
        {
            "name": "replace",
            "match": {"path_prefix": "/replace/"},
            "upstream": "api",
            "headers": {"request": {"set": {"X-Forwarded-For": "203.0.113.7"}}},
        },
        {
            "name": "drop",
            "match": {"path_prefix": "/drop/"},
            "upstream": "api",
            "headers": {
                "request": {"remove": ["X-Forwarded-For", "X-Forwarded-Host", "X-Request-ID"]}
            },
        },
        {
            "name": "host",
            "match": {"path_prefix": "/host/"},
            "upstream": "api",
            "headers": {"request": {"set": {"Host": "api.example.com"}}},
        },
    ]
    proxy = await make_proxy({"api": [origin(up)]}, routes)
    async with aiohttp.ClientSession() as s:
        for path in ("/replace/", "/drop/", "/host/"):
            headers = {"X-Forwarded-For": "198.51.100.1"}
            async with s.get(proxy.url(path), headers=headers) as r:
                assert r.status == 200
    replaced, dropped, host = seen
    assert values(replaced, "X-Forwarded-For") == ["203.0.113.7"]
    assert values(replaced, "X-Forwarded-Proto") == ["http"]
    assert values(dropped, "X-Forwarded-For") == []
    assert values(dropped, "X-Forwarded-Host") == []
    assert values(dropped, "X-Request-ID") == []
    assert values(dropped, "X-Forwarded-Proto") == ["http"]
    assert values(host, "Host") == ["api.example.com"]
    assert values(host, "X-Forwarded-Host") == [f"127.0.0.1:{proxy.port}"]


async def test_response_set_add_remove(aiohttp_server, make_proxy: MakeProxy) -> None:
    seen: list[list[tuple[str, str]]] = []
    up = await aiohttp_server(
        recording_upstream(
            seen,
            Set_Cookie=["a=1", "b=2", "c=3"],
            X_Powered_By="php/5",
            Cache_Control="public, max-age=600",
        )
    )
    rules = {
        "response": {
            "set": {"Cache-Control": "no-store"},
            "add": {"Set-Cookie": "d=4"},
            "remove": ["X-Powered-By", "X-Request-ID"],
        }
    }
    proxy = await make_proxy({"api": [origin(up)]}, [{"upstream": "api", "headers": rules}])
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert r.status == 200
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2", "c=3", "d=4"]
        assert r.headers.getall("Cache-Control") == ["no-store"]
        assert "X-Powered-By" not in r.headers
        # The proxy's own X-Request-ID is there before the rules run, so a rule can drop it.
        assert "X-Request-ID" not in r.headers
        assert r.headers["Content-Length"] == str(len(b"line one\nline two\n"))
        assert await r.read() == b"line one\nline two\n"


async def test_a_transform_settles_the_body_headers_after_the_rules(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    """Rules run before the transforms decide: what a transform's body needs wins (no
    Content-Length, a weak ETag), and a rule can never re-add a Content-Length."""
    seen: list[list[tuple[str, str]]] = []
    up = await aiohttp_server(recording_upstream(seen))
    rules = {"response": {"set": {"ETag": '"v1"', "Accept-Ranges": "bytes"}}}
    routes = [
        {
            "name": "tagged",
            "match": {"path_prefix": "/tagged/"},
            "upstream": "api",
            "headers": rules,
            "transforms": [{"tag_lines": {"tag": "> "}}],
        },
        {
            "name": "chunked",
            "match": {"path_prefix": "/chunked/"},
            "upstream": "api",
            "headers": {"response": {"remove": ["Content-Length"]}},
        },
    ]
    proxy = await make_proxy({"api": [origin(up)]}, routes)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/tagged/")) as r:
            assert "Content-Length" not in r.headers
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert r.headers["ETag"] == 'W/"v1"'
            assert "Accept-Ranges" not in r.headers
            assert await r.read() == b"> line one\n> line two\n"
        async with s.get(proxy.url("/chunked/")) as r:
            assert "Content-Length" not in r.headers
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert await r.read() == b"line one\nline two\n"
    with pytest.raises(ConfigError) as err:
        validate_data(
            proxy_config(
                {"api": ["http://127.0.0.1:9"]},
                [{"upstream": "api", "headers": {"response": {"set": {"Content-Length": "9"}}}}],
            )
        )
    assert err.value.problems == [
        "routes[0].headers.response.set.Content-Length: Content-Length is the proxy's to "
        "manage (framing or hop-by-hop); a rule may only remove it"
    ]


async def test_the_secret_never_appears_in_a_log_line(
    aiohttp_server,
    make_proxy: MakeProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TEST_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    seen: list[list[tuple[str, str]]] = []
    up = await aiohttp_server(recording_upstream(seen))
    headers = {
        "request": {"set": {"Authorization": "Bearer ${TEST_API_KEY}", "X-Token": SECRET}},
        "secret": ["x-token"],  # names are case-insensitive
    }
    routes = [
        {"name": "ok", "match": {"path_prefix": "/ok/"}, "upstream": "api", "headers": headers},
        {
            "name": "down",
            "match": {"path_prefix": "/down/"},
            "upstream": "dead",
            "headers": headers,
        },
        {
            "name": "broken",
            "match": {"path_prefix": "/broken/"},
            "upstream": "api",
            "headers": headers,
            "transforms": [{"tests.sample_plugins:FailAfter": {"count": 0}}],
        },
    ]
    proxy = await make_proxy({"api": [origin(up)], "dead": ["http://127.0.0.1:9"]}, routes)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/ok/")) as r:
            assert r.status == 200
        async with s.get(proxy.url("/down/")) as r:
            assert r.status == 502
            assert SECRET not in await r.text()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(proxy.url("/broken/")) as r:
                await r.read()
    assert values(seen[0], "Authorization") == [f"Bearer {SECRET}"]
    lines = await proxy.until_logged(3)
    assert len(lines) == 3
    assert any(rec.levelno >= logging.WARNING for rec in caplog.records)  # failures were logged
    logged = proxy._log.getvalue() + "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records
    )
    assert SECRET not in logged
    config = proxy.server.config
    assert SECRET not in repr(config) and SECRET not in str(config.routes[0])
    assert "'Authorization': '***'" in repr(config.routes[0].headers)
    assert "'X-Token': '***'" in repr(config.routes[0].headers)


def _check(path: str, env: dict[str, str]) -> tuple[int, str]:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "-c", path],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


BAD = """
upstreams: {api: {targets: ["http://127.0.0.1:9"]}}
routes:
  - name: llm
    upstream: api
    headers:
      request:
        set: {Authorization: "Bearer ${API_KEY}", X-Api-Key: "${API_KEY}"}
        add: {X-Trace: ["ok", "a${NL}b"], X-Nul: "x\\0y"}
      response:
        set: ["Authorization: Bearer SECRET-IN-A-WRONG-SHAPE"]
        remove: ["Bad Name"]
  - name: typo
    upstream: api
    headers: {requets: {set: {Cookie: "SECRET-IN-A-TYPO"}}}
"""


async def test_check_refuses_control_characters_at_their_key_path_and_prints_no_secret(
    tmp_path,
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(BAD)
    # (An environment cannot carry NUL: the config spells it as YAML's "\\0".)
    env = {"API_KEY": SECRET + "\r\nX-Injected: 1", "NL": "\n"}
    code, out = await asyncio.to_thread(_check, str(path), env)
    assert code == 2, out
    problems = out.strip().splitlines()
    control = "holds CR, LF, NUL or another control character"
    assert [p.split(":")[0] for p in problems] == [
        "routes[0].headers.request.set.Authorization",
        "routes[0].headers.request.set.X-Api-Key",
        "routes[0].headers.request.add.X-Trace",
        "routes[0].headers.request.add.X-Nul",
        "routes[0].headers.response.set",
        "routes[0].headers.response.remove[0]",
        "routes[1].headers.requets",
    ]
    assert all(control in p for p in problems[:4]), problems
    assert "did you mean 'request'" in problems[-1]
    assert SECRET not in out and "SECRET-IN" not in out and "Injected" not in out

    # The same values without the control characters are valid, and check prints none of them.
    good = tmp_path / "good.yaml"
    good.write_text(BAD.split("      response:")[0].replace("${NL}", "").replace("\\0", ""))
    code, out = await asyncio.to_thread(_check, str(good), {"API_KEY": SECRET})
    assert code == 0, out
    assert SECRET not in out


def test_rules_are_checked_at_load() -> None:
    def problems(headers: Any) -> list[str]:
        try:
            validate_data(
                proxy_config(
                    {"api": ["http://127.0.0.1:9"]}, [{"upstream": "api", "headers": headers}]
                )
            )
        except ConfigError as exc:
            return exc.problems
        return []

    assert problems({"request": {"set": {"X-A": "1", "x-a": "2"}}}) == [
        "routes[0].headers.request.set.x-a: named twice (names are case-insensitive)"
    ]
    assert problems({"request": {"add": {"Host": "a"}}}) == [
        "routes[0].headers.request.add.Host: a request carries one Host: use set"
    ]
    assert problems({"request": {"set": {"Transfer-Encoding": "chunked"}}}) == [
        "routes[0].headers.request.set.Transfer-Encoding: Transfer-Encoding is the proxy's to "
        "manage (framing or hop-by-hop)"
    ]
    assert problems({"response": {"add": {"content-length": "1"}}}) == [
        "routes[0].headers.response.add.content-length: content-length is the proxy's to "
        "manage (framing or hop-by-hop); a rule may only remove it"
    ]
    assert problems({"request": {"set": {"X-A": True}}}) == [
        "routes[0].headers.request.set.X-A: a header value must be a string (quote it in YAML)"
    ]
    assert problems({"request": {"set": {"X-A": 5}, "add": {"X-A": "6"}}}) == []
    assert problems("nope") == [
        "routes[0].headers: expected a mapping with request, response and secret"
    ]
    assert problems({"request": {"set": {"X-A": " padded"}}}) == [
        "routes[0].headers.request.set.X-A: the value starts or ends with white space"
    ]
