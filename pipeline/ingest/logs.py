"""Logs: OTLP ExportLogsServiceRequest -> template id + parameter columns.

Each log body is mined online into a template (``pipeline.logs.templates``); the segment keeps
the template id and the parameters, never the body text, and the original line is rebuilt from
them exactly. There is one miner per source partition, so replicas never disagree on ids: a
template id is ``partition << 20 | local id``. A miner's state is stored beside the segments
(``_state/log-miner-<topic>-p<partition>.json.zst``, zstd) with the last offset it learned from,
and the templates a batch created or generalised are sealed as a ``log_templates`` segment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import zstandard
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from pipeline.caps import adopt_caps
from pipeline.ingest.resource import service_of
from pipeline.ingest.severity import inferred_severity
from pipeline.ingest.spans import any_value
from pipeline.logs.templates import MinerConfig, TemplateMiner
from schemas.segments import LOG_TEMPLATES, LOGS

log = logging.getLogger("worldline.ingest")
LOCAL_ID_BITS = 20
LOCAL_ID_MASK = (1 << LOCAL_ID_BITS) - 1
BODY_JSON_ATTRIBUTE = "worldline.body_json"
STATE_ZSTD_LEVEL = 9
_ZSTD_C = zstandard.ZstdCompressor(level=STATE_ZSTD_LEVEL)
_ZSTD_D = zstandard.ZstdDecompressor()


def global_template_id(partition: int, local_id: int) -> int:
    return (partition << LOCAL_ID_BITS) | local_id


def split_template_id(template_id: int) -> tuple[int, int]:
    return template_id >> LOCAL_ID_BITS, template_id & LOCAL_ID_MASK


class MinerStates:
    """The template miners of one source topic, one per partition, persisted under ``root``."""

    def __init__(self, root: Path, topic: str, config: MinerConfig | None = None) -> None:
        self.root = root
        self.topic = topic
        self.config = config or MinerConfig()
        self.miners: dict[int, TemplateMiner] = {}
        self.learned_through: dict[int, int] = {}

    def path(self, partition: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.topic)
        return self.root / f"log-miner-{safe}-p{partition}.json.zst"

    def miner(self, partition: int) -> TemplateMiner:
        miner = self.miners.get(partition)
        if miner is None:
            path = self.path(partition)
            legacy = path.with_suffix("")  # ``.json``: plain JSON with the miner as a string
            if path.exists():
                header, _, state = _ZSTD_D.decompress(path.read_bytes()).partition(b"\n")
                miner = TemplateMiner.from_bytes(state)
                self.learned_through[partition] = int(orjson.loads(header)["last_offset"])
            elif legacy.exists():
                doc = orjson.loads(legacy.read_bytes())
                miner = TemplateMiner.from_bytes(doc["miner"].encode())
                self.learned_through[partition] = int(doc["last_offset"])
            else:
                miner = TemplateMiner(self.config)
            if path.exists() or legacy.exists():
                miner.config, kept = adopt_caps(miner.config, self.config, "templates.")
                if kept:
                    log.warning(
                        "the template miner of %s partition %d was learned under other values"
                        " of %s; they are kept (a fresh data directory takes the settings)",
                        self.topic,
                        partition,
                        ", ".join(kept),
                    )
            self.miners[partition] = miner
        return miner

    def save(self, partition: int, last_offset: int) -> None:
        """Write the miner durably: zstd of a JSON header line, then the miner state."""
        miner = self.miner(partition)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(partition)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        header = {"topic": self.topic, "partition": partition, "last_offset": last_offset}
        data = _ZSTD_C.compress(orjson.dumps(header) + b"\n" + miner.to_bytes())
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.learned_through[partition] = last_offset

    def reconstruct(self, template_id: int, params: list[str]) -> str:
        partition, local = split_template_id(template_id)
        return self.miner(partition).reconstruct(local, params)

    def template_text(self, template_id: int) -> str:
        partition, local = split_template_id(template_id)
        return self.miner(partition).template(local)


class LogColumns:
    """Column builders for the logs of one partition, mining templates as they come."""

    def __init__(self, miner: TemplateMiner, partition: int) -> None:
        self.miner = miner
        self.partition = partition
        self.cols: dict[str, list[Any]] = {f.name: [] for f in LOGS}
        self.before: Mapping[int, str] = miner.templates()
        self.first_seen: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.cols["template_id"])

    def add_request(self, request: ExportLogsServiceRequest) -> int:
        c = self.cols
        added = 0
        for rl in request.resource_logs:
            resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
            service = service_of(resource)
            res_json = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    attrs = {kv.key: any_value(kv.value) for kv in rec.attributes}
                    body_kind = rec.body.WhichOneof("value")
                    if body_kind == "string_value":
                        body = rec.body.string_value
                    elif body_kind is None:
                        body = ""
                    else:
                        body = orjson.dumps(any_value(rec.body)).decode()
                        attrs[BODY_JSON_ATTRIBUTE] = True
                    match = self.miner.add(body)
                    tid = global_template_id(self.partition, match.template_id)
                    t = rec.time_unix_nano or rec.observed_time_unix_nano
                    if match.template_id not in self.first_seen:
                        self.first_seen[match.template_id] = t
                    c["time_unix_nano"].append(t)
                    c["observed_unix_nano"].append(rec.observed_time_unix_nano or None)
                    c["service"].append(service)
                    c["severity_number"].append(
                        inferred_severity(rec.severity_number, rec.severity_text, body)
                    )
                    c["severity_text"].append(rec.severity_text or None)
                    c["template_id"].append(tid)
                    c["params"].append(list(match.params))
                    c["trace_id"].append(rec.trace_id if len(rec.trace_id) == 16 else None)
                    c["span_id"].append(rec.span_id if len(rec.span_id) == 8 else None)
                    c["attributes"].append(orjson.dumps(attrs).decode() if attrs else None)
                    c["resource_attributes"].append(res_json)
                    added += 1
        return added

    def logs_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=LOGS)

    def templates_table(self) -> pa.Table:
        """Templates created or generalised by this batch, with their current text."""
        rows = []
        for local, text in self.miner.templates().items():
            if self.before.get(local) != text:
                rows.append(
                    {
                        "template_id": global_template_id(self.partition, local),
                        "template": text,
                        "first_seen_unix_nano": self.first_seen.get(local, 0),
                    }
                )
        return pa.Table.from_pylist(rows, schema=LOG_TEMPLATES)
