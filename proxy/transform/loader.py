"""Turns the transform entries of ``proxy.yaml`` into ready transform stages.

The config is data: its transform entries stay the mappings the file holds. Loading a config
builds each route's stages once (their problems reported with the config's own, see
:func:`proxy.config.models.validate_data`); the :class:`~proxy.runtime.Runtime` takes them with
:func:`chains_for`.

A name resolves, in order, to a built-in transform, a plugin registered under the entry-point
group ``proxy.transforms``, or a dotted path ``package.module:attr``. The factory's ``Options``
model (when it declares one) validates the options with key paths; the factory is then called
once with them, and a ``ValueError``/``TypeError`` it raises is reported at the entry's path.
"""

from __future__ import annotations

import importlib
import weakref
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from proxy.config.problems import ConfigError, describe_error, key_path, suggest
from proxy.transform.media import DEFAULT_CONTENT_TYPES, ContentTypeMatcher
from proxy.transform_api import Transform

ENTRY_POINT_GROUP = "proxy.transforms"
BUILTINS = {
    "redact": "plugins.redact:Redact",
    "tag_lines": "plugins.tag_lines:TagLines",
}


@dataclass(frozen=True, slots=True)
class TransformStage:
    """One configured transform: what it is, where it was configured, which bodies it takes."""

    name: str
    transform: Transform
    content_types: ContentTypeMatcher
    path: str


@dataclass(frozen=True, slots=True)
class RouteChains:
    response: tuple[TransformStage, ...]
    request: tuple[TransformStage, ...]


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_factory(name: str) -> Any:
    """The factory for a transform name; raises LookupError with a helpful message."""
    if name in BUILTINS:
        return _import(BUILTINS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    if ":" in name:
        try:
            return _import(name)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"cannot import {name!r}: {exc}") from None
    known = sorted({*BUILTINS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise LookupError(
        f"unknown transform {name!r}{suggest(name, known)} "
        f"(known: {', '.join(known)}; or a dotted path 'package.module:attr')"
    )


def build_stage(entry: Any, path: str, problems: list[str]) -> TransformStage | None:
    if not isinstance(entry, dict) or len(entry) != 1:
        problems.append(f"{path}: a transform entry is a one-key mapping NAME: {{options}}")
        return None
    ((name, options),) = entry.items()
    name = str(name)
    at = f"{path}.{name if name.isprintable() else repr(name)}"
    if options is None:
        options = {}
    if not isinstance(options, dict):
        problems.append(f"{at}: options must be a mapping")
        return None
    options = dict(options)
    globs = options.pop("content_types", None)
    if globs is None:
        globs = DEFAULT_CONTENT_TYPES
    try:
        if not isinstance(globs, list | tuple) or not all(isinstance(g, str) for g in globs):
            raise ValueError("must be a list of media type globs such as 'text/*'")
        matcher = ContentTypeMatcher(globs)
    except ValueError as exc:
        problems.append(f"{at}.content_types: {exc}")
        return None
    try:
        factory = resolve_factory(name)
    except LookupError as exc:
        problems.append(f"{path}: {exc}")
        return None
    except Exception as exc:  # a broken plugin module must be a config error, not a traceback
        problems.append(f"{path}: cannot load transform {name!r}: {exc!r}")
        return None
    schema = getattr(factory, "Options", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            options = dict(schema.model_validate(options))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc, msg = describe_error(err, schema)
                problems.append(f"{at}{'.' if loc else ''}{key_path(loc)}: {msg}")
            return None
    try:
        transform = factory(**options)
    except (ValueError, TypeError) as exc:
        problems.append(f"{at}: {' '.join(str(exc).split())}")
        return None
    except Exception as exc:
        problems.append(f"{at}: the transform failed to start: {exc!r}")
        return None
    if not callable(transform):
        problems.append(f"{at}: the factory returned {type(transform).__name__}, not a transform")
        return None
    return TransformStage(name=name, transform=transform, content_types=matcher, path=path)


def build_chains(routes: Any, problems: list[str]) -> list[RouteChains]:
    """Build every route's stages from the raw route list, recording problems."""
    chains: list[RouteChains] = []
    if not isinstance(routes, list):
        return chains
    for i, route in enumerate(routes):
        built: dict[str, list[TransformStage]] = {"transforms": [], "request_transforms": []}
        for key, stages in built.items():
            entries = route.get(key) if isinstance(route, dict) else None
            if entries is None:
                continue
            if not isinstance(entries, list):
                problems.append(f"routes[{i}].{key}: must be a list of transform entries")
                continue
            for j, entry in enumerate(entries):
                stage = build_stage(entry, f"routes[{i}].{key}[{j}]", problems)
                if stage is not None:
                    stages.append(stage)
        chains.append(
            RouteChains(
                response=tuple(built["transforms"]), request=tuple(built["request_transforms"])
            )
        )
    return chains


# The stages built while a config was loaded, by the id of that (immutable) config, for as long
# as it lives: its factories are called once per load.
_BUILT: dict[int, list[RouteChains]] = {}


def remember_chains(config: object, chains: list[RouteChains]) -> None:
    key = id(config)
    _BUILT[key] = chains
    weakref.finalize(config, _BUILT.pop, key, None)


def chains_for(config: Any) -> list[RouteChains]:
    """Every route's stages of a loaded config (built now if the config was not loaded)."""
    chains = _BUILT.get(id(config))
    if chains is None:
        problems: list[str] = []
        routes = [
            {"transforms": r.transforms, "request_transforms": r.request_transforms}
            for r in config.routes
        ]
        chains = build_chains(routes, problems)
        if problems:
            raise ConfigError(problems)
        remember_chains(config, chains)
    return chains
