"""A replay bundle K times the size: every resource beside K-1 renamed copies of itself.

Each copy of a span, metric or log export names its resource's attributes with a suffix
(``cartservice`` -> ``cartservice~1``, its pods and hosts alike) and changes the first byte of
every trace and span id, so each copy is a system of its own: as many services again, each
serving the same RPC methods as the original's (two versions side by side, a copy per tenant).
Alerts and labels are the original's. The copies replay the faults at the same instants, so
they take the ranks after the original's cause and split its probability.

Replay the output as any bundle (README, Evaluation) to measure the live path at K times the
data, and how causes are named when several services serve one method:

    .venv/bin/python benchmarks/scale_bundle.py ../shared/data/nezha-ob OUT --copies 3
    .venv/bin/worldline evaluate bundle OUT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.evaluate.bundle import (  # noqa: E402
    HEADER,
    MAGIC,
    OTLP_EXPORTS,
    TOPIC_CODES,
    read_manifest,
    read_stream,
)


def _changed(ident: bytes, copy: int) -> bytes:
    return bytes([ident[0] ^ copy]) + ident[1:] if ident else ident


def copied(topic: str, value: bytes, copy: int) -> bytes:
    """The export with its resources renamed ``~copy`` and its trace and span ids changed."""
    message, field = OTLP_EXPORTS[topic]
    request = message()
    request.ParseFromString(value)
    for block in getattr(request, field):
        for kv in block.resource.attributes:
            if kv.value.HasField("string_value"):
                kv.value.string_value += f"~{copy}"
        if topic == "otlp_spans":
            for scope in block.scope_spans:
                for span in scope.spans:
                    span.trace_id = _changed(span.trace_id, copy)
                    span.span_id = _changed(span.span_id, copy)
                    span.parent_span_id = _changed(span.parent_span_id, copy)
        elif topic == "otlp_logs":
            for scope in block.scope_logs:
                for record in scope.log_records:
                    record.trace_id = _changed(record.trace_id, copy)
                    record.span_id = _changed(record.span_id, copy)
    return bytes(request.SerializeToString())


def scale(source: Path, out: Path, copies: int) -> dict[str, int]:
    """Write the scaled bundle; returns the records read and written."""
    manifest = read_manifest(source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream").mkdir(exist_ok=True)
    part = out / "stream" / "000000.rec.zst"
    read = written = 0
    first_ms = last_ms = None
    content = hashlib.sha256()
    with part.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as sink:
        sink.write(MAGIC)
        for record in read_stream(source, manifest):
            read += 1
            values = [record.value]
            if record.topic in OTLP_EXPORTS:
                values += [copied(record.topic, record.value, k) for k in range(1, copies)]
            for value in values:
                frame = HEADER.pack(
                    TOPIC_CODES.index(record.topic), record.timestamp_ms, -1, len(value)
                )
                sink.write(frame + value)
                content.update(frame + value)
                written += 1
            first_ms = record.timestamp_ms if first_ms is None else first_ms
            last_ms = record.timestamp_ms
    for name in ("alerts.jsonl", "labels.jsonl"):
        shutil.copy(source / name, out / name)
    scaled = dict(manifest)
    scaled["parts"] = [
        {
            "file": "stream/000000.rec.zst",
            "records": written,
            "first_ts_ms": first_ms,
            "last_ts_ms": last_ms,
        }
    ]
    scaled["content_sha256"] = content.hexdigest()
    scaled["description"] = (
        f"{manifest.get('description', '')} (with {copies - 1} renamed copies of every resource)"
    )
    (out / "manifest.json").write_text(json.dumps(scaled, indent=1) + "\n", encoding="utf-8")
    return {"read": read, "written": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a replay bundle (folder with manifest.json)")
    parser.add_argument("out", type=Path, help="the folder to write the scaled bundle to")
    parser.add_argument(
        "--copies", type=int, default=3, help="K: the original and K-1 copies (default 3)"
    )
    args = parser.parse_args(argv)
    if args.copies < 1:
        parser.error("--copies is at least 1")
    if not (args.bundle / "manifest.json").exists():
        print(f"no replay bundle at {args.bundle}: skipping", file=sys.stderr)
        return 0
    counts = scale(args.bundle, args.out, args.copies)
    print(f"{args.out}: {counts['read']:,} records read, {counts['written']:,} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
