from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.transform import codecs
from proxy.transform.codecs import (
    DecodeError,
    Decoder,
    UnsupportedEncoding,
    choose_encoding,
    make_decoder,
    make_encoder,
)


def raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return obj.compress(data) + obj.flush()


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": raw_deflate,
    "br": brotli.compress,
}
DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
}
PAYLOAD = b"".join(
    b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(300)
)


def content_coding(kind: str) -> str:
    return "deflate" if kind == "raw-deflate" else kind


def decode_all(decoder: Decoder, chunks: Iterable[bytes]) -> bytes:
    """Decode via the iterator API, checking the size bound on every piece."""
    out = []
    for chunk in chunks:
        for piece in decoder.decode_iter(chunk):
            assert 0 < len(piece) <= decoder.max_chunk
            out.append(piece)
    for piece in decoder.flush_iter():
        assert 0 < len(piece) <= decoder.max_chunk
        out.append(piece)
    return b"".join(out)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


payloads = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=20), st.integers(1, 400)),
)


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate", "br"])
@settings(max_examples=60, deadline=None)
@given(plain=payloads, data=st.data(), max_chunk=st.integers(1, 5000))
def test_decode_round_trip_any_chunking(
    kind: str, plain: bytes, data: st.DataObject, max_chunk: int
) -> None:
    chunks = data.draw(split(COMPRESS[kind](plain)))
    decoder = make_decoder(content_coding(kind), max_chunk=max_chunk)
    assert decode_all(decoder, chunks) == plain


@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate", "br"])
def test_decode_one_byte_at_a_time(kind: str) -> None:
    compressed = COMPRESS[kind](PAYLOAD)
    decoder = make_decoder(content_coding(kind), max_chunk=100)
    chunks = [compressed[i : i + 1] for i in range(len(compressed))]
    assert decode_all(decoder, chunks) == PAYLOAD


@pytest.mark.parametrize("kind", ["gzip", "deflate", "br"])
def test_decode_and_flush_convenience(kind: str) -> None:
    decoder = make_decoder(kind)
    compressed = COMPRESS[kind](PAYLOAD)
    half = len(compressed) // 2
    assert (
        decoder.decode(compressed[:half]) + decoder.decode(compressed[half:]) + (decoder.flush())
        == PAYLOAD
    )


