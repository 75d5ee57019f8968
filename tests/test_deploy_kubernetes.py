"""The Kubernetes sidecar example (deploy/kubernetes/) and its agreement with the Dockerfile.

Every manifest is validated offline against the Kubernetes OpenAPI schema bundled with the PyPI
package ``kubernetes-validate`` (strict: unknown fields are errors). The rest checks the facts the
recipe promises in docs/deploy.md: probes on the admin listener, a termination grace period that
covers the drain, non-root and read-only containers, the config mounted where the image reads it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
KUSTOMIZATION = "kustomization.yaml"

# The oldest Kubernetes minor we claim the example works on, and the newest schema bundled.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


# --- helpers ------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    files = sorted(p for p in K8S_DIR.glob("*.y*ml") if p.name != KUSTOMIZATION)
    assert files, f"no manifests in {K8S_DIR}"
    return files


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load_documents(path)]


def only(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in all_documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return only("Deployment")


def pod_spec() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    by_name = {c["name"]: c for c in pod_spec()["containers"]}
    assert name in by_name, f"no container {name!r} (have {sorted(by_name)})"
    return by_name[name]


def proxy_yaml_text() -> str:
    data = only("ConfigMap")["data"]
    assert "proxy.yaml" in data, "the ConfigMap must carry a proxy.yaml key"
    return data["proxy.yaml"]


def proxy_config() -> dict[str, Any]:
    cfg = yaml.safe_load(proxy_yaml_text())
    assert isinstance(cfg, dict)
    return cfg


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a contract duration: ``250ms``, ``5s``, ``2m``, or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def shutdown_grace() -> float:
    return parse_duration(proxy_config().get("server", {}).get("shutdown_grace", "30s"))


def prestop_sleep(c: dict[str, Any]) -> float:
    """Seconds a container's preStop hook sleeps (exec ``sleep N`` or the native sleep action)."""
    pre = c.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0.0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return parse_duration(command[1])
    raise AssertionError(f"cannot tell how long the preStop hook of {c['name']!r} takes: {pre}")


def resolve_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    assert port in named, f"container {c['name']!r} has no port named {port!r}"
    return named[port]


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by the parser
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    instructions = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instructions.append((instruction.upper(), args.strip()))
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in dockerfile_final_stage():
        if ins == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"use the ENV KEY=VALUE form: {args!r}"
                env[key] = value
    return env


