"""Content-Type parsing and matching: which bodies a transform applies to, and their charset."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_CONTENT_TYPES",
    "ContentTypeMatcher",
    "charset_of",
    "parse_content_type",
]

DEFAULT_CONTENT_TYPES = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/xml",
    "application/javascript",
)

_TCHAR = r"[!#$%&'*+.^_`|~0-9a-z-]"  # RFC 9110 token characters, lower case
_MEDIA_TYPE = re.compile(rf"{_TCHAR}+/{_TCHAR}+")
_PARAM = re.compile(r';\s*([^\s;=]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``'Text/HTML; Charset="UTF-8"'`` -> ``('text/html', {'charset': 'utf-8'})``.

    Parameter names are lower-cased, quoted values unquoted, the charset value lower-cased; the
    first of repeated parameters wins. A missing or malformed media type gives ``('', {})``.
    """
    if not value:
        return "", {}
    media_type, _, rest = value.partition(";")
    media_type = media_type.strip().lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        return "", {}
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        name, quoted, token = match.groups()
        name = name.lower()
        raw = token.strip() if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
        params.setdefault(name, raw.lower() if name == "charset" else raw)
    return media_type, params


class ContentTypeMatcher:
    """Matches media types against globs such as ``text/*`` or ``application/*+json``.

    ``*`` matches any run of characters within the type or the subtype; matching ignores case
    and any parameters. Results are cached per media type (the cache is bounded, as media types
    come from upstream responses).
    """

    _CACHE_SIZE = 256

    def __init__(self, globs: Iterable[str] = DEFAULT_CONTENT_TYPES) -> None:
        if isinstance(globs, str):
            raise TypeError("globs must be a list of patterns, not a single string")
        self.globs = tuple(_validate_glob(glob) for glob in globs)
        alternatives = "|".join(re.escape(glob).replace(r"\*", "[^/]*") for glob in self.globs)
        self._regex = re.compile(f"(?:{alternatives})" if self.globs else "(?!)")
        self._cache: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"ContentTypeMatcher({list(self.globs)!r})"

    def matches(self, media_type: str) -> bool:
        cached = self._cache.get(media_type)
        if cached is not None:
            return cached
        bare = media_type.partition(";")[0].strip().lower()
        result = bool(bare) and self._regex.fullmatch(bare) is not None
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[media_type] = result
        return result


def _validate_glob(glob: str) -> str:
    if not isinstance(glob, str):
        raise TypeError(f"content type pattern must be a string, got {type(glob).__name__}")
    normalized = glob.strip().lower()
    if not _MEDIA_TYPE.fullmatch(normalized):
        raise ValueError(
            f"invalid content type pattern {glob!r}: expected 'type/subtype' where either part "
            "may use '*' wildcards, e.g. 'text/*' or 'application/*+json'"
        )
    return normalized


# Labels Python knows that are no charset a browser would use to decode a body.
_NOT_CHARSETS = frozenset(
    {"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode", "utf-7", "charmap"}
)


@functools.lru_cache(maxsize=256)
def _text_codec(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    if name in _NOT_CHARSETS:
        return None
    try:
        b"x".decode(name, "ignore")  # LookupError for bytes-to-bytes codecs (base64, zlib, ...)
    except LookupError:
        return None
    # us-ascii is read as ISO-8859-1, its superset that maps every byte, so that mislabelled
    # bytes above 0x7F survive a decode/encode round trip instead of failing it.
    return "iso8859-1" if name == "ascii" else name


def charset_of(params: Mapping[str, str], default: str = "utf-8") -> str:
    """The Python codec name for the ``charset`` parameter, or ``default`` (also normalized)
    when it is missing or names no text encoding Python knows."""
    label = params.get("charset", "").strip()
    name = _text_codec(label) if label else None
    return name or codecs.lookup(default).name


def codec_for(charset: str | None, default: str = "utf-8") -> str:
    """The Python codec for a charset name, falling back to ``default`` like :func:`charset_of`."""
    return charset_of({"charset": charset or ""}, default)
