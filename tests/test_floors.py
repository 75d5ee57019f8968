"""The dependency floors pyproject.toml declares are the ones CI tests (.ci/floors.txt)."""

from __future__ import annotations

import re
import tomllib

from .conftest import ROOT


def test_the_declared_floors_are_the_tested_ones() -> None:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,.*)?(?:;.*)?", dep.split(";")[0].strip())
        if m:
            floors[m.group(1).lower()] = m.group(2)
    for name, version in pins.items():
        declared = floors[name]
        assert tuple(map(int, declared.split("."))) + (0,) * (3 - declared.count(".") - 1) == (
            tuple(map(int, version.split(".")))
        ), (name, declared, version)
