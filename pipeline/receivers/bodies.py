"""Request bodies: media types, content codings and size caps, with no HTTP framework in sight.

Problems are raised as ``Refusal`` (status and reason slug). Decompression never produces
more than the cap: a small gzip or snappy body cannot expand into gigabytes (a "zip bomb").
"""

from __future__ import annotations

import zlib

import cramjam

from pipeline.receivers.refusals import Refusal, too_large

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lower case, parameters dropped."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """Undo a Content-Encoding (identity, gzip, deflate) without producing more than ``limit``.

    Concatenated gzip members are accepted, as gzip readers do. ``deflate`` accepts the zlib
    wrapper HTTP specifies and the raw stream some clients send instead.
    """
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        return _inflate_members(body, zlib.MAX_WBITS | 16, "gzip", limit)
    if coding == "deflate":
        try:
            return _inflate_members(body, zlib.MAX_WBITS, "deflate", limit)
        except Refusal as first:
            if first.reason != "deflate_decode_error":
                raise
            return _inflate_members(body, -zlib.MAX_WBITS, "deflate", limit)
    raise Refusal(
        415, "unsupported_content_encoding", f"Content-Encoding {coding!r} is not supported"
    )


def _inflate_members(body: bytes, wbits: int, name: str, limit: int) -> bytes:
    out = bytearray()
    rest = body
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            out += decoder.decompress(rest, limit + 1 - len(out))
        except zlib.error as e:
            raise Refusal(
                400, f"{name}_decode_error", f"{name} body does not decompress: {e}"
            ) from None
        if len(out) > limit:
            raise too_large(f"{name} body decompresses to more than {limit} bytes")
        if not decoder.eof:
            raise Refusal(400, f"{name}_decode_error", f"{name} body is truncated")
        rest = decoder.unused_data
        if not rest or wbits <= 0 or not rest.strip(b"\x00"):
            return bytes(out)


def snappy_block_length(body: bytes) -> int:
    """The uncompressed length a snappy block announces in its leading varint."""
    length = 0
    for index, byte in enumerate(body[:5]):
        length |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return length
    raise Refusal(400, "snappy_decode_error", "snappy block has no valid length header")


def unsnappy(body: bytes, limit: int) -> bytes:
    """Decompress a snappy *block* (not framed) body, refusing one that announces more than limit."""
    announced = snappy_block_length(body)
    if announced > limit:
        raise too_large(f"snappy body decompresses to {announced} bytes, the limit is {limit}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # cramjam raises its own DecompressionError and ValueError subclasses
        raise Refusal(400, "snappy_decode_error", f"body is not snappy block format: {e}") from None
