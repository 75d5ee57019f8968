"""Durations (``250ms``, ``5s``, ``2m``, ``1h`` or seconds) and sizes (``512KiB``, ``100MiB``)."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    None: 1,
}


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``5s``, ``2m``, ``1h`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValueError(f"not a duration: {value!r} (use e.g. 250ms, 5s, 2m, or seconds)")
    except OverflowError:
        raise ValueError(f"a duration too large: {_short(value)}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number: {_short(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``512KiB``, ``100MiB``, ``1GiB``, ``10MB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        number = float(m.group(1)) * _SIZE_UNITS[unit]
        if not math.isfinite(number):
            raise ValueError(f"a size too large: {_short(value)}")
        size = int(number)
    else:
        raise ValueError(f"not a size: {value!r} (use e.g. 512KiB, 100MiB, or bytes)")
    if size < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return size


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
