"""Benchmark: online log template mining and log compression on Loghub-2k (corrected).

Usage::

    .venv/bin/python benchmarks/bench_log_templates.py [DATA_DIR] [--systems HDFS,BGL] [--repeat 3]

``DATA_DIR`` defaults to ``../shared/data/loghub2k`` next to the repository; when it is absent the
benchmark says so and exits 0.

Accuracy follows the Loghub-2.0 protocol: the miner reads the ``Content`` column of
``<System>_2k.log_structured_corrected.csv`` and each line gets the final template of its group.
Metrics, from their definitions (Loghub-2.0, Jiang et al., ISSTA 2024):

- GA: share of lines whose predicted group is exactly their ground-truth group (same line set).
- FGA: F1 of group precision (correct groups / predicted groups) and recall (/ true groups).
- PA: share of lines whose predicted template text equals the ground-truth template.
- FTA: F1 over templates, a template counting as correct when its group is correct and its text
  equals the ground truth.

Drain's numbers on the same corrected 2k sets come from ``published/`` in the same data folder.
Speed is lines per CPU-second of this process (``time.process_time``), best of ``--repeat`` runs.

The compression section stores each raw ``<System>_2k.log`` (headers included: no per-system
header rules) through the real ingest path: the file becomes one OTLP logs request (a record per
line, the line as body, one receive time), ``pipeline.ingest.logs.LogColumns`` mines it into the
``logs`` and ``log_templates`` tables, ``SegmentStore.write`` seals them as Parquet exactly as the
ingest workers do, and ``MinerStates.save`` persists the template dictionary. Stored bytes are the
two segments plus the miner state; a fresh reader rebuilds every line from them and the result is
compared byte for byte with the raw file. zstd -3 and -19 of the raw file are measured in the same
run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from pipeline.ingest.logs import LogColumns, MinerStates
from pipeline.logs.templates import TemplateMiner
from pipeline.segments.store import SegmentStore, SourceRange

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "loghub2k"
SYSTEMS = [
    "Apache",
    "BGL",
    "HDFS",
    "HPC",
    "Hadoop",
    "HealthApp",
    "Linux",
    "Mac",
    "OpenSSH",
    "OpenStack",
    "Proxifier",
    "Spark",
    "Thunderbird",
    "Zookeeper",
]
PUBLISHED_TABLE = "loghub2_issta24_RQ2_effectiveness_2k_vs_2.0.csv"
METRICS = ("GA", "FGA", "PA", "FTA")


@dataclass(frozen=True)
class Accuracy:
    grouping: float
    f1_grouping: float
    parsing: float
    f1_template: float


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def accuracy(
    truth_templates: Sequence[str],
    predicted_groups: Sequence[object],
    predicted_templates: Sequence[str],
) -> Accuracy:
    """GA, FGA, PA and FTA of a parse against ground-truth templates (one entry per line)."""
    lines = len(truth_templates)
    truth_members: dict[str, list[int]] = defaultdict(list)
    predicted_members: dict[object, list[int]] = defaultdict(list)
    for index, (truth, group) in enumerate(zip(truth_templates, predicted_groups, strict=True)):
        truth_members[truth].append(index)
        predicted_members[group].append(index)
    grouped_lines = correct_groups = correct_templates = 0
    for members in predicted_members.values():
        truths = {truth_templates[i] for i in members}
        if len(truths) != 1:
            continue
        (truth,) = truths
        if len(truth_members[truth]) != len(members):
            continue
        grouped_lines += len(members)
        correct_groups += 1
        if predicted_templates[members[0]] == truth:
            correct_templates += 1
    parsed_lines = sum(p == t for p, t in zip(predicted_templates, truth_templates, strict=True))
    predicted_count, truth_count = len(predicted_members), len(truth_members)
    return Accuracy(
        grouping=grouped_lines / lines,
        f1_grouping=_f1(correct_groups / predicted_count, correct_groups / truth_count),
        parsing=parsed_lines / lines,
        f1_template=_f1(correct_templates / predicted_count, correct_templates / truth_count),
    )


def published_drain(data_dir: Path) -> dict[tuple[str, str], float]:
    """Drain's (system, metric) -> value on the corrected 2k sets (the '2k' half of each cell)."""
    path = data_dir.parent / "published" / PUBLISHED_TABLE
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("Drain")
    values: dict[tuple[str, str], float] = {}
    for row in rows[1:]:
        system, metric = row[0].rsplit(" ", 1)
        cell = row[column].split("/")[0].strip()
        if cell and not cell.startswith("-"):
            values[(system, metric)] = float(cell)
    return values


