"""A route's ``text`` / ``request_text``: where its transforms find their text, checked at load.

``auto``, ``body``, ``sse``, a preset name (``openai``, ``anthropic``, ``ollama``, ``gemini``),
or a mapping ``{format: sse|ndjson|json, fields: [selector, ...], join: bool, max_event: size}``
(``{preset: NAME, max_event: size}`` and ``{format: sse, max_event: size}`` set the limit of the
other forms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from proxy.config.problems import suggest
from proxy.config.units import parse_size
from proxy.transform.text.selectors import Selector, parse_selector

__all__ = ["MODES", "PRESETS", "TextSpec", "parse_text"]

PRESETS = ("openai", "anthropic", "ollama", "gemini")
MODES = ("auto", "body", "sse", *PRESETS)
FORMATS = ("sse", "ndjson", "json")
DEFAULT_MAX_EVENT = 1024 * 1024
_KEYS = ("format", "fields", "join", "max_event", "preset")


@dataclass(frozen=True, slots=True)
class TextSpec:
    """How a body is read for its transforms (see the module docstring)."""

    CONFIG_TYPE: ClassVar[str] = "text mode or mapping"

    mode: str  # one of MODES, or "fields"
    format: str | None = None  # for "fields": sse, ndjson or json
    selectors: tuple[Selector, ...] = ()
    join: bool = False
    max_event: int = DEFAULT_MAX_EVENT

    def __str__(self) -> str:
        if self.mode != "fields":
            return self.mode
        return f"{{format: {self.format}, {len(self.selectors)} fields, join: {self.join}}}"


AUTO = TextSpec("auto")
BODY = TextSpec("body")


def parse_text(value: Any, path: str, problems: list[str]) -> TextSpec | None:
    """The spec of a ``text`` value at key ``path``; None (with problems recorded) if invalid."""
    if isinstance(value, TextSpec):
        return value
    if isinstance(value, str):
        if value in MODES:
            return TextSpec(value)
        problems.append(
            f"{path}: unknown text mode {value!r}{suggest(value, MODES)} "
            f"(known: {', '.join(MODES)}, or a mapping {{format, fields, join}})"
        )
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: must be a mode name ({', '.join(MODES)}) or a mapping")
        return None
    before = len(problems)
    for key in value:
        if key not in _KEYS:
            problems.append(f"{path}.{key}: unknown key{suggest(str(key), _KEYS)}")
    max_event = DEFAULT_MAX_EVENT
    if "max_event" in value:
        try:
            if isinstance(value["max_event"], bool):
                raise ValueError("a size is not a boolean")
            max_event = parse_size(value["max_event"])
            if max_event < 64:
                raise ValueError("must be at least 64 bytes")
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}.max_event: {exc}")
    preset = value.get("preset")
    fmt = value.get("format")
    if preset is not None:
        if preset not in PRESETS:
            problems.append(
                f"{path}.preset: unknown preset {preset!r}{suggest(str(preset), PRESETS)} "
                f"(known: {', '.join(PRESETS)})"
            )
        for key in ("format", "fields", "join"):
            if key in value:
                problems.append(f"{path}.{key}: a preset knows its own {key}; drop one of them")
        return None if len(problems) > before else TextSpec(preset, max_event=max_event)
    if fmt is None:
        problems.append(f"{path}.format: required key is missing (one of {', '.join(FORMATS)})")
        return None
    if fmt not in FORMATS:
        problems.append(
            f"{path}.format: unknown format {fmt!r}{suggest(str(fmt), FORMATS)} "
            f"(known: {', '.join(FORMATS)})"
        )
        return None
    join = value.get("join", False)
    if not isinstance(join, bool):
        problems.append(f"{path}.join: must be true or false")
    elif join and fmt == "json":
        problems.append(
            f"{path}.join: a JSON document has no successive values to join "
            "(join is for format sse or ndjson)"
        )
    fields = value.get("fields")
    selectors: list[Selector] = []
    if fields is None:
        if fmt != "sse":
            problems.append(f"{path}.fields: required key is missing for format {fmt}")
        elif join:
            problems.append(f"{path}.join: join needs fields to join")
    elif not isinstance(fields, list) or not fields:
        problems.append(f"{path}.fields: must be a non-empty list of selectors")
    else:
        for i, field in enumerate(fields):
            try:
                selectors.append(parse_selector(field))
            except ValueError as exc:
                problems.append(f"{path}.fields[{i}]: {exc}")
    if len(problems) > before:
        return None
    if fields is None:
        return TextSpec("sse", max_event=max_event)
    return TextSpec("fields", fmt, tuple(selectors), bool(join), max_event)
