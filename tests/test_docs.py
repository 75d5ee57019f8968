"""Docs that cannot drift: the configuration reference is what the models generate."""

from __future__ import annotations

from pathlib import Path

from proxy.config.models import Config
from proxy.config.reference import render

ROOT = Path(__file__).parent.parent


def test_the_configuration_reference_is_generated_from_the_models() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), (
        "docs/configuration.md is stale: run `python -m proxy.config.reference "
        "> docs/configuration.md`"
    )


def test_every_key_is_documented() -> None:
    def walk(model: type, prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
        return missing

    from proxy.config import models as config

    models = [getattr(config, n) for n in dir(config)]
    models = [m for m in models if isinstance(m, type) and issubclass(m, config._Model)]
    assert Config in models
    assert [key for m in models for key in walk(m, m.__name__ + ".")] == []
