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

The compression section mines each raw ``<System>_2k.log`` (headers included: no per-system
header rules) and stores it as a Parquet (Arrow) table with zstd: a ``template_id`` column in line
order plus parameter columns ``p0..pN`` for the rows sorted by template (stable), so each column
holds one template's slot values contiguously; plus the template dictionary (``to_bytes``,
zstd -19). Everything is decoded back and compared byte for byte with the raw file.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.logs.templates import TemplateMiner

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


def encode_log(raw: bytes) -> tuple[bytes, bytes, int]:
    """Raw log -> (Parquet table bytes, zstd template dictionary bytes, templates)."""
    lines = raw.decode("utf-8").split("\n")
    miner = TemplateMiner()
    matches = [miner.add(line) for line in lines]
    order = sorted(range(len(matches)), key=lambda i: matches[i].template_id)
    width = max(len(m.params) for m in matches)
    columns: dict[str, pa.Array] = {
        "template_id": pa.array([m.template_id for m in matches], type=pa.uint32())
    }
    for slot in range(width):
        values = [matches[i].params[slot] if slot < len(matches[i].params) else None for i in order]
        columns[f"p{slot}"] = pa.array(values, type=pa.string())
    sink = io.BytesIO()
    pq.write_table(
        pa.table(columns),
        sink,
        compression="zstd",
        compression_level=19,
        use_dictionary=True,
        write_statistics=False,
    )
    dictionary = zstandard.ZstdCompressor(level=19).compress(miner.to_bytes())
    return sink.getvalue(), dictionary, len(miner.templates())


def decode_log(table_bytes: bytes, dictionary: bytes) -> bytes:
    miner = TemplateMiner.from_bytes(zstandard.ZstdDecompressor().decompress(dictionary))
    table = pq.read_table(io.BytesIO(table_bytes))
    template_ids = table.column("template_id").to_pylist()
    slots = [table.column(name).to_pylist() for name in table.column_names[1:]]
    order = sorted(range(len(template_ids)), key=template_ids.__getitem__)
    lines: list[str] = [""] * len(template_ids)
    for sorted_row, line_index in enumerate(order):
        params = []
        for column in slots:
            value = column[sorted_row]
            if value is None:
                break
            params.append(value)
        lines[line_index] = miner.reconstruct(template_ids[line_index], params)
    return "\n".join(lines).encode("utf-8")


def compression_section(data_dir: Path, systems: Sequence[str]) -> None:
    print("## Compression of raw `<System>_2k.log` (ratio = raw bytes / stored bytes)\n")
    print(
        "| system | raw KB | zstd -3 | zstd -19 | ours (table + dict) | ours / zstd -19 "
        "| zstd -3 MB/s | zstd -19 MB/s | ours encode MB/s | ours decode MB/s | lossless |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = defaultdict(list)
    for system in systems:
        raw = (data_dir / system / f"{system}_2k.log").read_bytes()
        measured: dict[str, tuple[int, float]] = {}
        for level in (3, 19):
            started = time.process_time()
            size = len(zstandard.ZstdCompressor(level=level).compress(raw))
            measured[f"zstd{level}"] = (size, time.process_time() - started)
        started = time.process_time()
        table_bytes, dictionary, _ = encode_log(raw)
        encode_seconds = time.process_time() - started
        started = time.process_time()
        lossless = decode_log(table_bytes, dictionary) == raw
        decode_seconds = time.process_time() - started
        ours = len(table_bytes) + len(dictionary)
        megabytes = len(raw) / 1e6
        for name, (size, _) in measured.items():
            ratios[name].append(len(raw) / size)
        ratios["ours"].append(len(raw) / ours)
        ratios["ours/zstd19"].append(measured["zstd19"][0] / ours)
        print(
            f"| {system} | {len(raw) / 1024:,.0f} | {len(raw) / measured['zstd3'][0]:.2f} "
            f"| {len(raw) / measured['zstd19'][0]:.2f} | {len(raw) / ours:.2f} "
            f"| {measured['zstd19'][0] / ours:.2f} "
            f"| {megabytes / max(measured['zstd3'][1], 1e-9):,.0f} "
            f"| {megabytes / max(measured['zstd19'][1], 1e-9):,.1f} "
            f"| {megabytes / max(encode_seconds, 1e-9):,.1f} "
            f"| {megabytes / max(decode_seconds, 1e-9):,.1f} | {'yes' if lossless else 'NO'} |"
        )
    print(
        f"| **average** | | {statistics.fmean(ratios['zstd3']):.2f} "
        f"| {statistics.fmean(ratios['zstd19']):.2f} | **{statistics.fmean(ratios['ours']):.2f}** "
        f"| {statistics.fmean(ratios['ours/zstd19']):.2f} | | | | | |"
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
