from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from pipeline import otlp, topics
from pipeline.ingest.spans import spans_table
from pipeline.segments.store import SegmentStore, SourceRange

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def _spans(n_copies: int = 1) -> pa.Table:
    msg = otlp.from_json(schemas.examples("otlp_spans")[0], topics.OTLP_TRACES)
    return spans_table([msg] * n_copies)


def test_spans_decode_promotes_columns_and_keeps_the_rest() -> None:
    table = _spans()
    rows = table.to_pylist()
    assert [r["name"] for r in rows] == ["POST /checkout", "SELECT orders"]
    server, client = rows
    assert server["trace_id"].hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server["parent_span_id"] is None
    assert client["parent_span_id"] == server["span_id"]
    assert server["service"] == "checkout" and server["service_version"] == "1.15.0"
    assert server["host_name"] == "node-3" and server["pod_name"] == "checkout-7d9f-abc12"
    assert server["http_method"] == "POST" and server["http_status_code"] == 200
    assert server["duration_ns"] == 42_000_000
    assert client["db_system"] == "postgresql" and client["db_name"] == "orders"
    assert client["server_address"] == "orders-db"
    assert client["attributes"] is None  # every attribute was promoted


def test_write_read_and_manifest(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    table = _spans(3)
    m = store.write(
        "spans", table, SourceRange("otlp_spans", 2, 10, 12), time_column="start_unix_nano", now=NOW
    )
    assert m is not None
    assert m.rows == 6 and m.services == ("checkout",)
    assert m.start_unix_nano == 1763647380000000000
    assert m.path.startswith("spans/2025-11-20/14/")
    schemas.validate("segments.sealed.schema.json", m.to_json())
    again = SegmentStore(tmp_path)  # a fresh process sees the same segment
    [m2] = again.manifests("spans")
    assert m2 == m
    assert again.read(m2).equals(table.cast(again.read(m2).schema))
    assert again.durable_offsets("spans", "otlp_spans") == {2: 12}


def test_a_stored_range_is_skipped(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    table = _spans()
    assert store.write(
        "spans", table, SourceRange("otlp_spans", 0, 0, 9), time_column="start_unix_nano", now=NOW
    )
    assert (
        store.write(
            "spans",
            table,
            SourceRange("otlp_spans", 0, 3, 9),
            time_column="start_unix_nano",
            now=NOW,
        )
        is None
    )
    assert store.write(
        "spans", table, SourceRange("otlp_spans", 0, 10, 11), time_column="start_unix_nano", now=NOW
    )
    assert len(SegmentStore(tmp_path).manifests()) == 2


def test_ranges_of_different_broker_epochs_never_cover_each_other(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    table = _spans()
    old = store.write(
        "spans", table, SourceRange("otlp_spans", 0, 0, 9), time_column="start_unix_nano", now=NOW
    )
    new = store.write(
        "spans",
        table,
        SourceRange("otlp_spans", 0, 0, 4, epoch="0a1b2c3d4e5f"),
        time_column="start_unix_nano",
        now=NOW,
    )
    assert old is not None and new is not None and old.segment_id != new.segment_id
    assert "-e0a1b2c3d4e5f-" in new.segment_id
    doc = new.to_json()
    schemas.validate("segments.sealed.schema.json", doc)
    assert doc["source"]["epoch"] == "0a1b2c3d4e5f" and "epoch" not in old.to_json()["source"]
    again = SegmentStore(tmp_path)
    assert {m.source.epoch for m in again.manifests("spans")} == {"", "0a1b2c3d4e5f"}
    assert again.durable_offsets("spans", "otlp_spans") == {0: 9}
    assert again.durable_offsets("spans", "otlp_spans", "0a1b2c3d4e5f") == {0: 4}
    assert again.covers("spans", SourceRange("otlp_spans", 0, 2, 4, epoch="0a1b2c3d4e5f"))
    assert not again.covers("spans", SourceRange("otlp_spans", 0, 0, 4, epoch="ffffffffffff"))


def test_recover_removes_crash_leftovers(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    m = store.write(
        "spans",
        _spans(),
        SourceRange("otlp_spans", 0, 0, 0),
        time_column="start_unix_nano",
        now=NOW,
    )
    assert m is not None
    folder = Path(store.uri(m)).parent
    (folder / "spans-x.parquet.tmp").write_bytes(b"half")
    (folder / "spans-orphan.parquet").write_bytes(b"no manifest")
    assert store.recover() == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [Path(m.path).name, m.segment_id + ".manifest.json"]
    )


def test_manifest_pruning_by_time_and_service(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    store.write(
        "spans",
        _spans(),
        SourceRange("otlp_spans", 0, 0, 0),
        time_column="start_unix_nano",
        now=NOW,
    )
    t0 = 1763647380000000000
    assert len(store.select("spans", start_unix_nano=t0 - 10, end_unix_nano=t0 + 10)) == 1
    assert store.select("spans", start_unix_nano=t0 + 10**12) == []
    assert store.select("spans", services=["cart"]) == []
    assert len(store.select("spans", services=["checkout", "cart"])) == 1


@pytest.mark.parametrize(
    ("max_age_s", "max_bytes", "left"), [(60.0, None, 1), (None, 1, 0), (None, 10**9, 3)]
)
def test_retention_by_age_and_size(
    tmp_path: Path, max_age_s: float | None, max_bytes: int | None, left: int
) -> None:
    store = SegmentStore(tmp_path)
    base = _spans()
    for i, shift_s in enumerate([0, 3600, 7200]):
        shifted = base.set_column(
            base.schema.get_field_index("start_unix_nano"),
            "start_unix_nano",
            pa.array(
                [v + shift_s * 10**9 for v in base.column("start_unix_nano").to_pylist()],
                pa.int64(),
            ),
        )
        store.write(
            "spans",
            shifted,
            SourceRange("otlp_spans", 0, i, i),
            time_column="start_unix_nano",
            now=NOW,
        )
    now_ns = 1763647380000000000 + 7200 * 10**9
    store.apply_retention(now_unix_nano=now_ns, max_age_s=max_age_s, max_total_bytes=max_bytes)
    assert len(SegmentStore(tmp_path).manifests()) == left


def test_refresh_sees_other_writers_and_removals(tmp_path: Path) -> None:
    reader = SegmentStore(tmp_path)
    assert reader.manifests() == []
    writer = SegmentStore(tmp_path)
    m = writer.write(
        "spans",
        _spans(),
        SourceRange("otlp_spans", 0, 0, 0),
        time_column="start_unix_nano",
        now=NOW,
    )
    assert m is not None and reader.manifests() == []  # cached until refreshed
    reader.refresh()
    assert reader.manifests() == [m]
    writer.apply_retention(now_unix_nano=m.end_unix_nano + 10**15, max_age_s=1)
    reader.refresh()
    assert reader.manifests() == []


def test_refresh_changed_lists_only_moved_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query API's refresh: new and removed segments are seen; directories whose mtime did
    not move (and is not recent) are only stat'ed, and no manifest is read twice."""
    import os

    from pipeline.segments import store as store_module

    writer = SegmentStore(tmp_path)
    first = writer.write(
        "spans",
        _spans(),
        SourceRange("otlp_spans", 0, 0, 0),
        time_column="start_unix_nano",
        now=NOW,
    )
    assert first is not None

    def age_every_directory() -> None:  # as if written long ago: past the recent window
        for folder, _dirs, _files in os.walk(tmp_path):
            os.utime(folder, ns=(1_000_000_000, 1_000_000_000))

    age_every_directory()
    reader = SegmentStore(tmp_path)
    listed: list[str] = []
    scandir = os.scandir

    def counting_scandir(path: str) -> object:
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr(store_module.os, "scandir", counting_scandir)
    reader.refresh_changed()
    assert reader.manifests() == [first] and len(listed) == 4  # root, spans, day, hour
    listed.clear()
    reader.refresh_changed()
    assert listed == [] and reader.manifests() == [first]

    second = writer.write(
        "spans",
        _spans(),
        SourceRange("otlp_spans", 0, 1, 1),
        time_column="start_unix_nano",
        now=NOW,
    )
    assert second is not None
    reader.refresh_changed()
    assert reader.manifests() == sorted([first, second], key=lambda m: m.segment_id)
    assert listed == [os.path.dirname(writer.uri(second))]  # only the hour folder moved

    age_every_directory()
    writer.apply_retention(now_unix_nano=first.end_unix_nano + 10**15, max_age_s=1)
    reader.refresh_changed()
    assert reader.manifests() == []
