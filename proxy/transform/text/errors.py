"""The one error of structured-text reading: data that is not what the route declared."""

from __future__ import annotations


class TextFormatError(ValueError):
    """The body does not parse as the route's declared text format (or a record is too long).

    Raised mid-stream it aborts the response as a transform error: what failed to parse is never
    sent, so nothing unredacted leaks.
    """