def dockerfile_one(instruction: str) -> str:
    found = [args for ins, args in dockerfile_final_stage() if ins == instruction]
    assert found, f"the Dockerfile's final stage has no {instruction}"
    return found[-1]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, env: dict[str, str]) -> Any:
    """The contract's ``${VAR}`` / ``${VAR:-default}`` expansion, applied to every string."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    return value


# --- schema validity ----------------------------------------------------------------------------


def _schema_cases() -> list[Any]:
    cases = []
    for path, doc in all_documents():
        for version in K8S_VERSIONS:
            ident = f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}@{version}"
            cases.append(pytest.param(doc, version, id=ident))
    return cases


@pytest.mark.parametrize(("doc", "version"), _schema_cases())
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {e.message}")


def test_the_schemas_are_bundled_so_validation_works_offline() -> None:
    import importlib.resources

    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    for version in K8S_VERSIONS:
        major, minor = version.split(".")[:2]
        strict = [d.name for d in schemas.iterdir() if d.name.endswith("-local-strict")]
        assert any(d.startswith(f"v{major}.{minor}.") for d in strict), (version, strict)


def test_an_invalid_manifest_is_rejected() -> None:
    """Guards against a validator that accepts anything (e.g. an unknown kind or empty schema)."""
    bad = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text(encoding="utf-8"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] = {"httpGet": {"paht": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    path = K8S_DIR / KUSTOMIZATION
    if not path.exists():
        pytest.skip("no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


# --- the proxy.yaml in the ConfigMap ------------------------------------------------------------


def test_configmap_proxy_yaml_has_the_sidecar_shape() -> None:
    cfg = proxy_config()
    assert set(cfg) >= {"server", "admin", "upstreams", "routes"}
    assert cfg["server"]["port"] == 8080
    assert cfg["admin"]["host"] == "0.0.0.0", "the kubelet probes the pod IP, not its loopback"
    assert cfg["admin"]["port"] == 9901
    assert cfg["upstreams"]["app"]["targets"] == ["http://127.0.0.1:8000"]
    parse_duration(cfg["server"]["shutdown_grace"])

    names = [r["name"] for r in cfg["routes"]]
    assert len(names) == len(set(names)), f"duplicate route names: {names}"
    for route in cfg["routes"]:
        assert route["upstream"] in cfg["upstreams"], route
        assert route["match"]["path_prefix"].startswith("/"), route
    transformed = [
        r
        for r in cfg["routes"]
        if {next(iter(t)) for t in r.get("transforms", [])} >= {"redact", "tag_lines"}
    ]
    assert transformed, "one route shows both redact and tag_lines"
    for route in transformed:
        for entry in route["transforms"]:
            ((name, options),) = entry.items()
            if name == "redact":
                for pattern in options["patterns"]:
                    re.compile(pattern)


def test_configmap_proxy_yaml_loads_with_the_engine() -> None:
    config = pytest.importorskip("proxy.config.models", exc_type=ModuleNotFoundError)
    try:
        loaded = config.load_config_text(proxy_yaml_text(), "deploy/kubernetes/configmap.yaml")
    except config.ConfigError as e:
        pytest.fail("the ConfigMap's proxy.yaml is invalid:\n" + "\n".join(e.problems))
    # If the engine exposes the parsed grace period, it must agree with this test's reading.
    grace = getattr(getattr(loaded, "server", None), "shutdown_grace", None)
    if hasattr(grace, "total_seconds"):
        grace = grace.total_seconds()
    if isinstance(grace, int | float) and not isinstance(grace, bool):
        assert grace == pytest.approx(shutdown_grace())


# --- the sidecar --------------------------------------------------------------------------------


def test_probes_hit_the_admin_listener() -> None:
    proxy = container("proxy")
    admin_port = proxy_config()["admin"]["port"]
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe_name, path in expected.items():
        probe = proxy.get(probe_name)
        assert probe, f"the proxy container needs a {probe_name}"
        http = probe["httpGet"]
        assert http["path"] == path, probe_name
        assert resolve_port(proxy, http["port"]) == admin_port, probe_name
        assert http.get("scheme", "HTTP") == "HTTP", probe_name
    startup = proxy.get("startupProbe")
    if startup:
        assert startup["httpGet"]["path"] == "/healthz"
        assert resolve_port(proxy, startup["httpGet"]["port"]) == admin_port


def test_proxy_declares_both_ports() -> None:
    ports = {p["containerPort"] for p in container("proxy")["ports"]}
    cfg = proxy_config()
    assert {cfg["server"]["port"], cfg["admin"]["port"]} <= ports


def test_termination_grace_covers_the_drain() -> None:
    spec = pod_spec()
    grace = spec.get("terminationGracePeriodSeconds", 30)
    proxy_done = prestop_sleep(container("proxy")) + shutdown_grace()
    # SIGTERM comes after the preStop hook; the drain then takes up to shutdown_grace; the
    # kubelet's SIGKILL comes terminationGracePeriodSeconds after the pod's deletion began.
    assert grace > proxy_done, (
        f"terminationGracePeriodSeconds={grace} must exceed preStop + shutdown_grace={proxy_done}"
    )
    # The upstream app must keep serving while the proxy drains its streams.
    for c in spec["containers"]:
        if c["name"] != "proxy":
            assert prestop_sleep(c) >= proxy_done, f"{c['name']!r} stops before the proxy drained"
            assert prestop_sleep(c) < grace, f"{c['name']!r} preStop outlasts the grace period"


def test_containers_run_as_non_root_and_locked_down() -> None:
    spec = pod_spec()
    pod_sc = spec.get("securityContext", {})
    for c in spec["containers"]:
        sc = {**pod_sc, **c.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, c["name"]
        assert sc.get("runAsUser", 1) != 0, c["name"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), c["name"]
        requests = c.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= set(requests), f"{c['name']!r} needs resource requests"
        assert "memory" in c.get("resources", {}).get("limits", {}), c["name"]


def test_config_is_mounted_where_the_image_reads_it() -> None:
    proxy = container("proxy")
    config_path = dockerfile_env()["PROXY_CONFIG"]
    env = {e["name"]: e.get("value") for e in proxy.get("env", [])}
    config_path = env.get("PROXY_CONFIG", config_path)
    configmap_name = only("ConfigMap")["metadata"]["name"]
    volumes = {v["name"]: v["configMap"]["name"] for v in pod_spec()["volumes"] if "configMap" in v}
    mounts = [m for m in proxy["volumeMounts"] if volumes.get(m["name"]) == configmap_name]
    assert mounts, "the proxy container mounts the ConfigMap"
    paths = {f"{m['mountPath'].rstrip('/')}/proxy.yaml" for m in mounts if "subPath" not in m}
    paths |= {m["mountPath"] for m in mounts if m.get("subPath") == "proxy.yaml"}
    assert config_path in paths
    assert all(m.get("readOnly") for m in mounts)


def test_service_targets_the_proxy_not_the_app() -> None:
    service = only("Service")
    proxy = container("proxy")
    server_port = proxy_config()["server"]["port"]
    for port in service["spec"]["ports"]:
        assert resolve_port(proxy, port["targetPort"]) == server_port
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- agreement with the Dockerfile --------------------------------------------------------------


def test_image_user_and_ports_match_the_pod() -> None:
    user = dockerfile_one("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER lets runAsNonRoot verify it"
    assert container("proxy")["securityContext"]["runAsUser"] == int(user)
    exposed = {int(p.split("/")[0]) for p in dockerfile_one("EXPOSE").split()}
    cfg = proxy_config()
    assert {cfg["server"]["port"], cfg["admin"]["port"]} <= exposed


def test_image_healthcheck_and_entrypoint() -> None:
    health = dockerfile_one("HEALTHCHECK")
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)/healthz", health)
    assert m, health
    assert int(m.group(1)) == proxy_config()["admin"]["port"]
    entrypoint = yaml.safe_load(dockerfile_one("ENTRYPOINT"))
    assert isinstance(entrypoint, list), "exec form, so SIGTERM reaches python as PID 1"
    assert entrypoint[:3] == ["python", "-m", "proxy"]
    assert dockerfile_one("STOPSIGNAL") == "SIGTERM"
    env = dockerfile_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_bundled_proxy_yaml_listeners_are_reachable_in_the_image() -> None:
    """The image ships the repo's proxy.yaml; with the image's ENV both listeners bind all hosts."""
    bundled = ROOT / "proxy.yaml"
    if not bundled.exists():
        pytest.skip("no proxy.yaml at the repository root yet")
    env = dockerfile_env()
    cfg = expand(yaml.safe_load(bundled.read_text(encoding="utf-8")), env)
    assert "admin" in cfg, "the image's HEALTHCHECK needs the admin listener"
    for section in ("server", "admin"):
        host = cfg[section].get("host", "0.0.0.0" if section == "server" else "127.0.0.1")
        assert host in ("0.0.0.0", "::"), f"{section}.host is {host!r} in the image"
    server_port, admin_port = int(cfg["server"]["port"]), int(cfg["admin"]["port"])
    exposed = {int(p.split("/")[0]) for p in dockerfile_one("EXPOSE").split()}
    assert {server_port, admin_port} <= exposed
    assert f":{admin_port}/healthz" in dockerfile_one("HEALTHCHECK")


# --- the sidecar that holds the key, and tracing ------------------------------------------------


def egress_yaml_text() -> str:
    data = only("ConfigMap")["data"]
    assert "egress.yaml" in data, "the ConfigMap carries the egress sidecar's egress.yaml"
    return data["egress.yaml"]


def secret_env(c: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Environment variables of a container that come from a Secret: name → secretKeyRef."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_the_egress_key_comes_from_a_secret_through_a_header_rule() -> None:
    egress = container("egress")
    env = {e["name"]: e.get("value") for e in egress.get("env", [])}
    assert env["PROXY_CONFIG"] == "/etc/streamproxy/egress.yaml"
    mounts = [m for m in egress["volumeMounts"] if m["mountPath"] == "/etc/streamproxy"]
    assert mounts and all(m.get("readOnly") for m in mounts)
    secrets = secret_env(egress)
    assert set(secrets) == {"LLM_API_KEY"}
    assert secrets["LLM_API_KEY"]["name"] == "llm-api-key"
    assert not secrets["LLM_API_KEY"].get("optional"), "no key: the pod must not start"
    cfg = yaml.safe_load(egress_yaml_text())
    (route,) = cfg["routes"]
    rules = route["headers"]["request"]
    assert rules["set"]["Authorization"] == "Bearer ${LLM_API_KEY}"
    assert "X-Forwarded-For" in rules["remove"]
    # Only the pod reaches the listener that spends the key; the Service never targets it.
    assert cfg["server"]["host"] == "127.0.0.1"
    served = {
        resolve_port(container("proxy"), p["targetPort"]) for p in only("Service")["spec"]["ports"]
    }
    assert cfg["server"]["port"] not in served
    # The app is pointed at the sidecar and holds no key of its own.
    app = container("app")
    assert not secret_env(app)
    app_env = {e["name"]: e.get("value", "") for e in app.get("env", [])}
    assert app_env["OPENAI_BASE_URL"].startswith(f"http://127.0.0.1:{cfg['server']['port']}/")
    # The admin listener of the egress sidecar is probed like the proxy's.
    admin_port = cfg["admin"]["port"]
    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = egress[probe_name]["httpGet"]
        assert (http["path"], resolve_port(egress, http["port"])) == (path, admin_port)


def test_both_sidecars_trace_to_the_collector_service() -> None:
    for text in (proxy_yaml_text(), egress_yaml_text()):
        tracing = yaml.safe_load(text)["tracing"]
        endpoint = expand(tracing["otlp_endpoint"], {})
        assert re.fullmatch(r"http://[a-z0-9-]+\.[a-z0-9-]+\.svc(\.cluster\.local)?:4318", endpoint)
        assert tracing["service_name"].startswith("demo-app-")


async def test_the_egress_recipe_injects_the_key_and_traces(
    aiohttp_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """egress.yaml as shipped, run with the pod's environment: the app's request goes out with
    the Secret's key, which no log line shows, and its spans reach the collector."""
    import io

    import aiohttp
    from aiohttp import web

    from proxy.accesslog import AccessLog
    from proxy.config.models import validate_data
    from proxy.server.listener import ProxyServer

    from .support.otlp import Receiver

    seen: list[dict[str, str]] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"echo": "sk-" + "x" * 30}, headers={"Set-Cookie": "a=1"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", api)
    upstream = await aiohttp_server(app)
    rcv = Receiver()
    collector = await aiohttp_server(rcv.app())
    key = "sk-test-" + "k" * 32
    monkeypatch.setenv("LLM_API_KEY", key)
    monkeypatch.setenv("LLM_API_URL", f"http://127.0.0.1:{upstream.port}")
    monkeypatch.setenv("OTEL_COLLECTOR_URL", f"http://127.0.0.1:{collector.port}")
    data = yaml.safe_load(egress_yaml_text())
    data["server"]["port"] = data["admin"]["port"] = 0  # the test's own free ports
    log = io.StringIO()
    server = ProxyServer(validate_data(data), access_log=AccessLog(stream=log))
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.proxy_port}/v1/chat/completions"
        async with aiohttp.ClientSession() as s, s.post(url, json={"model": "m"}) as r:
            assert r.status == 200
            assert "Set-Cookie" not in r.headers
            assert await r.json() == {"echo": "[KEY]"}
    finally:
        await server.stop()  # the drain exports the spans
    assert seen[0]["Authorization"] == f"Bearer {key}"
    assert "X-Forwarded-For" not in seen[0]
    assert key not in log.getvalue()
    spans = await rcv.until(2)
    assert {s.resource["service.name"] for s in spans} == {"demo-app-egress"}
    assert json.loads(log.getvalue())["trace_id"] == spans[0].trace_id