def read_corrected(data_dir: Path, system: str) -> tuple[list[str], list[str]]:
    path = data_dir / system / f"{system}_2k.log_structured_corrected.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["Content"] for row in rows], [row["EventTemplate"] for row in rows]


def mine(lines: Sequence[str], repeat: int) -> tuple[TemplateMiner, list[int], float]:
    """Mine ``lines`` with a fresh miner ``repeat`` times; (miner, ids, best lines/s per core)."""
    best_seconds = float("inf")
    miner = TemplateMiner()
    ids: list[int] = []
    for _ in range(repeat):
        miner = TemplateMiner()
        add = miner.add
        started = time.process_time()
        ids = [add(line).template_id for line in lines]
        best_seconds = min(best_seconds, time.process_time() - started)
    return miner, ids, len(lines) / max(best_seconds, 1e-9)


def accuracy_section(data_dir: Path, systems: Sequence[str], repeat: int) -> None:
    drain = published_drain(data_dir)
    header = "| system | lines/s/core | templates (truth) | " + " | ".join(
        f"{m} | Drain {m}" for m in METRICS
    )
    print("## Template mining, Loghub-2k corrected\n")
    print(header + " |")
    print("|" + "---|" * (3 + 2 * len(METRICS)))
    totals: dict[str, list[float]] = defaultdict(list)
    for system in systems:
        contents, truths = read_corrected(data_dir, system)
        miner, ids, speed = mine(contents, repeat)
        texts = {template_id: miner.template(template_id) for template_id in set(ids)}
        scores = accuracy(truths, ids, [texts[i] for i in ids])
        ours = dict(
            zip(
                METRICS,
                (scores.grouping, scores.f1_grouping, scores.parsing, scores.f1_template),
                strict=True,
            )
        )
        cells = [f"{speed:,.0f}", f"{len(set(ids))} ({len(set(truths))})"]
        totals["speed"].append(speed)
        for metric in METRICS:
            reference = drain.get((system, metric))
            totals[metric].append(ours[metric])
            if reference is not None:
                totals[f"Drain {metric}"].append(reference)
            cells += [f"{ours[metric]:.3f}", "-" if reference is None else f"{reference:.3f}"]
        print(f"| {system} | " + " | ".join(cells) + " |")
    average = [f"{statistics.fmean(totals['speed']):,.0f}", ""]
    for metric in METRICS:
        average.append(f"**{statistics.fmean(totals[metric]):.3f}**")
        reference_values = totals[f"Drain {metric}"]
        average.append(f"{statistics.fmean(reference_values):.3f}" if reference_values else "-")
    print("| **average** | " + " | ".join(average) + " |")
    print()


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
OBSERVED_UNIX_NANO = 1_767_225_600_000_000_000  # one receive time for the whole file


@dataclass(frozen=True)
class Stored:
    """What the store keeps for one log file, in bytes."""

    logs: int  # the ``logs`` segment (Parquet)
    templates: int  # the ``log_templates`` segment (Parquet)
    state: int  # the miner state file (template dictionary, needed to rebuild lines)
    manifests: int  # per-segment JSON manifests (fixed cost per segment, reported apart)

    @property
    def data(self) -> int:
        return self.logs + self.templates + self.state