@settings(max_examples=40, deadline=None)
@given(members=st.lists(st.binary(max_size=500), min_size=2, max_size=4), data=st.data())
def test_gzip_concatenated_members(members: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(gzip.compress(m) for m in members)
    chunks = data.draw(split(stream))
    assert decode_all(make_decoder("gzip", max_chunk=64), chunks) == b"".join(members)


def test_x_gzip_and_case_are_accepted() -> None:
    for name in ("x-gzip", " GZIP ", "Br", "DEFLATE"):
        decoder = make_decoder(name)
        assert decode_all(decoder, [COMPRESS[decoder.encoding](b"hi")]) == b"hi"


@pytest.mark.parametrize("kind", ["gzip", "deflate", "br"])
def test_empty_body_decodes_to_nothing(kind: str) -> None:
    decoder = make_decoder(kind)
    assert decode_all(decoder, [b"", b""]) == b""


@pytest.mark.parametrize("name", ["gzip, br", "br,gzip", "identity", "compress", "zstd", "", ","])
def test_unsupported_encodings(name: str) -> None:
    with pytest.raises(UnsupportedEncoding):
        make_decoder(name)
    with pytest.raises(UnsupportedEncoding):
        make_encoder(name)


def test_errors_are_value_errors() -> None:
    assert issubclass(DecodeError, ValueError)
    assert issubclass(UnsupportedEncoding, ValueError)


# --- corrupt and truncated input ----------------------------------------------------------------


def gzip_with_bad_crc() -> bytes:
    stream = bytearray(gzip.compress(PAYLOAD))
    stream[-8] ^= 0xFF
    return bytes(stream)


CORRUPT = [
    ("gzip", b"this is not gzip at all"),
    ("gzip", gzip_with_bad_crc()),
    ("gzip", gzip.compress(PAYLOAD) + b"garbage"),
    ("gzip", gzip.compress(PAYLOAD) + b"\x00\x00"),
    ("deflate", b"\xff\xff\xff\xff not deflate"),
    ("deflate", zlib.compress(PAYLOAD)[:-1] + b"\x00"),  # bad adler32
    ("deflate", zlib.compress(PAYLOAD) + b"x"),
    ("deflate", raw_deflate(PAYLOAD) + b"x"),
    ("br", b"this is not brotli at all, really not"),
    ("br", brotli.compress(PAYLOAD) + b"x"),
]


@pytest.mark.parametrize(("kind", "stream"), CORRUPT)
@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_corrupt_streams_raise(kind: str, stream: bytes, chunk_size: int) -> None:
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    with pytest.raises(DecodeError):
        decode_all(make_decoder(kind), chunks)


def test_data_after_a_finished_deflate_stream_in_a_later_call() -> None:
    decoder = make_decoder("deflate")
    decode_all(decoder, [zlib.compress(b"abc")])
    with pytest.raises(DecodeError):
        list(decoder.decode_iter(b"more"))


@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate", "br"])
def test_every_truncation_raises(kind: str) -> None:
    stream = COMPRESS[kind](b"hello hello hello, truncated world")
    for end in range(1, len(stream)):
        with pytest.raises(DecodeError, match="truncated"):
            decode_all(make_decoder(content_coding(kind)), [stream[:end]])


def test_truncated_second_gzip_member_raises() -> None:
    stream = gzip.compress(b"one") + gzip.compress(b"two")[:5]
    with pytest.raises(DecodeError, match="truncated"):
        decode_all(make_decoder("gzip"), [stream])


# --- decompression bomb guard -------------------------------------------------------------------

GIB = 1 << 30
MIB = 1 << 20


def compressed_zeros(kind: str, total: int) -> Iterator[bytes]:
    """``total`` zero bytes compressed with ``kind``, produced incrementally."""
    zeros = bytes(MIB)
    if kind == "br":
        br = brotli.Compressor(quality=5)
        for _ in range(total // MIB):
            yield br.process(zeros)
        yield br.finish()
        return
    wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[kind]
    obj = zlib.compressobj(1, zlib.DEFLATED, wbits)  # level 1: fast, still ~230:1
    for _ in range(total // MIB):
        yield obj.compress(zeros)
    yield obj.flush()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate", "br"])
def test_bomb_decodes_in_bounded_pieces(kind: str) -> None:
    decoder = make_decoder(content_coding(kind))
    assert decoder.max_chunk == codecs.DEFAULT_MAX_CHUNK
    total = largest = pieces = 0
    for chunk in compressed_zeros(kind, GIB):
        for piece in decoder.decode_iter(chunk):
            largest = max(largest, len(piece))
            total += len(piece)
            pieces += 1
    assert list(decoder.flush_iter()) == []
    assert total == GIB
    assert largest <= codecs.DEFAULT_MAX_CHUNK
    assert pieces >= GIB // codecs.DEFAULT_MAX_CHUNK


@pytest.mark.parametrize("kind", ["gzip", "deflate", "br"])
def test_single_small_chunk_expands_in_pieces(kind: str) -> None:
    compressed = b"".join(compressed_zeros(kind, 8 * MIB))
    assert len(compressed) < 64 * 1024
    pieces = list(make_decoder(kind, max_chunk=64 * 1024).decode_iter(compressed))
    assert sum(map(len, pieces)) == 8 * MIB
    assert max(map(len, pieces)) <= 64 * 1024


@pytest.mark.parametrize("kind", ["gzip", "deflate", "br"])
def test_decode_refuses_output_over_max_output(kind: str) -> None:
    compressed = b"".join(compressed_zeros(kind, 8 * MIB))
    with pytest.raises(DecodeError, match="exceeds"):
        make_decoder(kind, max_output=MIB).decode(compressed)


def test_old_brotli_fallback_slices_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "_BROTLI_OUTPUT_LIMIT", False)
    compressed = brotli.compress(PAYLOAD)
    decoder = make_decoder("br", max_chunk=1000)
    assert decode_all(decoder, [compressed]) == PAYLOAD


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        make_decoder("gzip", max_chunk=0)


# --- encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@settings(max_examples=60, deadline=None)
@given(plain=payloads, data=st.data())
def test_encode_round_trip_and_flush_per_chunk(
    encoding: str, plain: bytes, data: st.DataObject
) -> None:
    chunks = data.draw(split(plain))
    encoder = make_encoder(encoding)
    assert encoder.encoding == encoding
    sent, seen = b"", b""
    for chunk in chunks:
        out = encoder.encode(chunk)
        assert (out == b"") == (chunk == b"")
        sent += out
        seen += chunk
        # A client starting from scratch can already decode everything sent so far.
        assert fresh_partial_decode(encoding, sent) == seen
    sent += encoder.finish()
    assert DECOMPRESS[encoding](sent) == plain
    assert decode_all(make_decoder(encoding), data.draw(split(sent))) == plain


def fresh_partial_decode(encoding: str, stream: bytes) -> bytes:
    if encoding == "br":
        return brotli.Decompressor().process(stream)
    wbits = 31 if encoding == "gzip" else 15
    return zlib.decompressobj(wbits).decompress(stream)


def test_gzip_encoder_writes_a_real_gzip_stream() -> None:
    encoder = make_encoder("x-gzip")
    stream = encoder.encode(b"abc") + encoder.finish()
    assert stream[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(stream) == b"abc"


def test_deflate_encoder_is_zlib_wrapped() -> None:
    encoder = make_encoder("deflate")
    stream = encoder.encode(b"abc") + encoder.finish()
    assert zlib.decompress(stream) == b"abc"  # raises unless there is a zlib header and adler32


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_encoder_empty_and_finish(encoding: str) -> None:
    encoder = make_encoder(encoding)
    assert encoder.encode(b"") == b""
    stream = encoder.finish()
    assert DECOMPRESS[encoding](stream) == b""
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(b"late")


# --- Accept-Encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "offered", "expected"),
    [
        (None, "gzip", False),
        (None, "identity", True),
        ("", "gzip", False),
        ("", "identity", True),
        ("gzip", "gzip", True),
        ("GZIP", "gzip", True),
        ("gzip", "GZip", True),
        ("gzip;q=0", "gzip", False),
        ("gzip; Q=0.000", "gzip", False),
        ("gzip;q=0.001", "gzip", True),
        ("gzip ; q = 0.5", "gzip", True),
        ("gzip;q=1.000", "gzip", True),
        ("*;q=0", "gzip", False),
        ("*;q=0", "identity", False),
        ("*;q=0, identity", "identity", True),
        ("*", "br", True),
        ("*", "identity", True),
        ("*, gzip;q=0", "gzip", False),
        ("gzip;q=0, *", "gzip", False),
        ("*;q=0, gzip", "gzip", True),
        ("br, gzip;q=0.5", "br", True),
        ("br, gzip;q=0.5", "gzip", True),
        ("br, gzip;q=0.5", "deflate", False),
        ("br, gzip;q=0.5", "identity", True),
        ("identity", "gzip", False),
        ("identity;q=0", "identity", False),
        ("x-gzip", "gzip", True),
        ("gzip", "x-gzip", True),
        ("x-gzip;q=0, gzip", "gzip", False),
        ("deflate, gzip", "br", False),
        ("gzip, deflate, br, zstd", "br", True),
        (" , ,gzip,, ", "gzip", True),
        ("gzip;level=1", "gzip", True),
        ("gzip;q=abc", "gzip", False),
        ("gzip;q=", "gzip", False),
        ("gzip;q", "gzip", False),
        ("gzip;q=1.5", "gzip", False),
        ("gzip;q=-1", "gzip", False),
        ("gzip;q=0.12345", "gzip", False),
        ("gzip;q=abc, *", "gzip", False),
        ("gzip;q=abc, br", "br", True),
        ("gz ip, br", "br", True),
        ("gzipx", "gzip", False),
    ],
)
def test_choose_encoding(header: str | None, offered: str, expected: bool) -> None:
    assert choose_encoding(header, offered) is expected


@given(header=st.text(max_size=60), offered=st.sampled_from(["gzip", "br", "identity"]))
def test_choose_encoding_never_raises(header: str, offered: str) -> None:
    assert choose_encoding(header, offered) in (True, False)
