"""OTLP logs from per-service templates: sampled request logs, every error, fault log lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from jobs.simulator.engine import (
    CAUSE_OWN,
    CAUSE_POOL,
    CAUSE_TIMEOUT,
    CONSUMER,
    SERVER,
    SliceState,
    SpanBatch,
    World,
)
from jobs.simulator.telemetry import ResourceCatalog, span_shapes

_INFO = {
    "java": "Completed {method} {route} in {ms} ms status={code}",
    "go": "request handled method={method} path={route} status={code} duration={ms}ms",
    "python": "{method} {route} -> {code} ({ms} ms)",
    "nodejs": "handled request {method} {route} {code} {ms}ms",
}
_EXCEPTIONS = (
    "java.lang.IllegalStateException: order state is not valid",
    "KeyError: 'customer_id'",
    "TypeError: Cannot read properties of undefined (reading 'id')",
    "panic recovered: runtime error: index out of range",
)
SEVERITY = {"DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}


@dataclass(frozen=True)
class LogLine:
    """A log line not tied to a request (startup, GC, OOM, config reload...)."""

    pod: int
    time_ns: int
    severity: str
    body: str


class LogWriter:
    """Log records from per-service templates: request logs sampled from spans, all error logs."""

    def __init__(self, world: World, resources: ResourceCatalog, info_ratio: float = 0.03) -> None:
        self.world = world
        self.resources = resources
        self.info_ratio = info_ratio
        self.shapes = span_shapes(world)

    def encode(
        self,
        batch: SpanBatch,
        state: SliceState,
        extra: list[LogLine],
        versions: list[str],
        rng: np.random.Generator,
        max_errors_per_service: int = 200,
    ) -> list[tuple[int, bytes]]:
        w = self.world
        topo = w.topo
        n_ops = len(topo.operations)
        u = rng.random(len(batch))
        server = (batch.role == SERVER) | (batch.role == CONSUMER)
        chosen = np.nonzero(
            (server & ((batch.variant > 0) | (u < self.info_ratio)))
            | (~server & ((batch.cause == CAUSE_TIMEOUT) | (batch.cause == CAUSE_POOL)))
        )[0]
        per_pod: dict[int, list[LogRecord]] = {}
        error_budget = np.full(len(topo.services), max_errors_per_service)
        for i in chosen.tolist():
            svc = int(batch.service[i])
            key = int(batch.span_key[i])
            variant = int(batch.variant[i])
            if variant and error_budget[svc] <= 0:
                continue
            lang = topo.services[svc].language
            ms = (int(batch.end_ns[i]) - int(batch.start_ns[i])) // 1_000_000
            if key < n_ops:
                op = topo.operations[key]
                if variant == 0:
                    severity = "INFO"
                    body = _INFO[lang].format(method=op.method, route=op.route, ms=ms, code=200)
                elif int(batch.cause[i]) == CAUSE_OWN:
                    severity = "ERROR"
                    body = state.op_error_message.get(key) or (
                        f"Unhandled exception in {op.route}: {_EXCEPTIONS[key % len(_EXCEPTIONS)]}"
                    )
                else:
                    severity = "ERROR"
                    body = f"{op.method} {op.route} failed: upstream call returned an error after {ms} ms"
            else:
                call = topo.calls[key - n_ops]
                peer = (
                    topo.services[topo.operations[call.target_operation].service].name
                    if call.target_operation is not None
                    else topo.dependencies[call.target_dependency or 0].name
                )
                if int(batch.cause[i]) == CAUSE_POOL:
                    severity = "ERROR"
                    pool = topo.services[svc].pool_size
                    body = (
                        f"could not acquire connection from pool {peer} within {ms} ms (max={pool})"
                    )
                else:
                    severity = "WARN"
                    body = f"timeout after {ms} ms calling {peer} ({self.shapes[key].name})"
            if severity != "INFO":
                error_budget[svc] -= 1
            record = LogRecord(
                time_unix_nano=int(batch.end_ns[i]),
                observed_time_unix_nano=int(batch.end_ns[i]) + 1_000_000,
                severity_number=SEVERITY[severity],  # type: ignore[arg-type]
                severity_text=severity,
                body=AnyValue(string_value=body),
                trace_id=batch.trace_id[i].tobytes(),
                span_id=batch.span_id[i].tobytes(),
                flags=1,
            )
            per_pod.setdefault(int(batch.pod[i]), []).append(record)
        for line in extra:
            per_pod.setdefault(line.pod, []).append(
                LogRecord(
                    time_unix_nano=line.time_ns,
                    observed_time_unix_nano=line.time_ns + 1_000_000,
                    severity_number=SEVERITY[line.severity],  # type: ignore[arg-type]
                    severity_text=line.severity,
                    body=AnyValue(string_value=line.body),
                )
            )
        records: list[tuple[int, bytes]] = []
        for service in topo.services:
            request = ExportLogsServiceRequest()
            for pod in service.pods:
                logs = per_pod.get(pod)
                if not logs:
                    continue
                rl = request.resource_logs.add()
                rl.resource.CopyFrom(self.resources.resource(pod, versions[service.index]))
                sl = rl.scope_logs.add()
                sl.scope.CopyFrom(self.resources.scope(service.index))
                sl.log_records.extend(logs)
            if request.resource_logs:
                records.append((service.index, request.SerializeToString()))
        return records