def otlp_payload(raw: bytes, service: str) -> bytes:
    """The raw file as one OTLP logs request: one record per line, body = the line."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    records = resource_logs.scope_logs.add().log_records
    for line in raw.decode("utf-8").split("\n"):
        record = records.add()
        record.observed_time_unix_nano = OBSERVED_UNIX_NANO
        record.body.string_value = line
    return request.SerializeToString()


def store_payload(payload: bytes, root: Path) -> Stored:
    """OTLP bytes -> sealed segments + miner state, the way ``ingest-logs`` does it."""
    store = SegmentStore(root)
    states = MinerStates(store.state_dir(), "otlp_logs")
    columns = LogColumns(states.miner(0), 0)
    columns.add_request(ExportLogsServiceRequest.FromString(payload))
    source = SourceRange("otlp_logs", 0, 0, 0)
    templates = store.write(
        "log_templates",
        columns.templates_table(),
        source,
        time_column="first_seen_unix_nano",
        service_column=None,
        now=NOW,
    )
    logs = store.write("logs", columns.logs_table(), source, time_column="time_unix_nano", now=NOW)
    states.save(0, 0)
    assert templates is not None and logs is not None
    manifests = sum(p.stat().st_size for p in root.rglob("*.manifest.json"))
    return Stored(logs.bytes, templates.bytes, states.path(0).stat().st_size, manifests)


def read_back(root: Path) -> bytes:
    """The stored rows rebuilt to lines, by a fresh reader (segments + persisted state)."""
    store = SegmentStore(root)
    states = MinerStates(store.state_dir(), "otlp_logs")
    (manifest,) = store.manifests("logs")
    table = store.read(manifest)
    lines = [
        states.reconstruct(template_id, params)
        for template_id, params in zip(
            table["template_id"].to_pylist(), table["params"].to_pylist(), strict=True
        )
    ]
    return "\n".join(lines).encode("utf-8")


def compression_section(data_dir: Path, systems: Sequence[str]) -> None:
    print(
        "## Stored size of raw `<System>_2k.log` through the ingest path "
        "(ratio = raw bytes / stored bytes)\n"
    )
    print(
        "Ours: one OTLP request per file (body = line, one receive time) -> `LogColumns` -> "
        "`SegmentStore.write` (`logs` + `log_templates` Parquet) + `MinerStates.save`; stored = "
        "both segments + miner state (manifests listed apart). Speeds are raw MB per CPU-second; "
        "ours encode = OTLP bytes to sealed segments, decode = read segments and rebuild lines.\n"
    )
    print(
        "| system | raw KB | zstd -3 | zstd -19 | ours | ours / zstd -19 | logs KB | templates KB "
        "| state KB | manifests KB | zstd -3 MB/s | zstd -19 MB/s | ours encode MB/s "
        "| ours decode MB/s | lossless |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = defaultdict(list)
    speeds: dict[str, list[float]] = defaultdict(list)
    for system in systems:
        raw = (data_dir / system / f"{system}_2k.log").read_bytes()
        megabytes = len(raw) / 1e6
        measured: dict[str, tuple[int, float]] = {}
        for level in (3, 19):
            started = time.process_time()
            size = len(zstandard.ZstdCompressor(level=level).compress(raw))
            measured[f"zstd{level}"] = (size, time.process_time() - started)
        payload = otlp_payload(raw, system.lower())
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            started = time.process_time()
            stored = store_payload(payload, root)
            encode_seconds = time.process_time() - started
            started = time.process_time()
            lossless = read_back(root) == raw
            decode_seconds = time.process_time() - started
        z3, z19 = measured["zstd3"][0], measured["zstd19"][0]
        row_speeds = {
            "zstd3": megabytes / max(measured["zstd3"][1], 1e-9),
            "zstd19": megabytes / max(measured["zstd19"][1], 1e-9),
            "encode": megabytes / max(encode_seconds, 1e-9),
            "decode": megabytes / max(decode_seconds, 1e-9),
        }
        for name, value in row_speeds.items():
            speeds[name].append(value)
        ratios["zstd3"].append(len(raw) / z3)
        ratios["zstd19"].append(len(raw) / z19)
        ratios["ours"].append(len(raw) / stored.data)
        ratios["ours/zstd19"].append(z19 / stored.data)
        print(
            f"| {system} | {len(raw) / 1024:,.0f} | {len(raw) / z3:.2f} | {len(raw) / z19:.2f} "
            f"| {len(raw) / stored.data:.2f} | {z19 / stored.data:.2f} "
            f"| {stored.logs / 1024:.1f} | {stored.templates / 1024:.1f} "
            f"| {stored.state / 1024:.1f} | {stored.manifests / 1024:.1f} "
            f"| {row_speeds['zstd3']:,.0f} | {row_speeds['zstd19']:,.1f} "
            f"| {row_speeds['encode']:,.1f} | {row_speeds['decode']:,.1f} "
            f"| {'yes' if lossless else 'NO'} |"
        )
    print(
        f"| **average** | | {statistics.fmean(ratios['zstd3']):.2f} "
        f"| {statistics.fmean(ratios['zstd19']):.2f} | **{statistics.fmean(ratios['ours']):.2f}** "
        f"| **{statistics.fmean(ratios['ours/zstd19']):.2f}** | | | | "
        f"| {statistics.fmean(speeds['zstd3']):,.0f} | {statistics.fmean(speeds['zstd19']):,.1f} "
        f"| **{statistics.fmean(speeds['encode']):,.1f}** "
        f"| {statistics.fmean(speeds['decode']):,.1f} | |"
    )
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per system (best kept)")
    parser.add_argument("--no-compression", action="store_true")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"SKIP: Loghub-2k data not found at {args.data_dir} (pass its path as DATA_DIR)")
        return 0
    systems = [s for s in args.systems.split(",") if s]
    accuracy_section(args.data_dir, systems, max(args.repeat, 1))
    if not args.no_compression:
        compression_section(args.data_dir, systems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
