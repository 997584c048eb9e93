"""Refused requests: the exception every receiver raises, and the dead-letter record it becomes.

A ``Refusal`` carries the HTTP status and a stable reason slug, so the HTTP shell answers, counts
and dead-letters it the same way wherever it was raised. The dead-letter record follows
``schemas/deadletter.schema.json`` with ``source.endpoint`` and ``source.content_type`` in place
of a Kafka position, and the body exactly as received (still compressed), truncated.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from pipeline.ingest.core import DEADLETTER_PAYLOAD_LIMIT

STAGE = "receiver"


@dataclass
class Refusal(Exception):
    """A request the receiver will not accept: HTTP status, reason slug and a human detail."""

    status: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.detail}"


def too_large(detail: str) -> Refusal:
    return Refusal(413, "payload_too_large", detail)


def deadletter_record(
    refusal: Refusal,
    *,
    endpoint: str,
    content_type: str,
    payload: bytes,
    received_at_unix_nano: int,
) -> dict[str, Any]:
    received_at = dt.datetime.fromtimestamp(received_at_unix_nano / 1e9, tz=dt.UTC)
    return {
        "schema_version": 1,
        "stage": STAGE,
        "reason": refusal.reason,
        "detail": refusal.detail[:2000],
        "received_at": received_at.isoformat().replace("+00:00", "Z"),
        "source": {"endpoint": endpoint, "content_type": content_type},
        "payload_size": len(payload),
        "payload_b64": base64.b64encode(payload[:DEADLETTER_PAYLOAD_LIMIT]).decode("ascii"),
        "payload_truncated_at": DEADLETTER_PAYLOAD_LIMIT
        if len(payload) > DEADLETTER_PAYLOAD_LIMIT
        else None,
    }
