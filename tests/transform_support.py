"""What the transform tests share: a context, and the ways of cutting a body into chunks."""

from __future__ import annotations

from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.transform_api import TransformContext


def make_ctx(charset: str = "utf-8", *, route: str = "r", upstream: str = "u") -> TransformContext:
    return TransformContext(
        route=route,
        upstream=upstream,
        request_id="id",
        direction="response",
        headers=CIMultiDictProxy(CIMultiDict()),
        charset=charset,
    )


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    chunks, prev = [], 0
    for cut in sorted(cuts):
        chunks.append(body[prev:cut])
        prev = cut
    chunks.append(body[prev:])
    return chunks


@st.composite
def chunkings(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """Whole, byte by byte (with empty chunks), or random cuts (repeated cuts: empty chunks)."""
    kind = draw(st.sampled_from(["whole", "bytes", "random", "random", "random"]))
    if kind == "whole":
        return [body]
    if kind == "bytes":
        return [x for i in range(len(body)) for x in (body[i : i + 1], b"")]
    return split(body, draw(st.lists(st.integers(0, len(body)), max_size=24)))
