"""The HTTP shell of the receivers: read the body, call the pure decoders, publish, answer.

Endpoints (all POST but ``/healthz``):

- ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``: OTLP/HTTP, protobuf or JSON, identity, gzip or
  deflate. 200 with an Export*ServiceResponse (``partial_success`` when items were refused),
  400/413/415 with a google.rpc.Status body in the request's encoding, 503 if Kafka is down.
- ``/api/v1/write``: Prometheus remote_write 1.0 (snappy block, ``prometheus.WriteRequest``). 204.
- ``/loki/api/v1/push``: Loki push, JSON (identity or gzip) or snappy protobuf. 204.
- ``/healthz``: the platform's health (``pipeline.monitor``: broker, stages, lag) and the
  counters, as JSON; 503 with the reasons when not ok.
- ``/metrics``: every stage's metrics in Prometheus' exposition format (``pipeline.selfmetrics``).

Every refused request (undecodable, too large, unsupported media type or coding) is counted by
reason and written to the ``deadletter`` topic with the body as received. Requests refused before
their body is looked at (wrong method, bad token) are only counted. With a token configured,
every route but ``/healthz`` requires it, the query API's included.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import hdrs, web
from google.protobuf.message import Message

import schemas
from pipeline import selfmetrics
from pipeline.ingest.core import Limits
from pipeline.monitor import Monitor
from pipeline.receivers import loki, remote_write
from pipeline.receivers.bodies import JSON, PROTOBUF, inflate, media_type, unsnappy
from pipeline.receivers.otlp_export import (
    LAYOUTS,
    LOGS,
    METRICS,
    SignalLayout,
    decode_export,
    export_response,
    prepare_export,
    status_body,
)
from pipeline.receivers.refusals import Refusal, deadletter_record, too_large
from pipeline.settings import Settings

log = logging.getLogger(__name__)

REMOTE_WRITE_PATH = "/api/v1/write"
LOKI_PUSH_PATH = "/loki/api/v1/push"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
ALERTMANAGER_PATH = "/alertmanager/webhook"
READ_CHUNK_BYTES = 64 * 1024


class RecordProducer(Protocol):
    """What the receivers need of a Kafka producer (``AIOKafkaProducer`` fits)."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Awaitable[Any]: ...


@dataclass
class ReceiverCounters:
    """Everything the receivers did, for ``/healthz``; refusals by reason."""

    requests: Counter[str] = field(default_factory=Counter)
    accepted_items: Counter[str] = field(default_factory=Counter)
    rejected_items: Counter[str] = field(default_factory=Counter)
    published_records: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)
    deadletter_reasons: Counter[str] = field(default_factory=Counter)
    deadletters: int = 0
    deadletters_lost: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "accepted_items": dict(self.accepted_items),
            "rejected_items": dict(self.rejected_items),
            "published_records": dict(self.published_records),
            "refused": dict(self.refused),
            "bytes_in": dict(self.bytes_in),
            "deadletter_reasons": dict(self.deadletter_reasons),
            "deadletters": self.deadletters,
            "deadletters_lost": self.deadletters_lost,
        }


COUNTERS_KEY = web.AppKey("receiver_counters", ReceiverCounters)


