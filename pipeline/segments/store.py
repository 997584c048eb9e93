"""The segment store: sealed, zstd-compressed Parquet files with a manifest each.

Layout: ``<root>/<signal>/<YYYY-MM-DD>/<HH>/<segment_id>.parquet`` plus
``<segment_id>.manifest.json`` beside it (the ``segments.sealed`` schema), partitioned by signal
and by the event time the segment starts at. The root is a local directory or any pyarrow
filesystem URI (``s3://bucket/prefix``, ``gs://...``).

Durability and exactly-once effect:
- the data file is written to a temporary name, fsynced, renamed; then the manifest the same way.
  A segment exists once its manifest exists; data files without a manifest are leftovers of a
  crash and are removed by ``recover()``;
- every manifest names the source topic, partition and offset range it holds, and the broker
  epoch the offsets belong to, so ``durable_offsets()`` tells a restarted worker where to resume,
  and ``write()`` refuses (skips) a range that is already stored. Offsets mean something only
  within one epoch (one life of the broker's storage: a broker that lost its records numbers
  new ones from 0 again), so ranges of different epochs never cover each other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import posixpath
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from schemas.segments import ARROW_SCHEMA_VERSION

MANIFEST_SUFFIX = ".manifest.json"
DATA_SUFFIX = ".parquet"


@dataclass(frozen=True)
class WriteOptions:
    """Per-signal Parquet layout: which columns skip the dictionary, per-column encodings.

    Rows arrive sorted by their builder (spans by trace, metric points by series and time), so
    delta encodings see small steps; random ids (span ids) gain nothing from a dictionary and
    only pay its index, so they are stored plain. ``compression_level`` overrides the store's.
    """

    no_dictionary: tuple[str, ...] = ()
    column_encoding: tuple[tuple[str, str], ...] = ()
    compression_level: int | None = None


WRITE_OPTIONS: dict[str, WriteOptions] = {
    # log parameters are mostly distinct values: a dictionary costs more than it saves
    "logs": WriteOptions(
        no_dictionary=("params", "time_unix_nano"),
        column_encoding=(("time_unix_nano", "DELTA_BINARY_PACKED"),),
    ),
    "spans": WriteOptions(
        no_dictionary=("span_id", "parent_span_id", "start_unix_nano", "duration_ns"),
        column_encoding=(
            ("span_id", "PLAIN"),
            ("parent_span_id", "PLAIN"),
            ("start_unix_nano", "DELTA_BINARY_PACKED"),
            ("duration_ns", "DELTA_BINARY_PACKED"),
        ),
    ),
    "metrics": WriteOptions(
        no_dictionary=("time_unix_nano", "value", "sum"),
        column_encoding=(
            ("time_unix_nano", "DELTA_BINARY_PACKED"),
            ("value", "BYTE_STREAM_SPLIT"),
            ("sum", "BYTE_STREAM_SPLIT"),
        ),
    ),
}


@dataclass(frozen=True)
class SourceRange:
    """The Kafka records a segment holds: one partition, inclusive offsets, in one broker epoch
    (``pipeline.kafka.broker_epoch``; empty for a broker that names no cluster)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: str = ""

    def same_log(self, other: SourceRange) -> bool:
        """Whether both ranges count offsets of the same partition log."""
        return (self.topic, self.partition, self.epoch) == (
            other.topic,
            other.partition,
            other.epoch,
        )


