"""The ``causes.ranked`` record of an incident update (``schemas/causes.ranked.schema.json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import schemas
from jobs.causal.alerts import Incident
from jobs.causal.search import SearchResult

SCHEMA = "causes.ranked.schema.json"
MAX_CAUSES = 10
MAX_RULED_OUT = 50


def iso(t_s: float | None) -> str | None:
    if t_s is None:
        return None
    return dt.datetime.fromtimestamp(t_s, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _entity(key: str) -> dict[str, str]:
    kind, _, name = key.partition(":")
    return {"kind": kind, "name": name}


def build_record(
    incident: Incident,
    result: SearchResult,
    generated_at_s: float,
    coverage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record, validated against the schema (a bug here must not reach consumers);
    ``coverage`` says how far the world model behind it holds the data."""
    symptoms = []
    for fingerprint in incident.fingerprints:
        symptom = incident.symptoms.get(fingerprint)
        if symptom is not None and symptom.entity:
            symptoms.append(
                {
                    "entity": _entity(symptom.entity),
                    "signal": symptom.signal or "any",
                    "onset": iso(result.symptom_onset_s),
                }
            )
    record: dict[str, Any] = {
        "schema_version": 1,
        "incident_id": incident.incident_id,
        "update": incident.updates,
        "alert_fingerprints": incident.fingerprints,
        "generated_at": iso(generated_at_s),
        "symptoms": symptoms,
        **({"coverage": coverage} if coverage is not None else {}),
        "abstained": result.abstained,
        "abstain_reason": result.abstain_reason,
        "separating_evidence": result.separating_evidence,
        "causes": [
            {
                "rank": rank,
                "entity": _entity(c.entity),
                "signal": c.signal,
                "fault_class": c.fault_class,
                "onset": iso(c.onset_s),
                "probability": round(min(1.0, max(0.0, c.probability)), 4),
                "evidence": c.evidence,
                "path": [_entity(p) for p in c.path],
                "explanation": c.explanation,
            }
            for rank, c in enumerate(result.causes[:MAX_CAUSES], start=1)
        ],
        "ruled_out": [
            {
                "entity": _entity(r.entity),
                "reason": r.reason,
                **({"signal": r.signal} if r.signal else {}),
            }
            for r in result.ruled_out[:MAX_RULED_OUT]
        ],
        "stats": result.stats,
    }
    schemas.validate(SCHEMA, record)
    return record
