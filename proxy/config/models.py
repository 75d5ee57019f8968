"""``proxy.yaml``: loaded once into frozen, validated objects; every problem names its key path.

``load_config`` reads and validates a file; ``load_config_text`` does the same for text. Both
raise :class:`ConfigError` listing every problem as ``key.path[i]: reason``. Transform entries are
checked here for shape only; :mod:`proxy.transform.loader` turns them into transform stages.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from proxy.config.problems import ConfigError, describe_error, key_path, suggest
from proxy.config.units import parse_duration, parse_size
from proxy.header_rules import NO_RULES, HeaderRules, parse_header_rules
from proxy.transform.loader import build_chains, remember_chains
from proxy.transform.text.spec import AUTO, BODY, TextSpec, parse_text

DEFAULT_PATH = "proxy.yaml"
__all__ = ["Config", "ConfigError", "key_path", "load_config", "suggest", "validate_data"]


def default_config_path() -> str:
    return os.environ.get("PROXY_CONFIG") or DEFAULT_PATH


def _workers(value: object) -> object:
    if value == "auto":
        return os.cpu_count() or 1
    return value


def _method(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ValueError(f"not an HTTP method: {value!r}")
    return value.upper()


def _target(value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a URL: {value!r} ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"a target must start with http:// or https://, got {value!r}")
    if not url.host:
        raise ValueError(f"a target needs a host: {value!r}")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError(f"a target is scheme://host[:port] only, without path or query: {value!r}")
    if url.raw_user or url.raw_password:
        raise ValueError(f"a target cannot carry credentials: {value!r}")
    return str(url.origin())


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    return value


def _forward_proxy(value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if url.scheme != "http" or not url.host:
        raise ValueError("a forward proxy is http://host:port")
    if url.raw_user or url.raw_password:
        raise ValueError("credentials in the forward proxy's URL are not supported")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError("a forward proxy is http://host:port only, without path or query")
    return str(url.origin())


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Port = Annotated[int, Field(ge=0, le=65535)]
Method = Annotated[str, AfterValidator(_method)]
Target = Annotated[str, AfterValidator(_target)]
ForwardProxy = Annotated[str, AfterValidator(_forward_proxy)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
TransformEntry = Any  # a one-key mapping NAME: {options}, checked by plugin_loader


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _readable(value: str) -> str:
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError(f"cannot read the file {value!r}")
    return value


ReadableFile = Annotated[str, AfterValidator(_readable)]


def _tls_loads(problem: str, load: Callable[[], object]) -> None:
    """``load()``; an SSL or file error is the config problem ``problem: <error>``."""
    try:
        load()
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{problem}: {exc}") from None


class ServerTLS(_Model):
    cert: ReadableFile
    """PEM certificate chain for the TLS listener."""
    key: ReadableFile
    """PEM private key of that certificate."""

    @model_validator(mode="after")
    def _loads(self) -> ServerTLS:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _tls_loads(
            "the certificate and key do not load",
            lambda: context.load_cert_chain(self.cert, self.key),
        )
        return self


class ServerConfig(_Model):
    host: str = "0.0.0.0"
    """Address the proxy listens on."""
    port: Port = 8080
    """Port the proxy listens on (0: any free port)."""
    workers: Annotated[int, BeforeValidator(_workers), Field(ge=1, le=256)] = 1
    """Processes sharing the port (SO_REUSEPORT); `auto` is the CPU count."""
    shutdown_grace: Duration = 30.0
    """How long in-flight streams may finish after SIGTERM/SIGINT."""
    max_request_body: Size = 100 * 1024**2
    """Larger request bodies get 413, checked while they stream."""
    max_header_size: Annotated[Size, Field(ge=1024, le=1024**2)] = 16 * 1024
    """Larger request heads get 431."""
    max_url_length: Annotated[Size, Field(ge=64, le=1024**2)] = 8 * 1024
    """Longer request targets get 400."""
    max_header_count: Annotated[int, Field(ge=1, le=10_000)] = 100
    """More request header fields get 431."""
    header_timeout: Duration = 30.0
    """A client must send its whole request head within this time."""
    keepalive_timeout: Duration = 75.0
    """Idle client keep-alive connections are closed after this time."""
    max_connections: Annotated[int, Field(ge=1)] | None = None
    """Client connections accepted at once per worker (unset: no limit)."""
    tls: ServerTLS | None = None
    """Serve HTTPS with this certificate and key."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the process log (JSON lines on stderr)."""
    access_log: bool = True
    """One JSON line per request on stdout."""