@dataclass(frozen=True)
class Manifest:
    segment_id: str
    signal: str
    path: str
    start_unix_nano: int
    end_unix_nano: int
    services: tuple[str, ...]
    rows: int
    bytes: int
    source: SourceRange
    arrow_schema_version: int
    sealed_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "segment_id": self.segment_id,
            "signal": self.signal,
            "uri": self.path,
            "time_range": {
                "start_unix_nano": self.start_unix_nano,
                "end_unix_nano": self.end_unix_nano,
            },
            "services": list(self.services),
            "rows": self.rows,
            "bytes": self.bytes,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "first_offset": self.source.first_offset,
                "last_offset": self.source.last_offset,
                **({"epoch": self.source.epoch} if self.source.epoch else {}),
            },
            "arrow_schema_version": self.arrow_schema_version,
            "sealed_at": self.sealed_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        schemas.validate("segments.sealed.schema.json", doc)
        src = doc["source"]
        return cls(
            segment_id=doc["segment_id"],
            signal=doc["signal"],
            path=doc["uri"],
            start_unix_nano=doc["time_range"]["start_unix_nano"],
            end_unix_nano=doc["time_range"]["end_unix_nano"],
            services=tuple(doc.get("services", ())),
            rows=doc["rows"],
            bytes=doc["bytes"],
            source=SourceRange(
                src["topic"],
                src["partition"],
                src["first_offset"],
                src["last_offset"],
                src.get("epoch", ""),
            ),
            arrow_schema_version=doc["arrow_schema_version"],
            sealed_at=doc.get("sealed_at", ""),
        )

    def overlaps(self, start_unix_nano: int | None, end_unix_nano: int | None) -> bool:
        if start_unix_nano is not None and self.end_unix_nano < start_unix_nano:
            return False
        return not (end_unix_nano is not None and self.start_unix_nano > end_unix_nano)


RECENT_DIR_S = 2.0
"""A directory modified this recently may still gain a file within the same mtime tick."""


@dataclass(frozen=True)
class _DirListing:
    """One listed directory: its mtime then, its subdirectories and its manifests by path."""

    mtime_ns: int
    subdirs: tuple[str, ...]
    manifests: dict[str, Manifest]


