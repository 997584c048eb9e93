"""The registry, the schemas, their examples and the code must agree.

Adding a topic without a schema and an example, or a schema no topic uses, fails here.
"""

from __future__ import annotations

import binascii
import copy
from typing import Any

import pyarrow as pa
import pytest

import schemas
from pipeline import otlp, topics
from schemas import segments


def test_registry_names_are_unique_and_partitioned() -> None:
    names = [t.name for t in topics.REGISTRY]
    assert len(names) == len(set(names))
    for t in topics.REGISTRY:
        assert t.partitions >= 1
        assert t.producers and t.consumers
    # the OpenTelemetry Collector Kafka exporter defaults are ours
    assert {"otlp_spans", "otlp_metrics", "otlp_logs"} <= set(names)
    assert {"alerts", "changes", "causes.ranked", "deadletter"} <= set(names)


@pytest.mark.parametrize("spec", topics.REGISTRY, ids=lambda t: t.name)
def test_every_topic_has_a_schema_and_valid_examples(spec: topics.TopicSpec) -> None:
    examples = schemas.examples(spec.name)
    assert examples, f"no example payloads for {spec.name}"
    for example in examples:
        if spec.encoding == "json":
            assert spec.value_schema == f"{spec.name}{schemas.SCHEMA_SUFFIX}"
            schemas.validate(spec.value_schema, example)
        else:
            msg = otlp.from_json(example, spec.value_schema)
            again = otlp.from_proto(msg.SerializeToString(), spec.value_schema)
            assert again == msg
            assert otlp.to_json(again) == otlp.to_json(msg)


def test_every_json_schema_belongs_to_a_topic() -> None:
    used = {t.value_schema for t in topics.REGISTRY if t.encoding == "json"}
    assert set(schemas.available_json_schemas()) == used


def test_every_example_file_belongs_to_a_topic_or_segment() -> None:
    expected = {t.name for t in topics.REGISTRY} | {f"segment_{s}" for s in segments.BY_SIGNAL}
    assert set(schemas.available_examples()) == expected


def _arrow_rows(schema: pa.Schema, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        row = dict(row)
        for field in schema:
            if pa.types.is_fixed_size_binary(field.type) and row.get(field.name) is not None:
                row[field.name] = binascii.unhexlify(row[field.name])
        out.append(row)
    return out


@pytest.mark.parametrize("signal", sorted(segments.BY_SIGNAL))
def test_segment_examples_build_arrow_tables(signal: str) -> None:
    schema = segments.BY_SIGNAL[signal]
    rows = _arrow_rows(schema, schemas.examples(f"segment_{signal}"))
    table = pa.Table.from_pylist(rows, schema=schema)
    assert table.num_rows == len(rows)
    assert set(table.column_names) == set(rows[0])
    assert (
        schema.metadata[b"worldline.schema_version"] == str(segments.ARROW_SCHEMA_VERSION).encode()
    )


def test_otlp_json_ids_are_hex_not_base64() -> None:
    example = schemas.examples("otlp_spans")[0]
    msg = otlp.from_json(example, topics.OTLP_TRACES)
    span = msg.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.span_id.hex() == "00f067aa0ba902b7"
    bad = copy.deepcopy(example)
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "zz"
    with pytest.raises(otlp.OtlpDecodeError, match="spanId"):
        otlp.from_json(bad, topics.OTLP_TRACES)


def test_truncated_otlp_proto_is_a_decode_error() -> None:
    msg = otlp.from_json(schemas.examples("otlp_spans")[0], topics.OTLP_TRACES)
    data = msg.SerializeToString()
    with pytest.raises(otlp.OtlpDecodeError):
        otlp.from_proto(data[: len(data) // 2], topics.OTLP_TRACES)


@pytest.mark.parametrize(
    ("schema_file", "mutate", "where"),
    [
        ("alerts.schema.json", lambda d: d.update(version="3"), "version"),
        ("alerts.schema.json", lambda d: d["alerts"][0].pop("fingerprint"), "alerts/0"),
        (
            "alerts.schema.json",
            lambda d: d["alerts"][0].update(startsAt="yesterday"),
            "alerts/0/startsAt",
        ),
        ("changes.schema.json", lambda d: d.update(kind="reboot"), "kind"),
        (
            "causes.ranked.schema.json",
            lambda d: d["causes"][0].update(probability=1.5),
            "causes/0/probability",
        ),
        ("causes.ranked.schema.json", lambda d: d.update(abstained=True), "abstain_reason"),
        ("deadletter.schema.json", lambda d: d.update(reason="Not A Slug"), "reason"),
    ],
)
def test_schemas_refuse_wrong_payloads(schema_file: str, mutate: Any, where: str) -> None:
    topic = schema_file.removesuffix(schemas.SCHEMA_SUFFIX)
    payload = copy.deepcopy(schemas.examples(topic)[0])
    mutate(payload)
    with pytest.raises(schemas.SchemaViolation) as err:
        schemas.validate(schema_file, payload)
    assert where in str(err.value)


def test_causes_ranked_has_the_design_fields() -> None:
    schema = schemas.json_schema("causes.ranked.schema.json")
    required = set(schema["required"])
    assert {
        "incident_id",
        "alert_fingerprints",
        "generated_at",
        "abstained",
        "abstain_reason",
        "causes",
    } <= required
    cause = set(schema["$defs"]["cause"]["required"])
    assert {
        "entity",
        "signal",
        "fault_class",
        "onset",
        "probability",
        "evidence",
        "path",
        "explanation",
    } <= cause