class AdminConfig(_Model):
    host: str = "127.0.0.1"
    """Address of the admin listener (/healthz, /readyz, /metrics)."""
    port: Port = 9901
    """Port of the admin listener."""


class UpstreamTLS(_Model):
    verify: bool = True
    """Verify the target's certificate and host name."""
    ca_file: ReadableFile | None = None  # replaces the system CA store, as curl's --cacert
    """CA bundle to verify with; it replaces the system store (as curl's --cacert)."""

    @field_validator("ca_file")
    @classmethod
    def _ca_loads(cls, value: str | None) -> str | None:
        if value is not None:
            _tls_loads(
                "the CA file does not load", lambda: ssl.create_default_context(cafile=value)
            )
        return value


class HealthCheck(_Model):
    path: AbsolutePath = "/"
    """Path probed with `GET` on every target; a status under 500 is healthy, a 5xx, a refused
    connection or no answer in `timeout` is not."""
    interval: Duration = 10.0
    """Time between probes."""
    timeout: Duration = 2.0
    """A probe without an answer in this time fails."""


class UpstreamConfig(_Model):
    targets: Annotated[list[Target], Field(min_length=1)]
    """Origins (`http://` or `https://` host and port) sharing one connection pool."""
    connect_timeout: Duration = 5.0
    """Connecting to a target longer than this is a 504."""
    read_timeout: Duration = 60.0
    """Longest silence while waiting for response headers or for the next chunk."""
    tls: UpstreamTLS = UpstreamTLS()
    """TLS settings for `https://` targets."""
    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    """How a target is chosen for each request."""
    max_fails: Annotated[int, Field(ge=0)] = 1
    """Failures in a row that eject a target (0: never eject)."""
    fail_timeout: Duration = 10.0
    """How long an ejected target gets no traffic."""
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    """Further targets tried when a request could not be delivered."""
    health: HealthCheck | None = None
    """Active health checks (off when unset)."""
    client: Literal["native", "aiohttp"] = "native"
    """The upstream transport: `native`, the proxy's own HTTP/1.1 client (fastest), or
    `aiohttp`, aiohttp's `ClientSession` (which can also go through a forward `proxy`)."""
    proxy: ForwardProxy | None = None
    """An HTTP forward proxy (`http://host:port`) the targets are reached through; needs
    `client: aiohttp`."""

    @field_validator("proxy")
    @classmethod
    def _proxy_needs_aiohttp(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("client", "native") != "aiohttp":
            raise ValueError(
                "a forward proxy needs 'client: aiohttp' (the native client connects directly)"
            )
        return value


class MatchConfig(_Model):
    path_prefix: AbsolutePath = "/"
    """Plain string prefix of the raw path (`/logs/` does not match `/logs`)."""
    host: str | None = None
    """Client's Host, compared case-insensitively without the port."""
    methods: list[Method] | None = None
    """Methods this route takes (unset: all)."""

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return value.lower() if value else None


class RouteConfig(_Model):
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, arbitrary_types_allowed=True
    )

    name: str
    """Name used in logs, metrics and `transform --route` (default: routeN)."""
    match: MatchConfig = MatchConfig()
    """What requests this route takes; the first matching route wins."""
    upstream: str
    """Name of the upstream this route forwards to."""
    strip_prefix: bool = False
    """Remove the path prefix, keeping a leading `/` (`/logs/a` becomes `/a`)."""
    preserve_host: bool = False
    """Send the client's Host upstream instead of the target's."""
    timeout: Duration | None = None
    """Total time for a whole exchange (unset: none, so streams may last for hours)."""
    transforms: list[TransformEntry] = []
    """Response body transforms, applied in order: one-key mappings `NAME: {options}`."""
    request_transforms: list[TransformEntry] = []
    """Request body transforms, applied in order."""
    text: TextSpec = AUTO
    """Where the response transforms find their text: `auto` (`body`, except SSE and NDJSON
    streams: a provider's stream is recognised by its first event, any other SSE read as `sse`),
    `body`, `sse` (each event's data one text), a preset (`openai`, `anthropic`, `ollama`,
    `gemini`), or `{format: sse|ndjson|json, fields: [selector, ...], join: false, max_event:
    1MiB}` (the JSON string values the selectors such as `choices[*].delta.content` pick;
    `join: true` makes a path's values across events one text). `{preset: NAME, max_event}`
    and `{format: sse, max_event}` set the event limit of the named forms."""
    request_text: TextSpec = BODY
    """The same for `request_transforms`: a preset reads the prompt fields of the provider's
    request body."""
    headers: HeaderRules = NO_RULES
    """Header rules, `{request: RULES, response: RULES, secret: [NAME, ...]}`, where RULES is
    `{set: {NAME: VALUE}, add: {NAME: VALUE}, remove: [NAME, ...]}` and a VALUE is a string or a
    list of strings. Applied after the proxy's own headers (X-Forwarded-*, X-Request-ID) and
    before the transforms settle the body headers (so a transform's `Content-Length`,
    `Content-Encoding`, `ETag` and `Vary` win); `remove`, then `set` (replaces every value),
    then `add` (appends). Names are case-insensitive; a request `set: {Host: ...}` is the Host
    sent upstream. Values are expanded from the environment at load and may not hold CR, LF,
    NUL or another control character. The values of `Authorization`, `Cookie`, `Set-Cookie`,
    `Proxy-Authorization`, `X-Api-Key` and the headers named in `secret` are never logged or
    printed. Framing and hop-by-hop headers (`Content-Length`, `Transfer-Encoding`,
    `Connection`, ...) can only be removed."""