class SegmentStore:
    """Sealed segments under one root; local directory or pyarrow filesystem URI."""

    def __init__(self, root: str | os.PathLike[str], compression_level: int = 9) -> None:
        root_s = os.fspath(root)
        if "://" in root_s:
            fs, path = pafs.FileSystem.from_uri(root_s)
            self.local = False
        else:
            os.makedirs(root_s, exist_ok=True)
            fs, path = pafs.LocalFileSystem(), os.path.abspath(root_s)
            self.local = True
        self.fs: pafs.FileSystem = fs
        self.root = path
        self.compression_level = compression_level
        self._manifests: dict[str, Manifest] | None = None
        self._dirs: dict[str, _DirListing] = {}
        self._refresh_lock = threading.Lock()

    # ----------------------------------------------------------------- writing
    def write(
        self,
        signal: str,
        table: pa.Table,
        source: SourceRange,
        *,
        time_column: str,
        service_column: str | None = "service",
        now: dt.datetime,
    ) -> Manifest | None:
        """Seal ``table`` as one segment. Returns None if the range is already stored."""
        if self.covers(signal, source):
            return None
        times = table.column(time_column)
        start = int(pc.min(times).as_py() or 0) if table.num_rows else 0
        end = int(pc.max(times).as_py() or 0) if table.num_rows else 0
        services: tuple[str, ...] = ()
        if service_column and table.num_rows:
            col = table.column(service_column)
            if pa.types.is_dictionary(col.type):
                col = col.cast(pa.string())
            services = tuple(sorted(v for v in pc.unique(col).to_pylist() if v is not None))
        epoch = f"-e{_safe(source.epoch)}" if source.epoch else ""
        segment_id = f"{signal}-{_safe(source.topic)}-p{source.partition}{epoch}-{source.first_offset:020d}-{source.last_offset:020d}"
        when = dt.datetime.fromtimestamp(start / 1e9, tz=dt.UTC)
        folder = posixpath.join(signal, when.strftime("%Y-%m-%d"), when.strftime("%H"))
        rel = posixpath.join(folder, segment_id + DATA_SUFFIX)
        self.fs.create_dir(posixpath.join(self.root, folder), recursive=True)
        size = self._write_atomic_parquet(rel, table, WRITE_OPTIONS.get(signal, WriteOptions()))
        manifest = Manifest(
            segment_id=segment_id,
            signal=signal,
            path=rel,
            start_unix_nano=start,
            end_unix_nano=end,
            services=services,
            rows=table.num_rows,
            bytes=size,
            source=source,
            arrow_schema_version=ARROW_SCHEMA_VERSION,
            sealed_at=now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        )
        self._write_atomic_bytes(
            posixpath.join(folder, segment_id + MANIFEST_SUFFIX), orjson.dumps(manifest.to_json())
        )
        if self._manifests is not None:
            self._manifests[segment_id] = manifest
        return manifest

    def _write_atomic_parquet(self, rel: str, table: pa.Table, options: WriteOptions) -> int:
        final = posixpath.join(self.root, rel)
        tmp = final + ".tmp"
        names = set(table.column_names)
        plain = set(options.no_dictionary)
        encodings = {c: e for c, e in options.column_encoding if c in names}
        level = options.compression_level
        with self.fs.open_output_stream(tmp) as sink:
            pq.write_table(
                table,
                sink,
                compression="zstd",
                compression_level=self.compression_level if level is None else level,
                use_dictionary=[c for c in table.column_names if c not in plain] if plain else True,
                column_encoding=encodings or None,
                write_statistics=True,
                row_group_size=256 * 1024,
            )
        self._fsync(tmp)
        self.fs.move(tmp, final)
        self._fsync_dir(posixpath.dirname(final))
        info = self.fs.get_file_info(final)
        return int(info.size or 0)

    def _write_atomic_bytes(self, rel: str, data: bytes) -> None:
        final = posixpath.join(self.root, rel)
        tmp = final + ".tmp"
        with self.fs.open_output_stream(tmp) as sink:
            sink.write(data)
        self._fsync(tmp)
        self.fs.move(tmp, final)
        self._fsync_dir(posixpath.dirname(final))

    def _fsync(self, path: str) -> None:
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _fsync_dir(self, path: str) -> None:
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def state_dir(self) -> Path:
        """Local directory for small state files kept beside the segments (miners, checkpoints)."""
        if not self.local:
            raise NotImplementedError("state files need a local segment root for now")
        return Path(self.root) / "_state"

    # ----------------------------------------------------------------- reading
    def manifests(self, signal: str | None = None) -> list[Manifest]:
        if self._manifests is None:
            self.refresh()
        assert self._manifests is not None
        found = [m for m in self._manifests.values() if signal is None or m.signal == signal]
        return sorted(found, key=lambda m: (m.signal, m.start_unix_nano, m.segment_id))

    def refresh(self) -> None:
        """Pick up segments other processes sealed and forget removed ones; only manifests not
        seen before are read and validated."""
        known = {self._manifest_file(m): m for m in (self._manifests or {}).values()}
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        current: dict[str, Manifest] = {}
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path.endswith(MANIFEST_SUFFIX):
                manifest = known.get(info.path)
                if manifest is None:
                    with self.fs.open_input_stream(info.path) as f:
                        manifest = Manifest.from_json(orjson.loads(f.read()))
                current[manifest.segment_id] = manifest
        self._manifests = current

    def refresh_changed(self) -> None:
        """``refresh`` for a reader asking often (the query API): one ``stat`` per directory,
        and only directories whose mtime moved are listed again, so the cost grows with the
        number of hour folders, not of segments. A directory modified within the last
        ``RECENT_DIR_S`` is listed every time: a file can land within one tick of the mtime
        clock after the directory was listed. Only manifests not seen before are read.

        Safe beside readers on other threads: the manifest map is replaced, never changed in
        place, and refreshes take turns."""
        if not self.local:
            self.refresh()
            return
        with self._refresh_lock:
            if self._manifests is None:
                self._dirs = {}
            added: list[Manifest] = []
            removed: list[Manifest] = []
            now_ns = time.time_ns()
            recent_ns = int(RECENT_DIR_S * 1e9)
            seen: set[str] = set()
            stack = [self.root]
            while stack:
                folder = stack.pop()
                try:
                    mtime_ns = os.stat(folder).st_mtime_ns
                except FileNotFoundError:
                    continue
                seen.add(folder)
                known = self._dirs.get(folder)
                if known is None or known.mtime_ns != mtime_ns or now_ns - mtime_ns < recent_ns:
                    known = self._list_dir(folder, mtime_ns, known, added, removed)
                stack.extend(known.subdirs)
            for folder in [d for d in self._dirs if d not in seen]:
                removed.extend(self._dirs.pop(folder).manifests.values())
            if self._manifests is not None and not added and not removed:
                return
            current = dict(self._manifests or {})
            for manifest in removed:
                current.pop(manifest.segment_id, None)
            for manifest in added:
                current[manifest.segment_id] = manifest
            self._manifests = current

    def _list_dir(
        self,
        folder: str,
        mtime_ns: int,
        known: _DirListing | None,
        added: list[Manifest],
        removed: list[Manifest],
    ) -> _DirListing:
        before = known.manifests if known is not None else {}
        subdirs: list[str] = []
        manifests: dict[str, Manifest] = {}
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif entry.name.endswith(MANIFEST_SUFFIX):
                manifest = before.get(entry.path)
                if manifest is None:
                    try:
                        with open(entry.path, "rb") as f:
                            manifest = Manifest.from_json(orjson.loads(f.read()))
                    except FileNotFoundError:  # removed by retention since the listing
                        continue
                    added.append(manifest)
                manifests[entry.path] = manifest
        removed.extend(m for path, m in before.items() if path not in manifests)
        listing = _DirListing(mtime_ns, tuple(subdirs), manifests)
        self._dirs[folder] = listing
        return listing

    def _manifest_file(self, m: Manifest) -> str:
        return posixpath.join(self.root, m.path[: -len(DATA_SUFFIX)] + MANIFEST_SUFFIX)

    def select(
        self,
        signal: str,
        *,
        start_unix_nano: int | None = None,
        end_unix_nano: int | None = None,
        services: Iterable[str] | None = None,
    ) -> list[Manifest]:
        """Manifest pruning: segments of a signal overlapping a time range and services."""
        wanted = set(services) if services is not None else None
        return [
            m
            for m in self.manifests(signal)
            if m.overlaps(start_unix_nano, end_unix_nano)
            and (wanted is None or wanted & set(m.services))
        ]

    def uri(self, manifest: Manifest) -> str:
        return posixpath.join(self.root, manifest.path)

    def read(self, manifest: Manifest) -> pa.Table:
        return pq.read_table(self.uri(manifest), filesystem=self.fs)

    def durable_offsets(self, signal: str, topic: str, epoch: str = "") -> dict[int, int]:
        """Per partition, the last offset of ``topic`` in broker ``epoch`` stored as ``signal``
        (resume after it)."""
        out: dict[int, int] = {}
        for m in self.manifests(signal):
            if m.source.topic == topic and m.source.epoch == epoch:
                out[m.source.partition] = max(out.get(m.source.partition, -1), m.source.last_offset)
        return out

    def covers(self, signal: str, source: SourceRange) -> bool:
        """True if every offset of ``source`` is already in stored ``signal`` segments."""
        return any(
            m.source.same_log(source)
            and m.source.first_offset <= source.first_offset
            and m.source.last_offset >= source.last_offset
            for m in self.manifests(signal)
        )

    # ------------------------------------------------------------ maintenance
    def recover(self) -> int:
        """Remove temporary files and data files without a manifest (crash leftovers)."""
        removed = 0
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        infos = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        manifests = {
            i.path[: -len(MANIFEST_SUFFIX)] for i in infos if i.path.endswith(MANIFEST_SUFFIX)
        }
        for info in infos:
            orphan = (
                info.path.endswith(DATA_SUFFIX) and info.path[: -len(DATA_SUFFIX)] not in manifests
            )
            if info.path.endswith(".tmp") or orphan:
                self.fs.delete_file(info.path)
                removed += 1
        self._manifests = None
        return removed

    def apply_retention(
        self,
        *,
        now_unix_nano: int,
        max_age_s: float | None = None,
        max_total_bytes: int | None = None,
    ) -> list[str]:
        """Delete the oldest segments beyond an age or a total size; return their ids.

        Manifests go first, so a crash in the middle leaves an orphan data file, never a manifest
        pointing at nothing.
        """
        ordered = sorted(self.manifests(), key=lambda m: (m.end_unix_nano, m.segment_id))
        doomed: list[Manifest] = []
        if max_age_s is not None:
            horizon = now_unix_nano - int(max_age_s * 1e9)
            doomed.extend(m for m in ordered if m.end_unix_nano < horizon)
        if max_total_bytes is not None:
            kept = [m for m in ordered if m not in doomed]
            total = sum(m.bytes for m in kept)
            for m in kept:
                if total <= max_total_bytes:
                    break
                doomed.append(m)
                total -= m.bytes
        for m in doomed:
            data = self.uri(m)
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(data[: -len(DATA_SUFFIX)] + MANIFEST_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(data)
            if self._manifests is not None:
                self._manifests.pop(m.segment_id, None)
        return [m.segment_id for m in doomed]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