class Receivers:
    """The handlers, bound to one producer, the limits and the counters."""

    def __init__(
        self,
        settings: Settings,
        producer: RecordProducer,
        *,
        token: str | None,
        max_attributes: int,
        clock_ns: Callable[[], int],
        publish_timeout_s: float,
        max_request_bytes: int,
        monitor: Monitor | None = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.feed = selfmetrics.CounterFeed()
        self.metrics_registry = selfmetrics.registry([monitor] if monitor is not None else [])
        self.producer = producer
        self.token = token
        self.max_attributes = max_attributes
        self.clock_ns = clock_ns
        self.publish_timeout_s = publish_timeout_s
        self.request_limit = max_request_bytes
        self.record_limit = settings.max_record_bytes
        self.counters = ReceiverCounters()

    # -- shared steps -------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise Refusal(401, "unauthorized", "missing or wrong bearer token")

    async def read_body(self, request: web.Request) -> bytes:
        """The raw body, at most limit + 1 bytes (enough to know it is too large)."""
        declared = request.content_length
        if declared is not None and declared > self.request_limit:
            raise too_large(
                f"Content-Length {declared} exceeds the limit of {self.request_limit} bytes"
            )
        body = bytearray()
        while len(body) <= self.request_limit:
            chunk = await request.content.read(READ_CHUNK_BYTES)
            if not chunk:
                break
            body += chunk
            self.counters.bytes_in[request.path] += len(chunk)
        return bytes(body)

    def check_size(self, body: bytes) -> None:
        if len(body) > self.request_limit:
            raise too_large(f"body exceeds the limit of {self.request_limit} bytes")

    async def publish(self, logical_topic: str, records: list[bytes]) -> None:
        topic = self.settings.topic(logical_topic)
        try:
            pending = [
                await self.producer.send(topic, value=record, key=None) for record in records
            ]
            await asyncio.wait_for(asyncio.gather(*pending), self.publish_timeout_s)
        except Exception as e:  # KafkaError, timeouts: the client should retry later
            log.warning("publishing to %s failed: %s", topic, e)
            raise Refusal(503, "broker_unavailable", f"could not publish to Kafka: {e}") from None
        self.counters.published_records[logical_topic] += len(records)

    async def refuse(
        self, request: web.Request, refusal: Refusal, payload: bytes, intended_topic: str
    ) -> None:
        """Count a refusal and, when it concerns the body, send it to the dead-letter topic."""
        self.counters.refused[refusal.reason] += 1
        if refusal.status in (401, 503):
            return
        record = deadletter_record(
            refusal,
            endpoint=request.path,
            content_type=request.headers.get(hdrs.CONTENT_TYPE, ""),
            payload=payload,
            received_at_unix_nano=self.clock_ns(),
        )
        try:
            future = await self.producer.send(
                self.settings.topic("deadletter"),
                value=orjson.dumps(record),
                key=self.settings.topic(intended_topic).encode(),
            )
            await asyncio.wait_for(future, self.publish_timeout_s)
            self.counters.deadletters += 1
            self.counters.deadletter_reasons[refusal.reason] += 1
        except Exception as e:  # the refusal is still answered; the loss is counted
            self.counters.deadletters_lost += 1
            log.warning("dead letter for %s lost: %s", request.path, e)

    # -- OTLP/HTTP ----------------------------------------------------------------------------

    def otlp_handler(
        self, layout: SignalLayout
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.otlp(request, layout)

        return handle

    async def otlp(self, request: web.Request, layout: SignalLayout) -> web.Response:
        self.counters.requests[layout.path] += 1
        media = media_type(request.headers.get(hdrs.CONTENT_TYPE))
        body = b""
        try:
            self.authorize(request)
            body = await self.read_body(request)
            self.check_size(body)
            if media not in (PROTOBUF, JSON):
                raise Refusal(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be {PROTOBUF} or {JSON}, got {media or 'none'!r}",
                )
            payload = inflate(
                body, request.headers.get(hdrs.CONTENT_ENCODING, ""), self.request_limit
            )
            export = decode_export(payload, media, layout)
            outcome = prepare_export(
                export,
                layout,
                max_record_bytes=self.record_limit,
                max_attributes=self.max_attributes,
            )
            await self.publish(layout.logical_topic, outcome.records)
        except Refusal as refusal:
            await self.refuse(request, refusal, body, layout.logical_topic)
            return self.otlp_error(refusal, media)
        self.counters.accepted_items[layout.path] += outcome.accepted
        self.counters.rejected_items[layout.path] += outcome.rejected
        return web.Response(body=export_response(layout, outcome, media), content_type=media)

    @staticmethod
    def otlp_error(refusal: Refusal, media: str) -> web.Response:
        headers = {"Retry-After": "5"} if refusal.status == 503 else {}
        if refusal.status == 401:
            headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        if media not in (PROTOBUF, JSON):
            return web.Response(status=refusal.status, text=str(refusal), headers=headers)
        return web.Response(
            status=refusal.status,
            body=status_body(refusal, media),
            content_type=media,
            headers=headers,
        )

    # -- Prometheus remote_write and Loki push -----------------------------------------------

    async def remote_write(self, request: web.Request) -> web.Response:
        return await self.push(request, "otlp_metrics", self.translate_remote_write)

    async def loki_push(self, request: web.Request) -> web.Response:
        return await self.push(request, "otlp_logs", self.translate_loki)

    async def push(
        self,
        request: web.Request,
        logical_topic: str,
        translate: Callable[[web.Request, bytes], tuple[Message, SignalLayout, int]],
    ) -> web.Response:
        self.counters.requests[request.path] += 1
        body = b""
        try:
            self.authorize(request)
            body = await self.read_body(request)
            self.check_size(body)
            export, layout, skipped = translate(request, body)
            outcome = prepare_export(
                export,
                layout,
                max_record_bytes=self.record_limit,
                max_attributes=self.max_attributes,
            )
            await self.publish(logical_topic, outcome.records)
        except Refusal as refusal:
            await self.refuse(request, refusal, body, logical_topic)
            headers = {"Retry-After": "5"} if refusal.status == 503 else {}
            if refusal.status == 401:
                headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
            return web.Response(status=refusal.status, text=str(refusal), headers=headers)
        self.counters.accepted_items[request.path] += outcome.accepted
        self.counters.rejected_items[request.path] += outcome.rejected + skipped
        return web.Response(status=204)

    def translate_remote_write(
        self, request: web.Request, body: bytes
    ) -> tuple[Message, SignalLayout, int]:
        media = media_type(request.headers.get(hdrs.CONTENT_TYPE))
        if media not in ("", PROTOBUF):
            raise Refusal(415, "unsupported_media_type", f"remote_write needs {PROTOBUF}")
        coding = request.headers.get(hdrs.CONTENT_ENCODING, "snappy").strip().lower()
        if coding != "snappy":
            raise Refusal(
                415, "unsupported_content_encoding", f"remote_write needs snappy, got {coding!r}"
            )
        write_request = remote_write.decode_write_request(unsnappy(body, self.request_limit))
        translation = remote_write.to_otlp_metrics(write_request)
        return translation.request, METRICS, translation.series_without_name

    def translate_loki(
        self, request: web.Request, body: bytes
    ) -> tuple[Message, SignalLayout, int]:
        media = media_type(request.headers.get(hdrs.CONTENT_TYPE))
        coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if media == JSON:
            streams = loki.streams_from_json(inflate(body, coding, self.request_limit))
        elif media == PROTOBUF:
            if coding not in ("", "snappy"):
                raise Refusal(
                    415, "unsupported_content_encoding", f"Loki protobuf is snappy, got {coding!r}"
                )
            streams = loki.streams_from_protobuf(unsnappy(body, self.request_limit))
        else:
            raise Refusal(
                415,
                "unsupported_media_type",
                f"Content-Type must be {JSON} or {PROTOBUF}, got {media or 'none'!r}",
            )
        return loki.to_otlp_logs(streams, self.clock_ns()), LOGS, 0

    # -- Alertmanager webhook ----------------------------------------------------------------

    async def alertmanager(self, request: web.Request) -> web.Response:
        """An Alertmanager webhook receiver: validated payloads go to the ``alerts`` topic."""
        self.counters.requests[request.path] += 1
        body = b""
        try:
            self.authorize(request)
            body = await self.read_body(request)
            self.check_size(body)
            media = media_type(request.headers.get(hdrs.CONTENT_TYPE))
            if media not in ("", JSON):
                raise Refusal(
                    415, "unsupported_media_type", f"Content-Type must be {JSON}, got {media!r}"
                )
            try:
                payload = orjson.loads(
                    inflate(
                        body, request.headers.get(hdrs.CONTENT_ENCODING, ""), self.request_limit
                    )
                )
            except orjson.JSONDecodeError as e:
                raise Refusal(400, "json_decode_error", f"not JSON: {e}") from None
            try:
                schemas.validate("alerts.schema.json", payload)
            except schemas.SchemaViolation as e:
                raise Refusal(400, "alert_schema_violation", str(e)) from None
            topic = self.settings.topic("alerts")
            try:
                future = await self.producer.send(
                    topic, value=orjson.dumps(payload), key=str(payload["groupKey"]).encode()
                )
                await asyncio.wait_for(future, self.publish_timeout_s)
            except Exception as e:  # KafkaError, timeouts: Alertmanager retries
                raise Refusal(
                    503, "broker_unavailable", f"could not publish to Kafka: {e}"
                ) from None
            self.counters.published_records["alerts"] += 1
        except Refusal as refusal:
            await self.refuse(request, refusal, body, "alerts")
            headers = {"Retry-After": "5"} if refusal.status == 503 else {}
            if refusal.status == 401:
                headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
            return web.Response(status=refusal.status, text=str(refusal), headers=headers)
        self.counters.accepted_items[request.path] += len(payload["alerts"])
        return web.Response(status=200, text="ok")

    # -- health -------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """200 ``{"status": "ok"}`` or 503 ``{"status": "unhealthy", "reasons": [...]}``, the
        checks behind it and the counters. Answers from the monitor's last check."""
        if self.monitor is None:  # an app built without a monitor has nothing to check
            return web.json_response({"status": "ok", **self.counters.as_json()}, dumps=_dumps)
        ok, reasons, checks = self.monitor.health()
        body = {
            "status": "ok" if ok else "unhealthy",
            "reasons": reasons,
            "checks": checks,
            **self.counters.as_json(),
        }
        return web.json_response(body, status=200 if ok else 503, dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.Response:
        """The exposition: the receivers' counters are fed first, then every stage's samples
        are read (files, in multiprocess mode) off the event loop. Needs the bearer token when
        one is configured."""
        try:
            self.authorize(request)
        except Refusal as refusal:
            self.counters.refused[refusal.reason] += 1
            return web.Response(
                status=401, text=str(refusal), headers={hdrs.WWW_AUTHENTICATE: "Bearer"}
            )
        selfmetrics.feed_receiver(self.feed, self.counters)
        text = await asyncio.to_thread(selfmetrics.exposition, self.metrics_registry)
        return web.Response(body=text, headers={hdrs.CONTENT_TYPE: selfmetrics.CONTENT_TYPE})


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def build_receiver_app(
    settings: Settings,
    producer: RecordProducer,
    *,
    token: str | None = None,
    max_attributes: int = Limits().max_attributes_per_item,
    clock_ns: Callable[[], int] = time.time_ns,
    publish_timeout_s: float = 15.0,
    max_request_bytes: int | None = None,
    monitor: Monitor | None = None,
) -> web.Application:
    """The receivers as an aiohttp application publishing through ``producer``.

    ``token``: when set, every request but ``GET /healthz`` needs ``Authorization: Bearer
    <token>`` (401 otherwise, counted as ``unauthorized``), whatever its path or method.
    ``max_request_bytes``: largest body, before and after decompression (default: the record
    limit, ``settings.max_record_bytes``); a larger limit makes requests split into records.
    Serve it with ``auto_decompress=False`` (``server.py`` does) so the body limits hold.
    ``monitor``: the platform checks behind ``/healthz`` and ``/metrics`` (started by the caller).
    """
    receivers = Receivers(
        settings,
        producer,
        token=token,
        max_attributes=max_attributes,
        clock_ns=clock_ns,
        publish_timeout_s=publish_timeout_s,
        max_request_bytes=max_request_bytes or settings.max_record_bytes,
        monitor=monitor,
    )

    @web.middleware
    async def count_wrong_methods(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed:
            receivers.counters.refused["method_not_allowed"] += 1
            raise

    guarded_posts = {(hdrs.METH_POST, layout.path) for layout in LAYOUTS} | {
        (hdrs.METH_POST, path) for path in (REMOTE_WRITE_PATH, LOKI_PUSH_PATH, ALERTMANAGER_PATH)
    }

    @web.middleware
    async def require_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # every route but /healthz, unknown paths and wrong methods included, so nothing about
        # the server (not even which routes exist) is told without the token; the receivers'
        # POST handlers check it themselves, to answer in their protocol's error format
        if request.path != HEALTH_PATH and (request.method, request.path) not in guarded_posts:
            try:
                receivers.authorize(request)
            except Refusal as refusal:
                receivers.counters.refused[refusal.reason] += 1
                return web.json_response(
                    {"error": refusal.detail},
                    status=refusal.status,
                    headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
                )
        return await handler(request)

    app = web.Application(
        middlewares=[require_token, count_wrong_methods], client_max_size=receivers.request_limit
    )
    app[COUNTERS_KEY] = receivers.counters
    for layout in LAYOUTS:
        app.router.add_post(layout.path, receivers.otlp_handler(layout))
    app.router.add_post(REMOTE_WRITE_PATH, receivers.remote_write)
    app.router.add_post(LOKI_PUSH_PATH, receivers.loki_push)
    app.router.add_post(ALERTMANAGER_PATH, receivers.alertmanager)
    app.router.add_get(HEALTH_PATH, receivers.health)
    app.router.add_get(METRICS_PATH, receivers.metrics)
    return app