class TracingConfig(_Model):
    otlp_endpoint: str
    """OTLP/HTTP collector, e.g. `http://collector:4318` (spans go to its `/v1/traces`)."""
    service_name: str = "streamproxy"
    """The `service.name` of the spans."""
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of new traces recorded; a client's `traceparent` decides for the traces it
    continues (parent-based sampling)."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        try:
            url = URL(value)
        except (ValueError, TypeError):
            raise ValueError("not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("an http:// or https:// URL of the collector is needed")
        return value

    @model_validator(mode="after")
    def _installed(self) -> TracingConfig:
        from proxy.tracing import missing_packages

        missing = missing_packages()
        if missing:
            raise ValueError(
                f"tracing needs the OpenTelemetry packages ({', '.join(missing)} missing): "
                "pip install 'streamproxy[otel]'"
            )
        return self


class DemoConfig(_Model):
    host: str = "127.0.0.1"
    """Address of the bundled demo upstream."""
    port: Port = 9000
    """Port of the bundled demo upstream."""
    interval: Duration = 0.5
    """Time between the demo's lines and events."""


class Config(_Model):
    server: ServerConfig = ServerConfig()
    """The proxy listener."""
    admin: AdminConfig | None = None
    """The admin listener (off when unset)."""
    upstreams: dict[str, UpstreamConfig]
    """Named groups of targets."""
    routes: list[RouteConfig]
    """Routes, tried in order."""
    demo: DemoConfig | None = None
    """Start the bundled demo upstream (a slow streaming source) in-process."""
    tracing: TracingConfig | None = None
    """OpenTelemetry tracing over OTLP/HTTP (off when unset; needs `streamproxy[otel]`)."""


# -- loading ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _expand(node: Any, loc: tuple[int | str, ...], problems: list[str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is not None:
                return value
            if m.group(2) is not None:
                return m.group(2)
            problems.append(f"{key_path(loc)}: environment variable {m.group(1)!r} is not set")
            return ""

        return _VAR.sub(sub, node) if "${" in node else node
    if isinstance(node, dict):
        return {k: _expand(v, (*loc, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*loc, i), problems) for i, v in enumerate(node)]
    return node


def _check_references(data: dict[str, Any], problems: list[str]) -> None:
    """Cross-references, checked on the raw data so they are reported with any other problem."""
    upstreams = data.get("upstreams")
    routes = data.get("routes")
    if not isinstance(upstreams, dict) or not isinstance(routes, list):
        return
    known = ", ".join(map(str, upstreams)) or "none"
    names: dict[str, int] = {}
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        upstream = route.get("upstream")
        if isinstance(upstream, str) and upstream not in upstreams:
            problems.append(f"routes[{i}].upstream: unknown upstream {upstream!r} (known: {known})")
        name = route.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(
                    f"routes[{i}].name: duplicate route name {name!r} (also routes[{names[name]}])"
                )
            names.setdefault(name, i)


def _check_texts(data: dict[str, Any], problems: list[str]) -> None:
    """Read each route's ``text`` and ``request_text`` into a TextSpec (problems with key paths)."""
    routes = data.get("routes")
    if not isinstance(routes, list):
        return
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        for key in ("text", "request_text"):
            if key in route:
                spec = parse_text(route[key], f"routes[{i}].{key}", problems)
                route[key] = spec if spec is not None else (AUTO if key == "text" else BODY)


def _check_headers(data: dict[str, Any], problems: list[str]) -> None:
    """Read each route's ``headers`` into HeaderRules; problems name the key path, never a value."""
    routes = data.get("routes")
    if not isinstance(routes, list):
        return
    for i, route in enumerate(routes):
        if isinstance(route, dict) and "headers" in route:
            route["headers"] = parse_header_rules(
                route["headers"], f"routes[{i}].headers", problems
            )


def _structure_problems(exc: ValidationError) -> list[str]:
    described = [describe_error(err, Config) for err in exc.errors(include_url=False)]
    # "targtes: unknown key (did you mean 'targets'?)" already says that targets is missing.
    suggested = {
        (*loc[:-1], msg.split("'")[1])
        for loc, msg in described
        if msg.startswith("unknown key (did you mean")
    }
    return [
        f"{key_path(loc)}: {msg}"
        for loc, msg in described
        if not (msg == "required key is missing" and loc in suggested)
    ]


def validate_data(data: Any) -> Config:
    """Validate already-parsed YAML data; raise ConfigError with every problem."""
    try:
        return _validate(data)
    except RecursionError:
        raise ConfigError(["(top level): the configuration is nested too deeply"]) from None


def _validate(data: Any) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping with server, upstreams and routes"])
    problems: list[str] = []
    data = _expand(data, (), problems)
    if problems:
        raise ConfigError(problems)
    # Routes without a name get one from their position, so metrics and logs can name them.
    routes = data.get("routes")
    if isinstance(routes, list):
        data["routes"] = [
            {"name": f"route{i}", **r} if isinstance(r, dict) and "name" not in r else r
            for i, r in enumerate(routes)
        ]
    _check_references(data, problems)
    _check_texts(data, problems)
    _check_headers(data, problems)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_structure_problems(exc))
    # The transforms are built here, once per load, so that their problems are reported with
    # every other; the Runtime takes them from the loader (chains_for), the config stays data.
    chains = build_chains(data.get("routes"), problems)
    if problems or config is None:
        raise ConfigError(problems)
    remember_chains(config, chains)
    return config


def load_config_text(text: str, source: str = DEFAULT_PATH) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError([f"{source}: {where}{problem}"]) from None
    except RecursionError:
        raise ConfigError(
            [f"{source}: the YAML is nested too deeply or refers to itself"]
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        # A badly tagged scalar (!!int x, !!timestamp 2001-13-45) fails inside the YAML loader.
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError([f"{source}: a YAML value cannot be read: {detail}"]) from None
    return validate_data(data)


def load_config(path: str | os.PathLike[str]) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    return load_config_text(text, str(path))
