"""The transform pipeline: decided at header time, applied chunk by chunk.

:func:`plan_body` settles, before any header goes out, whether a route's transforms apply to a
body (its content type), how it is decoded for them and re-encoded for the receiver, and what
that does to ``Content-Length``, ``Content-Encoding``, ``ETag`` and ``Vary``. :class:`BodyPlan`
then builds the chained body: decode → transform₁ → … → transformₙ → encode. Every generator in
the chain is closed on every exit path by :meth:`BodyPlan.aclose`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from multidict import CIMultiDict

from proxy.errors import UpstreamBodyError
from proxy.transform.codecs import DecodeError, choose_encoding, make_decoder, make_encoder
from proxy.transform.loader import TransformStage
from proxy.transform.media import charset_of, parse_content_type
from proxy.transform.text.engine import text_body
from proxy.transform.text.spec import BODY, TextSpec
from proxy.transform_api import TransformContext

SUPPORTED_CODINGS = ("gzip", "deflate", "br")


class BodyPlan:
    """How one body is transformed: the stages that apply and its decoding and re-encoding."""

    __slots__ = ("_gens", "ctx", "decode", "encode", "stages", "text")

    def __init__(
        self,
        stages: Sequence[TransformStage],
        ctx: TransformContext,
        decode: str | None,
        encode: str | None,
        text: TextSpec = BODY,
    ) -> None:
        self.stages = stages
        self.ctx = ctx
        self.decode = decode
        self.encode = encode
        self.text = text
        self._gens: list[Any] = []

    def chain(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The transformed (and, when planned, re-encoded) body of ``source``."""
        it: AsyncIterator[bytes] = source
        self._gens.append(source)
        if self.decode:
            it = _decoded(it, self.decode)
            self._gens.append(it)
        it = text_body(it, self.stages, self.ctx, self.text, self._gens)
        self._gens.append(it)
        if self.encode:
            it = _encoded(it, self.encode)
            self._gens.append(it)
        return it

    async def aclose(self) -> None:
        """Close every generator of the chain, outermost first; never raises."""
        gens, self._gens = self._gens, []
        for gen in reversed(gens):
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                # A transform failing in its own cleanup changes nothing now.
                with contextlib.suppress(Exception):
                    await aclose()


def plan_body(
    stages: Sequence[TransformStage],
    headers: CIMultiDict[str],
    accept_encoding: str | None,
    ctx: TransformContext,
    text: TextSpec = BODY,
) -> BodyPlan | None:
    """Decide whether ``stages`` apply to a body with ``headers``, and fix the headers for it.

    Returns None (headers untouched) when no stage takes the body's content type. Otherwise the
    headers are edited for the transformed body: no ``Content-Length`` (it streams chunked), a
    ``Content-Encoding`` only when the receiver accepts the original one, a weak ``ETag``, and
    ``Vary: Accept-Encoding`` when the encoding now depends on the receiver.
    """
    if not stages:
        return None
    media, params = parse_content_type(headers.get("Content-Type"))
    applying = [s for s in stages if s.content_types.matches(media)]
    if not applying:
        return None
    coding = headers.get("Content-Encoding", "").strip().lower()
    decode = encode = None
    if coding and coding != "identity":
        make_decoder(coding)  # raises UnsupportedEncoding: the caller fails closed
        decode = coding
        if choose_encoding(accept_encoding, coding):
            encode = coding
        else:
            headers.popall("Content-Encoding", None)
        vary = headers.getall("Vary", ())
        if not any("accept-encoding" in v.lower() or v.strip() == "*" for v in vary):
            headers.add("Vary", "Accept-Encoding")
    headers.popall("Content-Length", None)
    headers.popall("Content-MD5", None)
    headers.popall("Accept-Ranges", None)
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        headers["ETag"] = "W/" + etag
    ctx.content_type = media
    ctx.charset = charset_of(params)
    return BodyPlan(applying, ctx, decode, encode, text)


async def _decoded(source: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    decoder = make_decoder(coding)
    try:
        async for chunk in source:
            for piece in decoder.decode_iter(chunk):
                yield piece
        for piece in decoder.flush_iter():
            yield piece
    except DecodeError as exc:
        raise UpstreamBodyError(f"the {coding} body is corrupt: {exc}") from exc


async def _encoded(source: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    encoder = make_encoder(coding)
    async for chunk in source:
        if chunk:
            data = encoder.encode(chunk)
            if data:
                yield data
    tail = encoder.finish()
    if tail:
        yield tail


def filter_accept_encoding(value: str | None) -> str | None:
    """Accept-Encoding for an upstream whose body a transform must decode: known codings only."""
    if not value:
        return None
    kept = [
        part.strip()
        for part in value.split(",")
        if part.split(";", 1)[0].strip().lower() in (*SUPPORTED_CODINGS, "identity", "x-gzip")
    ]
    return ", ".join(kept) or None
