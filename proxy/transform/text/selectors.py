"""Selectors: dotted paths with ``[*]`` or ``[N]`` for array items (``choices[*].delta.content``).

A selector parses into a tuple of steps: a ``str`` is an object key, an ``int`` an array index,
:data:`ANY` every array item. A *concrete path* (where a value really is) has only keys and
indexes; :func:`matches` tells whether a selector picks it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["ANY", "Path", "Selector", "matches", "parse_selector"]

ANY = -1
"""The ``[*]`` step: every item of an array."""

Step = str | int
Selector = tuple[Step, ...]
Path = tuple[Step, ...]

_KEY = r"[^.\[\]\s]+"
_TOKEN = re.compile(rf"(?P<key>{_KEY})|\[(?P<index>\*|\d+)\]|(?P<dot>\.)")


def parse_selector(text: str) -> Selector:
    """``'choices[*].delta.content'`` -> ``('choices', ANY, 'delta', 'content')``.

    Raises ValueError with a reason a config problem can show.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("a selector is a non-empty dotted path such as 'choices[*].delta.content'")
    steps: list[Step] = []
    pos = 0
    want_key = True  # at the start or after a dot a key must follow
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read the selector {text!r} at position {pos}")
        if m.group("key") is not None:
            if not want_key:
                raise ValueError(f"a '.' must separate keys in the selector {text!r}")
            steps.append(m.group("key"))
            want_key = False
        elif m.group("index") is not None:
            if want_key and steps:
                raise ValueError(f"'[' cannot follow a '.' in the selector {text!r}")
            index = m.group("index")
            steps.append(ANY if index == "*" else int(index))
            want_key = False
        else:
            if want_key:
                raise ValueError(f"an empty key in the selector {text!r}")
            want_key = True
        pos = m.end()
    if want_key:
        raise ValueError(f"the selector {text!r} ends with '.'")
    return tuple(steps)


def matches(selector: Selector, path: Sequence[Step]) -> bool:
    """Does ``selector`` pick the value at the concrete ``path``?"""
    if len(selector) != len(path):
        return False
    for want, have in zip(selector, path, strict=True):
        if want == have and type(want) is type(have):
            continue
        if want == ANY and isinstance(have, int):
            continue
        return False
    return True
