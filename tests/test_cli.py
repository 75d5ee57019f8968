"""The command line, run as a user would: check, transform, run, --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy import __version__

ROOT = Path(__file__).parent.parent
GOOD = """
upstreams:
  api: {targets: ["http://127.0.0.1:9000"]}
routes:
  - name: a
    upstream: api
"""


def run(*args: str, stdin: bytes = b"", cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=30,
        check=False,
    )


def test_version_names_the_product() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.decode().strip() == f"streamproxy {__version__}"


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    out = run("check", "-c", str(path))
    assert out.returncode == 0, out.stderr


def test_check_names_each_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        GOOD.replace("upstream: api", "upstream: bakend").replace(
            "{targets:", "{connect_timeout: 5x, targtes:"
        )
    )
    out = run("check", "-c", str(path))
    assert out.returncode == 2
    lines = out.stderr.decode().splitlines()
    assert "routes[0].upstream: unknown upstream 'bakend' (known: api)" in lines
    assert "upstreams.api.targtes: unknown key (did you mean 'targets'?)" in lines
    assert any(line.startswith("upstreams.api.connect_timeout: not a duration") for line in lines)


def test_run_refuses_an_invalid_config_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("upstream: api", "upstream: nope"))
    out = run("-c", str(path))
    assert out.returncode == 2
    assert b"routes[0].upstream: unknown upstream 'nope'" in out.stderr
    assert b"listening" not in out.stderr


def test_the_config_defaults_to_proxy_yaml_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "proxy.yaml").write_text(GOOD.replace("upstream: api", "upstream: x"))
    out = run("check", cwd=tmp_path)
    assert out.returncode == 2
    assert b"proxy.yaml" not in out.stdout
    assert b"routes[0].upstream" in out.stderr


# GOOD with its route named "shout" and given transform chains.
TRANSFORMS = (
    GOOD.replace("name: a", "name: shout")
    + """\
    transforms:
      - tests.sample_plugins:Upper: {}
      - tests.sample_plugins:Bracket: {}
    request_transforms:
      - tests.sample_plugins:Bracket: {}
"""
)


def test_transform_pipes_stdin_through_a_routes_response_chain(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TRANSFORMS)
    body = "héllo\nwörld\n".encode() * 10_000
    out = run("transform", "-c", str(path), "--route", "shout", stdin=body)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"[" + body.upper() + b"]"


def test_transform_request_chain_and_content_types(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TRANSFORMS)
    out = run("transform", "-c", str(path), "--route", "shout", "--request", stdin=b"abc")
    assert out.stdout == b"[abc]"
    binary = run(
        "transform",
        "-c",
        str(path),
        "--route",
        "shout",
        "--content-type",
        "image/png",
        stdin=b"abc",
    )
    assert binary.stdout == b"abc"  # not a type the transforms take: untouched


def test_transform_names_an_unknown_route(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TRANSFORMS)
    out = run("transform", "-c", str(path), "--route", "nope", stdin=b"abc")
    assert out.returncode == 2
    assert b"--route: unknown route 'nope' (known: shout)" in out.stderr
