"""proxy.yaml: validation with key paths, units, environment expansion."""

from __future__ import annotations

import pytest

from proxy.config.models import ConfigError, load_config, load_config_text, validate_data
from proxy.config.units import parse_duration, parse_size

BASE = """
server: {port: 8080}
upstreams:
  api: {targets: ["http://127.0.0.1:9000"]}
  logs: {targets: ["http://127.0.0.1:9001"]}
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: api
  - name: b
    upstream: logs
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return info.value.problems


def test_a_valid_config_loads_with_defaults() -> None:
    config = load_config_text(BASE)
    assert config.server.port == 8080
    assert config.server.shutdown_grace == 30.0
    assert config.server.max_request_body == 100 * 1024**2
    assert config.server.max_header_size == 16 * 1024
    assert config.upstreams["api"].read_timeout == 60.0
    assert config.upstreams["api"].balance == "round_robin"
    assert config.upstreams["api"].tls.verify is True
    assert config.routes[1].match.path_prefix == "/"
    assert config.admin is None


def test_the_config_is_frozen() -> None:
    config = load_config_text(BASE)
    with pytest.raises(ValueError):
        config.server.port = 1  # type: ignore[misc]


def test_an_unknown_upstream_is_named_with_the_known_ones() -> None:
    assert problems(BASE.replace("upstream: logs", "upstream: bakend")) == [
        "routes[1].upstream: unknown upstream 'bakend' (known: api, logs)"
    ]


def test_a_misspelled_key_is_named_with_a_suggestion() -> None:
    (problem,) = problems(BASE.replace("{targets:", "{targtes:", 1))
    assert problem.startswith("upstreams.api.targtes: unknown key (did you mean 'targets'?)")
    (problem,) = problems(BASE.replace("server: {port: 8080}", "server: {prot: 8080}"))
    assert problem == "server.prot: unknown key (did you mean 'port'?)"


def test_a_bad_duration_and_size_are_named() -> None:
    text = BASE.replace(
        "server: {port: 8080}", "server: {port: 8080, shutdown_grace: 5x, max_request_body: lots}"
    )
    found = problems(text)
    assert any(p.startswith("server.shutdown_grace: not a duration: '5x'") for p in found)
    assert any(p.startswith("server.max_request_body: not a size: 'lots'") for p in found)


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("upstream: logs", "upstream: nope").replace(
        '{targets: ["http://127.0.0.1:9000"]}', '{targets: ["ftp://x"], read_timeout: -1}'
    )
    found = problems(text)
    assert any(
        p.startswith("upstreams.api.targets[0]: a target must start with http") for p in found
    )
    assert any(p.startswith("upstreams.api.read_timeout:") for p in found)


def test_missing_required_keys_and_wrong_types() -> None:
    found = problems("server: {port: 99999}\nupstreams: {}\n")
    assert "routes: required key is missing" in found
    assert any(p.startswith("server.port:") for p in found)
    assert problems("- 1\n- 2\n") == [
        "(top level): expected a mapping with server, upstreams and routes"
    ]
    (problem,) = problems("routes: [\n")
    assert problem.startswith("proxy.yaml: line ")


def test_route_checks() -> None:
    found = problems(
        BASE.replace("path_prefix: /a/", "path_prefix: a/, methods: [GET, 'B A D']").replace(
            "name: b", "name: a"
        )
    )
    assert "routes[0].match.path_prefix: must start with '/'" in found
    assert any(p.startswith("routes[0].match.methods[1]: not an HTTP method") for p in found)
    assert "routes[1].name: duplicate route name 'a' (also routes[0])" in found


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.1:9000/base", "without path or query"),
        ("127.0.0.1:9000", "must start with http:// or https://"),
        ("http://user:pw@h:1", "cannot carry credentials"),
    ],
)
def test_bad_targets(target: str, reason: str) -> None:
    (problem,) = problems(BASE.replace("http://127.0.0.1:9000", target))
    assert problem.startswith("upstreams.api.targets[0]: ") and reason in problem


def test_environment_variables_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "9100")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    text = BASE.replace("127.0.0.1:9000", "127.0.0.1:${API_PORT}").replace(
        "server: {port: 8080}", "server: {port: '${UNSET_VAR:-8181}', host: '${UNSET_VAR:-::1}'}"
    )
    config = load_config_text(text)
    assert config.upstreams["api"].targets == ["http://127.0.0.1:9100"]
    assert config.server.port == 8181
    assert config.server.host == "::1"
    assert problems(BASE.replace("8080", "'${UNSET_VAR}'")) == [
        "server.port: environment variable 'UNSET_VAR' is not set"
    ]


def test_workers_auto_is_the_cpu_count() -> None:
    import os

    config = load_config_text(BASE.replace("{port: 8080}", "{port: 8080, workers: auto}"))
    assert config.server.workers == (os.cpu_count() or 1)


def test_an_unreadable_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read the config file" in info.value.problems[0]


def test_the_bundled_proxy_yaml_is_valid() -> None:
    from pathlib import Path

    config = load_config(Path(__file__).parent.parent / "proxy.yaml")
    assert config.demo is not None
    assert [r.name for r in config.routes] == ["demo", "llm", "raw"]


def test_transform_entries_are_checked() -> None:
    def entry(transforms: list[object]) -> list[str]:
        data = {
            "upstreams": {"api": {"targets": ["http://127.0.0.1:1"]}},
            "routes": [{"name": "r", "upstream": "api", "transforms": transforms}],
        }
        with pytest.raises(ConfigError) as info:
            validate_data(data)
        return info.value.problems

    assert entry(["redact"]) == [
        "routes[0].transforms[0]: a transform entry is a one-key mapping NAME: {options}"
    ]
    (problem,) = entry([{"redcat": {}}])
    assert problem.startswith("routes[0].transforms[0]: unknown transform 'redcat'")
    assert "did you mean 'redact'?" in problem
    (problem,) = entry([{"tests.sample_plugin:missing": {}}])
    assert problem.startswith("routes[0].transforms[0]: cannot import")
    (problem,) = entry([{"tag_lines": {"content_types": ["text"]}}])
    assert problem.startswith("routes[0].transforms[0].tag_lines.content_types: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), ("1.5", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 524288), ("100MiB", 100 * 1024**2), ("1GiB", 1024**3), (10, 10), ("10MB", 10**7)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5x", "", True, "-1s", None, "s"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_tls_files_are_checked_at_load(tmp_path) -> None:
    found = problems(
        BASE.replace(
            "server: {port: 8080}",
            f"server: {{port: 8080, tls: {{cert: {tmp_path}/no.pem, key: {tmp_path}/no.key}}}}",
        ).replace(
            '{targets: ["http://127.0.0.1:9000"]}',
            f'{{targets: ["https://127.0.0.1:9000"], tls: {{ca_file: {tmp_path}/ca.pem}}}}',
        )
    )
    assert f"server.tls.cert: cannot read the file '{tmp_path}/no.pem'" in found
    assert f"server.tls.key: cannot read the file '{tmp_path}/no.key'" in found
    assert f"upstreams.api.tls.ca_file: cannot read the file '{tmp_path}/ca.pem'" in found
    (tmp_path / "ca.pem").write_text("not a certificate")
    found = problems(
        BASE.replace(
            '{targets: ["http://127.0.0.1:9000"]}',
            f'{{targets: ["https://127.0.0.1:9000"], tls: {{ca_file: {tmp_path}/ca.pem}}}}',
        )
    )
    assert any(p.startswith("upstreams.api.tls.ca_file: the CA file does not load") for p in found)


def test_text_problems_name_the_route_key_path() -> None:
    from proxy.config.models import ConfigError, validate_data

    data = {
        "upstreams": {"u": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [
            {"upstream": "u", "text": "openai", "request_text": "anthropic"},
            {"upstream": "u", "request_text": {"format": "json", "fields": ["messages[x]"]}},
        ],
    }
    with pytest.raises(ConfigError) as err:
        validate_data(data)
    assert err.value.problems == [
        "routes[1].request_text.fields[0]: cannot read the selector 'messages[x]' at position 8"
    ]
    del data["routes"][1]
    config = validate_data(data)
    assert (str(config.routes[0].text), str(config.routes[0].request_text)) == (
        "openai",
        "anthropic",
    )
