"""Replay bundles: a run's records per topic on disk, with the ground truth kept apart.

Layout of a bundle directory::

    manifest.json            what is in the bundle (written last: its presence means complete)
    labels.json              ground truth (faults, red herrings, topology); never on a topic
    <topic>.records.zst      one file per topic: otlp_spans, otlp_metrics, otlp_logs, alerts,
                             changes; a zstd stream (``<topic>.records`` when written uncompressed,
                             the manifest names the file and its compression)

Decompressed, a records file is a sequence of frames, in event-time order within the file::

    int64  timestamp_ms   big-endian; event time, used as the Kafka record timestamp
    uint32 key_length     big-endian; 0xFFFFFFFF for a null key
    uint32 value_length   big-endian
    bytes  key
    bytes  value          otlp_proto bytes (otlp_* topics) or UTF-8 JSON (alerts, changes)
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import zstandard

from jobs.simulator.simulation import TOPICS, Record

FORMAT = "worldline-replay-bundle"
VERSION = 1
_HEADER = struct.Struct(">qII")
_NULL_KEY = 0xFFFFFFFF
Compression = Literal["zstd", "none"]
_ENCODING = {
    "otlp_spans": "otlp_proto",
    "otlp_metrics": "otlp_proto",
    "otlp_logs": "otlp_proto",
    "alerts": "json",
    "changes": "json",
}


class BundleError(ValueError):
    """A bundle directory is incomplete or a records file is truncated."""


def encode_frame(record: Record) -> bytes:
    key = record.key
    key_len = _NULL_KEY if key is None else len(key)
    return (
        _HEADER.pack(record.timestamp_ms, key_len, len(record.value)) + (key or b"") + record.value
    )


class BundleWriter:
    """Append records topic by topic; ``close`` writes labels and the manifest."""

    def __init__(self, directory: Path, compression: Compression = "zstd") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "manifest.json").unlink(missing_ok=True)
        self.compression = compression
        self.counts: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.sizes: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self._stack = contextlib.ExitStack()
        self._raw: dict[str, IO[bytes]] = {
            t: self._stack.enter_context((self.directory / self.file_name(t)).open("wb"))
            for t in TOPICS
        }
        self._files: dict[str, IO[bytes]] = dict(self._raw)
        if compression == "zstd":
            # one compressor per stream: a compression context cannot be shared
            self._files = {
                t: zstandard.ZstdCompressor(level=3).stream_writer(f, closefd=False)
                for t, f in self._raw.items()
            }

    def file_name(self, topic: str) -> str:
        return f"{topic}.records" + (".zst" if self.compression == "zstd" else "")

    def write(self, record: Record) -> None:
        frame = encode_frame(record)
        self._files[record.topic].write(frame)
        self.counts[record.topic] += 1
        self.sizes[record.topic] += len(record.value)
        if self.first_ms is None or record.timestamp_ms < self.first_ms:
            self.first_ms = record.timestamp_ms
        if self.last_ms is None or record.timestamp_ms > self.last_ms:
            self.last_ms = record.timestamp_ms

    def write_all(self, records: Iterable[Record]) -> None:
        for r in records:
            self.write(r)

    def close(self, labels: dict[str, Any], run: dict[str, Any]) -> None:
        for topic, f in self._files.items():
            if f is not self._raw[topic]:
                f.close()  # ends the zstd frame; the raw file stays open (closefd=False)
            raw = self._raw[topic]
            raw.flush()
            os.fsync(raw.fileno())
        self._stack.close()
        _write_json(self.directory / "labels.json", labels)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "run": run,
            "first_timestamp_ms": self.first_ms,
            "last_timestamp_ms": self.last_ms,
            "topics": {
                t: {
                    "file": self.file_name(t),
                    "compression": self.compression,
                    "records": self.counts[t],
                    "value_bytes": self.sizes[t],
                    "encoding": _ENCODING[t],
                }
                for t in TOPICS
            },
            "labels": "labels.json",
        }
        _write_json(self.directory / "manifest.json", manifest)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise BundleError(f"{directory} is not a complete replay bundle (no manifest.json)")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    return manifest


def read_labels(directory: Path) -> dict[str, Any]:
    labels: dict[str, Any] = json.loads(
        (Path(directory) / "labels.json").read_text(encoding="utf-8")
    )
    return labels


def read_topic(directory: Path, topic: str) -> Iterator[Record]:
    """The records of one topic, in file order."""
    manifest = read_manifest(directory)
    entry = manifest["topics"].get(topic)
    if entry is None:
        raise BundleError(f"topic {topic!r} is not in the bundle")
    with (Path(directory) / entry["file"]).open("rb") as raw:
        compressed = entry.get("compression", "none") == "zstd"
        stream = _ChunkReader(
            _zstd_chunks(raw) if compressed else iter(lambda: raw.read(1 << 20), b"")
        )
        while True:
            header = stream.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise BundleError(f"{entry['file']}: truncated frame header")
            ts, key_len, value_len = _HEADER.unpack(header)
            key = None if key_len == _NULL_KEY else stream.read(key_len)
            value = stream.read(value_len)
            if len(value) < value_len or (key is not None and len(key) < key_len):
                raise BundleError(f"{entry['file']}: truncated frame")
            yield Record(topic, key, value, ts)


def _zstd_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        while chunk := raw.read(1 << 20):
            yield decompressor.decompress(chunk)
    except zstandard.ZstdError as e:
        raise BundleError(f"corrupt compressed records: {e}") from None
    if not decompressor.eof:
        raise BundleError("truncated compressed records (the zstd frame does not end)")


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks: exactly n bytes, fewer only at the end."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""
        self.at = 0

    def read(self, size: int) -> bytes:
        while len(self.buffer) - self.at < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer = self.buffer[self.at :] + chunk
            self.at = 0
        out = self.buffer[self.at : self.at + size]
        self.at += len(out)
        return out


def read_bundle(directory: Path) -> Iterator[Record]:
    """Every record of every topic, merged in event-time order (stable per topic)."""
    streams = [read_topic(directory, t) for t in read_manifest(directory)["topics"]]
    yield from heapq.merge(*streams, key=lambda r: r.timestamp_ms)
