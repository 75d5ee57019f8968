"""Property-based fuzzing (issue 7): config loading and raw requests against a running proxy.

Short runs here (CI); ``scripts/fuzz_long.py`` runs the same properties with many more examples
by setting ``PROXY_FUZZ_EXAMPLES`` (and optionally ``PROXY_FUZZ_SEED``).

- ``validate_data`` on random nested data shaped like ``proxy.yaml``, and ``load_config_text`` on
  random text: the only exception is ``ConfigError``, whose problems are ``key.path: reason``
  lines. Never a traceback.
- Random bytes in the method, path, query, version and headers of a request sent over a raw
  socket: whatever the proxy sends back parses as HTTP/1.x responses (or it just closes), it is
  never a 500, and the proxy still serves a normal request afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.config.models import Config, ConfigError, load_config_text, validate_data

from .conftest import MakeProxy, Proxy
from .test_hardening import NotHttp, Recorder, parse_answers

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "0"))
LONG_RUN = EXAMPLES > 0


def fuzz_settings(short: int) -> settings:
    """``short`` examples in CI (derandomized: the same inputs every run); more when asked."""
    return settings(
        max_examples=EXAMPLES or short,
        deadline=None,
        database=None,
        derandomize=not LONG_RUN and "PROXY_FUZZ_SEED" not in os.environ,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )


def with_seed(test: Any) -> Any:
    seed = os.environ.get("PROXY_FUZZ_SEED")
    if seed is None:
        return test
    from hypothesis import seed as set_seed

    return set_seed(int(seed))(test)


# -- config data shaped like proxy.yaml -------------------------------------------------------

IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
ODD_STRINGS = [
    "",
    " ",
    "5s",
    "250ms",
    "2m",
    "-1",
    "1e400",
    "9" * 400,
    "100MiB",
    "16KiB",
    "auto",
    "round_robin",
    "least_outstanding",
    "/",
    "/logs/",
    "logs",
    "GET",
    "g e t",
    "http://127.0.0.1:9",
    "https://example.com",
    "http://[::1",
    "http://a:99999",
    "ftp://x",
    "http://u:p@h",
    "http://h/path",
    "${HOME}",
    "${NOPE_NOT_SET}",
    "${NOPE_NOT_SET:-5s}",
    "${",
    "\x00",
    "(?i)password=\\S+",
    "[",
    "text/*",
    "[{upstream}] ",
]
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 65536, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(ODD_STRINGS),
)
ANY = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(IDENT, st.integers()), inner, max_size=3),
    ),
    max_leaves=12,
)


def keyed(known: list[str], value: st.SearchStrategy[Any] = ANY) -> st.SearchStrategy[Any]:
    """A mapping using mostly ``known`` keys (and some unknown ones), or any other value."""
    key = st.one_of(st.sampled_from(known), IDENT)
    return st.one_of(st.dictionaries(key, value, max_size=len(known)), ANY)


SERVER_KEYS = [
    "host",
    "port",
    "workers",
    "shutdown_grace",
    "max_request_body",
    "max_header_size",
    "max_url_length",
    "max_header_count",
    "header_timeout",
    "keepalive_timeout",
    "max_connections",
    "tls",
    "log_level",
    "access_log",
]
UPSTREAM_KEYS = [
    "targets",
    "connect_timeout",
    "read_timeout",
    "tls",
    "balance",
    "max_fails",
    "fail_timeout",
    "retries",
    "health",
]
TRANSFORM_NAMES = [
    "redact",
    "tag_lines",
    "tests.sample_plugins:Upper",
    "tests.sample_plugins:FailAfter",
    "tests.sample_plugins:Missing",
    "no_such_module_zz:X",
    "unknown_transform",
    ":x",
    "..x:y",
    "tests.sample_plugins:",
]
TRANSFORM = st.one_of(
    st.dictionaries(
        st.sampled_from(TRANSFORM_NAMES),
        st.one_of(st.none(), keyed(["patterns", "replacement", "tag", "count", "content_types"])),
        min_size=1,
        max_size=2,
    ),
    ANY,
)
TARGETS = st.one_of(st.lists(st.one_of(st.sampled_from(ODD_STRINGS), SCALAR), max_size=3), ANY)
UPSTREAM = st.one_of(
    st.fixed_dictionaries(
        {"targets": TARGETS},
        optional={k: ANY for k in UPSTREAM_KEYS if k != "targets"},
    ),
    ANY,
)
MATCH = keyed(["path_prefix", "host", "methods"])
ROUTE = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(st.sampled_from(["a", "b", "logs"]), SCALAR),
            "match": MATCH,
            "upstream": st.one_of(st.sampled_from(["up", "api", "nope"]), SCALAR),
            "strip_prefix": SCALAR,
            "preserve_host": SCALAR,
            "timeout": SCALAR,
            "transforms": st.one_of(st.lists(TRANSFORM, max_size=2), ANY),
            "request_transforms": st.one_of(st.lists(TRANSFORM, max_size=1), ANY),
        },
    ),
    ANY,
)
CONFIG = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "server": keyed(SERVER_KEYS),
            "admin": keyed(["host", "port"]),
            "upstreams": st.one_of(
                st.dictionaries(st.sampled_from(["up", "api", "x"]), UPSTREAM, max_size=2), ANY
            ),
            "routes": st.one_of(st.lists(ROUTE, max_size=3), ANY),
            "demo": keyed(["host", "port", "interval"]),
            "srever": ANY,
        },
    ),
    ANY,
)

# "key.path: reason", one line each. A key path holds the user's own keys, which may be any
# text (a transform's dotted name "a.b:C", a quoted key with spaces), but never a line break.
PROBLEM = re.compile(r"[^\n]+?: [^\n]*\S[^\n]*")


def assert_key_path_problems(exc: ConfigError) -> None:
    assert exc.problems, "a ConfigError without problems"
    for problem in exc.problems:
        assert isinstance(problem, str)
        assert PROBLEM.fullmatch(problem), f"not one 'key.path: reason' line: {problem!r}"


def durations(config: Config) -> list[float]:
    server = config.server
    out = [server.shutdown_grace, server.header_timeout, server.keepalive_timeout]
    for up in config.upstreams.values():
        out += [up.connect_timeout, up.read_timeout, up.fail_timeout]
        if up.health is not None:
            out += [up.health.interval, up.health.timeout]
    out += [r.timeout for r in config.routes if r.timeout is not None]
    if config.demo is not None:
        out.append(config.demo.interval)
    return out


def check_validate_data(data: Any) -> None:
    """The property: a Config with finite durations, or a ConfigError of key-path lines."""
    try:
        config = validate_data(data)
    except ConfigError as exc:
        assert_key_path_problems(exc)
        return
    assert all(math.isfinite(d) and d >= 0 for d in durations(config)), durations(config)


def check_load_config_text(text: str) -> None:
    try:
        load_config_text(text, "proxy.yaml")
    except ConfigError as exc:
        assert_key_path_problems(exc)


def assert_data_is_a_config_error(data: Any) -> None:
    """The data is refused (never accepted) with key-path problems."""
    with pytest.raises(ConfigError) as info:
        validate_data(data)
    assert_key_path_problems(info.value)


def assert_text_is_a_config_error(text: str) -> None:
    """The YAML text is refused (never accepted) with key-path problems."""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "proxy.yaml")
    assert_key_path_problems(info.value)


VALID = {
    "server": {"host": "127.0.0.1", "port": 0},
    "upstreams": {"up": {"targets": ["http://127.0.0.1:9"]}},
    "routes": [{"name": "a", "upstream": "up"}],
}


def _with_server(**server: Any) -> dict[str, Any]:
    return {**VALID, "server": {**VALID["server"], **server}}


def _deep(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return {**VALID, "server": data}


# Each finding, pinned by examples: config loading never raises anything but ConfigError.
OVERFLOW = [
    _with_server(max_request_body="9" * 400),
    _with_server(max_header_size="9" * 400 + "KiB"),
    _with_server(shutdown_grace=10**400),
]
NON_FINITE = [
    _with_server(header_timeout=math.nan),
    _with_server(keepalive_timeout=math.inf),
    _with_server(shutdown_grace="9" * 400),  # a decimal string too large for a float: inf
]
NESTING = ["x: &a [*a]", "routes: &r [{upstream: *r}]", "server: " + "[" * 1200 + "]" * 1200]
YAML_TAGS = [
    "x: !!int x",
    "x: !!timestamp 2001-13-45",
    "x: !!bool maybe",
    "x: !!float",
    "!!float x",
]
ONE_LINE = [
    '"a\\nb": 1',
    'server: {"port\\n": 1}',
    'routes: [{transforms: [{"a\\nb": 1}]}]',
    "\x1f",
    "x: \x07",
]


@pytest.mark.parametrize("data", OVERFLOW)
def test_numbers_too_large_are_config_errors(data: dict[str, Any]) -> None:
    assert_data_is_a_config_error(data)


@pytest.mark.parametrize("data", NON_FINITE)
def test_non_finite_durations_are_config_errors(data: dict[str, Any]) -> None:
    assert_data_is_a_config_error(data)


@pytest.mark.parametrize("text", NESTING)
def test_recursive_or_deeply_nested_yaml_is_a_config_error(text: str) -> None:
    assert_text_is_a_config_error(text)


def test_deeply_nested_data_is_a_config_error() -> None:
    assert_data_is_a_config_error(_deep(3000))


@pytest.mark.parametrize("text", YAML_TAGS)
def test_a_bad_tagged_yaml_scalar_is_a_config_error(text: str) -> None:
    assert_text_is_a_config_error(text)


@pytest.mark.parametrize("text", ONE_LINE)
def test_every_problem_is_one_line(text: str) -> None:
    assert_text_is_a_config_error(text)


@with_seed
@fuzz_settings(300)
@given(data=CONFIG)
@example(data=OVERFLOW[0])
@example(data=NON_FINITE[0])
def test_validate_data_gives_a_config_or_key_path_problems(data: Any) -> None:
    check_validate_data(data)


# -- config text ------------------------------------------------------------------------------

YAML_BITS = [
    "server:",
    "upstreams:",
    "routes:",
    "  up:",
    "    targets: [http://127.0.0.1:9]",
    "  - upstream: up",
    "    transforms:",
    "      - redact: {patterns: ['x']}",
    "port: ",
    "8080",
    "- ",
    "  ",
    "\t",
    "\n",
    "{",
    "}",
    "[",
    "]",
    ": ",
    ",",
    "'",
    '"',
    "&a ",
    "*a",
    "? ",
    "!!python/object:os.system ",
    "!!binary ",
    "!!float ",
    "!!int ",
    ".nan",
    ".inf",
    "${X}",
    "${HOME:-x}",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "#",
    "|\n",
    ">-\n",
    "\\n",
    "\x00",
    "\ufeff",
    "é",
]
YAML_TEXT = st.one_of(
    st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=5)), max_size=30).map("".join),
    st.text(max_size=200),
)


@with_seed
@fuzz_settings(300)
@given(text=YAML_TEXT)
@example(text=NESTING[0])
@example(text=YAML_TAGS[0])
@example(text=ONE_LINE[0])
def test_load_config_text_gives_a_config_or_key_path_problems(text: str) -> None:
    check_load_config_text(text)


# -- raw requests against a running proxy -----------------------------------------------------

TOKENS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]
METHOD = st.one_of(
    st.sampled_from([*TOKENS, b"PRI", b"get", b"G T", b""]), st.binary(min_size=1, max_size=10)
)
PATH = st.one_of(
    st.sampled_from(
        [b"/", b"/a/b", b"//x", b"/..", b"/%2e%2e/", b"/a%2F..%2Fb", b"*", b"http://127.0.0.1:9/"]
    ),
    st.binary(max_size=30).map(lambda b: b"/" + b),
    st.binary(max_size=30),
)
QUERY = st.one_of(st.none(), st.binary(max_size=30), st.sampled_from([b"", b"a=1&a=2", b"%zz"]))
VERSION = st.one_of(
    st.just(b"HTTP/1.1"),
    st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"", b"http/1.1"]),
)
HEADER_NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"Upgrade",
    b"X-Request-ID",
    b"X-Forwarded-For",
    b"Accept-Encoding",
    b"Content-Encoding",
    b"Range",
    b"TE",
    b"Trailer",
]
HEADER_VALUES = [
    b"",
    b"0",
    b"5",
    b"-1",
    b"chunked",
    b"gzip, chunked",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"websocket",
    b"100-continue",
    b"gzip",
    b"bytes=0-1",
    b"a\rb",
    b"a\x00b",
    b"\xff\xfe",
]
HEADER = st.tuples(
    st.one_of(st.sampled_from(HEADER_NAMES), st.binary(max_size=12)),
    st.one_of(st.sampled_from(HEADER_VALUES), st.binary(max_size=30)),
)
REQUEST = st.fixed_dictionaries(
    {
        "method": METHOD,
        "path": PATH,
        "query": QUERY,
        "version": VERSION,
        "headers": st.lists(HEADER, max_size=5),
        "body": st.binary(max_size=20),
    }
)


def build_request(r: dict[str, Any]) -> bytes:
    target = r["path"] + (b"" if r["query"] is None else b"?" + r["query"])
    line = r["method"] + b" " + target + (b" " + r["version"] if r["version"] else b"")
    headers = b"".join(name + b": " + value + b"\r\n" for name, value in r["headers"])
    return line + b"\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n" + r["body"]


async def answer_of(port: int, data: bytes, idle: float = 0.3, total: float = 2.0) -> bytes:
    """What the proxy sends back: until it closes, or ``idle`` s after its last byte, or
    ``total`` s without any (a request the proxy is still waiting to complete). Bounded."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        with contextlib.suppress(ConnectionError, TimeoutError):
            while (left := deadline - loop.time()) > 0:
                chunk = await asyncio.wait_for(reader.read(65536), min(left, idle) if out else left)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def assert_still_serving(proxy: Proxy) -> None:
    data = await answer_of(
        proxy.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = parse_answers(data)
    assert [(a.status, a.body) for a in answers] == [(200, b"upstream-ok")], data[:300]


def check_answer(request: bytes, method: bytes, data: bytes) -> None:
    try:
        answers = parse_answers(data, head_request=method == b"HEAD")
    except NotHttp as exc:
        if method != b"HEAD":
            raise AssertionError(f"not HTTP/1.x for {request!r}: {exc}") from None
        # aiohttp refuses the whole connection (HEAD included) when its parser fails on what
        # follows; that refusal carries a body.
        answers = parse_answers(data)
        assert [a.status for a in answers] == [400], (request, data[:300])
    for answer in answers:
        assert answer.status != 500, f"a 500 (an unhandled error) for {request!r}: {answer.body!r}"
        if answer.status >= 400:
            # The upstream only ever answers 200 here: every error is the proxy's own, in JSON.
            assert (answer.header("Content-Type") or "").startswith("application/json"), (
                request,
                answer.status,
                answer.body[:200],
            )


@pytest.fixture
async def fuzz_proxy(make_proxy: MakeProxy, aiohttp_server: Any) -> Proxy:
    rec = Recorder()
    server = await aiohttp_server(rec.app())
    rec.port = server.port
    routes = [
        {"name": "api", "match": {"path_prefix": "/a"}, "upstream": "up", "strip_prefix": True},
        {"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"},
    ]
    return await make_proxy(
        {"up": [rec.origin]},
        routes,
        header_timeout="1s",
        max_request_body="1KiB",
        max_header_count=20,
        max_header_size="4KiB",
    )


@with_seed
@fuzz_settings(60)
@given(request=REQUEST)
@example(request={"method": b"GET", "path": b"/", "query": None, "version": b"HTTP/1.1",
                  "headers": [(b"Expect", b"100-continue"), (b"Content-Length", b"5")],
                  "body": b"hello"})  # fmt: skip
@example(request={"method": b"POST", "path": b"/", "query": b"", "version": b"HTTP/1.1",
                  "headers": [(b"Transfer-Encoding", b"chunked")], "body": b"zz\r\n"})  # fmt: skip
async def test_every_answer_to_a_random_request_is_http_and_the_proxy_stays_up(
    fuzz_proxy: Proxy, request: dict[str, Any]
) -> None:
    data = build_request(request)
    check_answer(data, request["method"], await answer_of(fuzz_proxy.port, data))
    await assert_still_serving(fuzz_proxy)


@with_seed
@fuzz_settings(40)
@given(data=st.binary(min_size=1, max_size=200))
async def test_random_bytes_get_http_or_a_closed_connection(fuzz_proxy: Proxy, data: bytes) -> None:
    check_answer(data, b"", await answer_of(fuzz_proxy.port, data))
    await assert_still_serving(fuzz_proxy)
