r"""The built-in ``redact`` transform: regex redaction of a streamed text body.

Reference result (:func:`redact_reference`): decode the whole body with its charset
(``errors='surrogateescape'``, so undecodable bytes survive), apply
``re.sub(pattern, replacement, text)`` for each pattern in order, encode back the same way. The
stream produces exactly that, byte for byte, however the body is split, as long as deciding a
match needs at most ``max_match`` characters of held-back text.

Each pattern is a *stage* fed with decoded text; stage ``k + 1`` reads stage ``k``'s output. A
stage keeps a buffer: some already consumed text (context, so that ``^``, ``\b`` and
lookbehinds see what they would see in the whole text: searches start at ``pos=``) followed by
the held, undecided text.

When is a match final?
----------------------
``re`` finds matches by trying paths in a fixed order and taking the first that succeeds. A
result found in the text available so far may change once more text arrives only if some path
tried before the successful one (or that one itself) needed to read past the end of the available
text: a greedy ``a+`` asking for one more ``a``, ``abcd`` in ``abcd|ab`` running into the end,
``$``, ``\b`` or a lookahead looking at the next character.

To know where that happens, each pattern is compiled a second time (still with ``re``, so with
exactly the same character classes and the same order of paths) with a sentinel character Σ (one
that does not occur in the text) appended to the text:

* every character test ``C`` becomes ``(?:C|Σ|(?<=Σ))``: reading past the end consumes Σ, and
  past Σ everything matches without consuming;
* ``$``, ``\Z``, ``\b``, ``\B`` consume Σ when their answer depends on the next character;
  a lookahead whose first successful path went past the end makes the whole path go past the
  end (a named marker group records it); a backreference may end up past the end when the text
  ends within the group's width; a lookbehind with an end assertion in it, near the end.

A match of this rewritten pattern is the first path, in ``re``'s order, that either succeeds
within the text or reaches past its end. If it ends within the text, it is exactly the match ``re``
finds on the whole body: final. If it ends past the end, its start is the *frontier*: the text
before it can never be part of a match and is released at once; the rest is held. Matches and
their groups are taken from ``re`` itself in lock-step (and checked against the rewritten
pattern's). ``re.sub``'s rules for empty matches are kept by restarting ``finditer`` where an
empty match was committed and skipping that match.

Speed: the rewritten form blocks ``re``'s fast literal search, so the pattern searched over the
whole chunk keeps its leading part unchanged (the longest prefix that looks at most 64 characters
ahead, e.g. ``password=``) and its next node too if it is a repeated single character test
(``\S+``), with Σ added to the class; only positions within that many characters of the end are
then checked with the fully rewritten pattern. The common path (no match near the end of the
chunk) is one ``re`` search over the chunk and one over its last few characters. That search is
replaced by a Hyperscan scan for where the leading part may match
(:mod:`plugins.redact.prefilter`), and ``re`` only matches there: patterns without a literal
prefix (``\b\d{4}-…``, ``(?i)token=``) no longer make ``re`` try every position.

Dense matches: a Python step per match (or per prefilter candidate) costs more than ``re`` itself
once matches come more often than one per ``SPARSE_CHARS`` characters (:mod:`.stream`). Then a
long stretch of decided text is replaced with one ``re.subn`` (:meth:`_Stage._bulk`: where it
may end and start so that ``re.sub`` on the stretch alone gives what it gives in the whole
text), with the pattern compiled ``re.ASCII`` when the stretch is ASCII and that changes
nothing (:func:`_ascii_form`); the stream goes back to the prefilter when matches thin out.

Long pieces of UTF-8 (more than ``LEAD_CHARS`` characters; short ones, the tokens of a stream,
get the lead check instead): a body that is valid UTF-8 (a character cut between two pieces
waits for the next) goes through the stages as bytes where it can. A stage whose prefilter
finds no start in its held text and the new piece passes the bytes on and decodes only its
last ``reach`` characters (with the context before them) for the patterns to decide; an ASCII
literal replaces on the bytes as a chain of literals does (:mod:`plugins.redact.literal`); only
a stage that must match reads the text, and its output's bytes are the input's when it
replaced nothing. One non-ASCII character makes a chunk's ``str`` four bytes a character:
the stages that match nothing in it no longer encode, copy and search it each.

Fail closed: when the held text of a stage grows beyond ``max_match`` characters it is replaced
by the replacement (group references expanded as empty), counted as a redaction, and the stage
goes into *overflow*: it keeps the first ``max_match`` characters of the runaway match plus the
most recent text and swallows what follows for as long as that match may still be going on (the
rest of a 10 KiB ``password=\S+`` token, of an unterminated string...); scanning resumes where
``re`` ends it. Held text never leaks. Patterns whose decision needs a long look-ahead even for a
short match (``a.*z|a`` must know whether a ``z`` follows) are also subject to this rule.

Unsupported (rejected at load): a lookahead inside a lookbehind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from plugins.redact.options import Options, parse_size, redact_reference
from plugins.redact.rewrite import _compile_spec
from plugins.redact.stream import RedactStream
from proxy.transform_api import drive

__all__ = ["Options", "Redact", "RedactStream", "parse_size", "redact_reference"]


class Redact:
    """Factory of the ``redact`` transform."""

    Options = Options

    def __init__(self, **options: Any) -> None:
        self.options = Options(**options)  # a pydantic ValidationError is a ValueError
        self._specs = [_compile_spec(p) for p in self.options.patterns]

    def open(self, ctx: Any = None) -> RedactStream:
        """A stream for one body (``ctx`` gives the charset and receives the counters)."""
        return RedactStream(self._specs, self.options, ctx)

    def __call__(self, chunks: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        return drive(self.open(ctx), chunks)
