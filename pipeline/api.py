"""The query API over HTTP (read-only): logs, traces, metric series, the template dictionary.

Mounted under ``/api/v1/query/`` next to the receivers. Every request is written to the audit
log (``<data_dir>/audit/api.jsonl``: time, remote address, path, parameters, status, rows).
Bad parameters answer 400 with ``{"error": "..."}``.

    GET /api/v1/query/logs?service=checkout&severity=error&since=15m&template=...&text=...&limit=100
    GET /api/v1/query/traces/{trace_id}
    GET /api/v1/query/metrics?name=process.cpu.utilization&label=service.name=cart&step=60&agg=max
    GET /api/v1/query/templates
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from pathlib import Path
from typing import Any

import click
import orjson
from aiohttp import web

from pipeline.query import LogQuery, QueryError, TimeRange, metric_series, trace
from pipeline.query_cli import parse_time
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel import reads

QUERY_PREFIX = "/api/v1/query"
STORE_KEY = web.AppKey("store", SegmentStore)
AUDIT_KEY = web.AppKey("audit", Path)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json"
    )


def _range(request: web.Request) -> TimeRange:
    now = dt.datetime.now(dt.UTC)
    try:
        return TimeRange(
            parse_time(request.query.get("since"), now), parse_time(request.query.get("until"), now)
        )
    except click.BadParameter as e:
        raise QueryError(str(e.message)) from None


def _audit(request: web.Request, status: int, rows: int) -> None:
    path = request.app[AUDIT_KEY]
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "remote": request.remote,
        "path": request.path,
        "query": {k: request.query.getall(k) for k in request.query},
        "status": status,
        "rows": rows,
    }
    with path.open("ab") as f:
        f.write(orjson.dumps(entry) + b"\n")


async def _answer(request: web.Request, run: Any) -> web.Response:
    try:
        rows = run()
    except (QueryError, reads.ModelReadError, re.error, ValueError) as e:
        _audit(request, 400, 0)
        return _json({"error": str(e)}, status=400)
    _audit(request, 200, len(rows))
    return _json({"rows": rows})


async def logs(request: web.Request) -> web.Response:
    q = request.query
    store = request.app[STORE_KEY]
    return await _answer(
        request,
        lambda: LogQuery(store).run(
            services=q.getall("service", []) or None,
            time=_range(request),
            min_severity=q.get("severity"),
            template=q.get("template"),
            text=q.get("text"),
            limit=int(q.get("limit", "100")),
        ),
    )


async def traces(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return await _answer(
        request, lambda: trace(store, request.match_info["trace_id"].lower(), _range(request))
    )


async def metrics(request: web.Request) -> web.Response:
    q = request.query
    store = request.app[STORE_KEY]

    def run() -> list[dict[str, Any]]:
        name = q.get("name")
        if not name:
            raise QueryError("name is required")
        labels = {}
        for pair in q.getall("label", []):
            key, sep, value = pair.partition("=")
            if not sep:
                raise QueryError(f"label {pair!r}: expected key=value")
            labels[key] = value
        return metric_series(
            store,
            name,
            labels=labels,
            time=_range(request),
            step_s=float(q.get("step", "60")),
            agg=q.get("agg", "mean"),
        )

    return await _answer(request, run)


async def templates(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return await _answer(
        request,
        lambda: [
            {"template_id": k, "template": v}
            for k, v in sorted(LogQuery(store).templates().items())
        ],
    )


MODEL_PREFIX = "/api/v1/model"


def _at(request: web.Request, name: str = "at") -> int | None:
    try:
        return parse_time(request.query.get(name), dt.datetime.now(dt.UTC))
    except click.BadParameter as e:
        raise QueryError(str(e.message)) from None


async def _answer_text(request: web.Request, run: Any, content_type: str) -> web.Response:
    try:
        text = run()
    except (QueryError, reads.ModelReadError, ValueError) as e:
        _audit(request, 400, 0)
        return _json({"error": str(e)}, status=400)
    _audit(request, 200, 1)
    return web.Response(text=text, content_type=content_type)


async def model_graph(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    fmt = request.query.get("format", "json")
    return await _answer_text(
        request,
        lambda: reads.graph(reads.load(store), _at(request), fmt),
        "text/vnd.graphviz" if fmt == "dot" else "application/json",
    )


async def model_neighbourhood(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    q = request.query
    return await _answer_text(
        request,
        lambda: reads.neighbourhood(
            reads.load(store), q.get("entity", ""), int(q.get("hops", "1")), _at(request)
        ),
        "application/json",
    )


async def model_baseline(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    q = request.query
    return await _answer_text(
        request,
        lambda: reads.dumps(
            reads.baseline(
                reads.load(store), q.get("entity", ""), q.get("signal", ""), _at(request)
            )
        ),
        "application/json",
    )


async def model_deviations(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return await _answer(request, lambda: reads.deviations(reads.load(store)))


async def model_changes(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return await _answer(
        request,
        lambda: reads.changes(reads.load(store), _at(request, "since"), _at(request, "until")),
    )


def _bearer(token: str | None) -> list[Any]:
    """A middleware refusing a request without ``Authorization: Bearer <token>`` (401, audited)
    when a token is configured: the API shows what the team's systems do, so it is guarded as
    the receivers are."""
    if token is None:
        return []
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            _audit(request, 401, 0)
            refused = _json({"error": "missing or wrong bearer token"}, 401)
            refused.headers["WWW-Authenticate"] = "Bearer"
            return refused
        response: web.StreamResponse = await handler(request)
        return response

    return [require_token]


def build_model_app(settings: Settings, token: str | None = None) -> web.Application:
    """``/api/v1/model/``: graph, neighbourhood, baseline, deviations, changes (read-only);
    ``token``: when set, every request needs it as a bearer token."""
    app = web.Application(middlewares=_bearer(token))
    app[STORE_KEY] = SegmentStore(settings.data_dir / "segments")
    app[AUDIT_KEY] = settings.data_dir / "audit" / "api.jsonl"
    app.router.add_get("/graph", model_graph)
    app.router.add_get("/neighbourhood", model_neighbourhood)
    app.router.add_get("/baseline", model_baseline)
    app.router.add_get("/deviations", model_deviations)
    app.router.add_get("/changes", model_changes)
    return app


def build_query_app(settings: Settings, token: str | None = None) -> web.Application:
    """``/api/v1/query/``: logs, traces, metrics, templates (read-only); ``token``: when set,
    every request needs it as a bearer token."""
    app = web.Application(middlewares=_bearer(token))
    app[STORE_KEY] = SegmentStore(settings.data_dir / "segments")
    app[AUDIT_KEY] = settings.data_dir / "audit" / "api.jsonl"
    app.router.add_get("/logs", logs)
    app.router.add_get("/traces/{trace_id}", traces)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/templates", templates)
    return app
