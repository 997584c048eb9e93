"""The query API over HTTP (read-only): logs, traces, metric series, the template dictionary,
and reads of the world model.

Mounted next to the receivers (``mount_api``): ``/api/v1/query/``, ``/api/v1/model/`` and the
OpenAPI document at ``/api/v1/openapi.json``. Every request is written to the audit log
(``<data_dir>/audit/api.jsonl``: time, remote address, path, parameters, status, rows).

    GET /api/v1/query/logs?service=checkout&severity=error&since=15m&template=...&text=...&limit=100
    GET /api/v1/query/traces/{trace_id}
    GET /api/v1/query/metrics?name=process.cpu.utilization&label=service.name=cart&step=60&agg=max
    GET /api/v1/query/templates

Queries run on a small pool of threads (``query_threads``), never on the event loop, so the
receivers and ``/healthz`` answer while a query scans. Each has a time limit
(``query_timeout_s``: 408 past it) and answers at most ``limit`` rows (default
``query_limit_default``, at most ``query_limit_max``); a longer answer ends with an opaque
``next`` cursor, passed back as ``cursor`` for the following page. Answers are
``{"rows": [...], "next": "<cursor>" | null}``; errors ``{"error": "..."}`` (400, 401, 408).
Every request first picks up the segments sealed since the previous one, so new data is visible
as soon as its segment is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import orjson
from aiohttp import web

from pipeline.openapi import OPENAPI_PATH, document
from pipeline.query import (
    After,
    LogQuery,
    Page,
    QueryError,
    TimeRange,
    list_page,
    metric_page,
    trace_page,
)
from pipeline.query_cli import parse_time
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel import reads

log = logging.getLogger(__name__)

QUERY_PREFIX = "/api/v1/query"
MODEL_PREFIX = "/api/v1/model"


class QueryService:
    """What every API route shares: the store, the audit log, the limits, and the threads the
    queries run on (a query that outlives its time limit keeps its thread until it ends, so at
    most ``query_threads`` of them can run at once; the others wait, within their own limit)."""

    def __init__(self, settings: Settings) -> None:
        self.store = SegmentStore(settings.data_dir / "segments")
        self.audit_path = settings.data_dir / "audit" / "api.jsonl"
        self.timeout_s = settings.query_timeout_s
        self.max_limit = settings.query_limit_max
        self.default_limit = min(settings.query_limit_default, settings.query_limit_max)
        self.executor = ThreadPoolExecutor(
            settings.query_threads, thread_name_prefix="worldline-query"
        )

    async def run(self, query: Callable[[], Any]) -> Any:
        """``query`` on the query threads, after picking up newly sealed segments; TimeoutError
        past the time limit (waiting for a thread included)."""

        def fresh() -> Any:
            self.store.refresh_changed()
            return query()

        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.executor, fresh), self.timeout_s)

    async def warm_up(self, _app: web.Application | None = None) -> None:
        """Read the store's manifests at start, in the background: the first read of a large
        store validates every manifest, which should not count against the first query."""
        future = asyncio.get_running_loop().run_in_executor(
            self.executor, self.store.refresh_changed
        )
        future.add_done_callback(_log_failure)

    async def close(self, _app: web.Application | None = None) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


SERVICE_KEY = web.AppKey("query_service", QueryService)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("reading the segment manifests failed: %s", future.exception())


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


def _at(request: web.Request, name: str = "at") -> int | None:
    try:
        return parse_time(request.query.get(name), dt.datetime.now(dt.UTC))
    except click.BadParameter as e:
        raise QueryError(str(e.message)) from None


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name} {raw!r}: expected a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise QueryError(f"{name} {value}: must be from {low} to {high}")
    return value


def _limit(request: web.Request) -> int:
    service = request.app[SERVICE_KEY]
    return _int(request, "limit", service.default_limit, 1, service.max_limit)


def encode_cursor(after: After | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode(orjson.dumps([after.key, after.skip])).decode().rstrip("=")


def decode_cursor(request: web.Request) -> After | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        key, skip = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not (isinstance(key, int) and isinstance(skip, int) and skip >= 0):
            raise ValueError
    except (binascii.Error, ValueError, TypeError):
        raise QueryError(
            f"cursor {raw[:80]!r} is not one this API gave: pass the 'next' of the previous page"
        ) from None
    return After(key, skip)


def _audit(request: web.Request, status: int, rows: int) -> None:
    path = request.app[SERVICE_KEY].audit_path if SERVICE_KEY in request.app else None
    if path is None:
        return
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


async def _run(
    request: web.Request,
    query: Callable[[], Any],
    answer: Callable[[Any], tuple[web.Response, int]],
) -> web.Response:
    """Run ``query`` off the event loop within the time limit; 400 for a bad argument, 408 past
    the limit; ``answer`` turns the result into the response and its row count (audited)."""
    service = request.app[SERVICE_KEY]
    try:
        result = await service.run(query)
    except (QueryError, reads.ModelReadError, ValueError) as e:
        _audit(request, 400, 0)
        return _json({"error": str(e)}, status=400)
    except TimeoutError:
        _audit(request, 408, 0)
        return _json(
            {
                "error": f"the query ran past its time limit of {service.timeout_s:g} s"
                " (query_timeout_s): narrow it (a shorter time range, a service, a smaller limit)"
            },
            status=408,
        )
    response, rows = answer(result)
    _audit(request, 200, rows)
    return response


async def _page(request: web.Request, query: Callable[[], Page]) -> web.Response:
    def answer(page: Page) -> tuple[web.Response, int]:
        return _json({"rows": page.rows, "next": encode_cursor(page.next)}), len(page.rows)

    return await _run(request, query, answer)


async def _text(request: web.Request, query: Callable[[], str], content_type: str) -> web.Response:
    def answer(text: str) -> tuple[web.Response, int]:
        return web.Response(text=text, content_type=content_type), 1

    return await _run(request, query, answer)


# -- /api/v1/query ----------------------------------------------------------------------------


async def logs(request: web.Request) -> web.Response:
    q = request.query
    store = request.app[SERVICE_KEY].store
    limit, after, time = _limit_after_time(request)
    return await _page(
        request,
        lambda: LogQuery(store).page(
            services=q.getall("service", []) or None,
            time=time,
            min_severity=q.get("severity"),
            template=q.get("template"),
            text=q.get("text"),
            limit=limit,
            after=after,
        ),
    )


def _limit_after_time(request: web.Request) -> tuple[int, After | None, TimeRange]:
    # parsed on the event loop: cheap, and a bad one answers 400 before any thread is used
    return _limit(request), decode_cursor(request), _range(request)


async def traces(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    trace_id = request.match_info["trace_id"].lower()
    limit, after, time = _limit_after_time(request)
    return await _page(request, lambda: trace_page(store, trace_id, time, limit=limit, after=after))


async def metrics(request: web.Request) -> web.Response:
    q = request.query
    store = request.app[SERVICE_KEY].store
    limit, after, time = _limit_after_time(request)
    name = q.get("name")
    if not name:
        raise QueryError("name is required")
    labels = {}
    for pair in q.getall("label", []):
        key, sep, value = pair.partition("=")
        if not sep:
            raise QueryError(f"label {pair!r}: expected key=value")
        labels[key] = value
    try:
        step_s = float(q.get("step", "60"))
    except ValueError:
        raise QueryError(f"step {q.get('step')!r}: expected seconds, e.g. 60") from None
    return await _page(
        request,
        lambda: metric_page(
            store,
            name,
            labels=labels,
            time=time,
            step_s=step_s,
            agg=q.get("agg", "mean"),
            limit=limit,
            after=after,
        ),
    )


async def templates(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    limit, after = _limit(request), decode_cursor(request)

    def query() -> Page:
        rows = [
            {"template_id": k, "template": v}
            for k, v in sorted(LogQuery(store).templates().items())
        ]
        return Page(*list_page(rows, "template_id", after, limit))

    return await _page(request, query)


# -- /api/v1/model ----------------------------------------------------------------------------


def _offset_page(rows: list[dict[str, Any]], after: After | None, limit: int) -> Page:
    """Rows with no key of their own, paged by position (in the checkpoint read for the page)."""
    start = after.key if after is not None else 0
    more = start + limit < len(rows)
    return Page(rows[start : start + limit], After(start + limit, 0) if more else None)


async def model_graph(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    fmt = request.query.get("format", "json")
    at = _at(request)
    return await _text(
        request,
        lambda: reads.graph(reads.load(store), at, fmt),
        "text/vnd.graphviz" if fmt == "dot" else "application/json",
    )


async def model_neighbourhood(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    q = request.query
    hops = _int(request, "hops", 1, 0, 10)
    at = _at(request)
    return await _text(
        request,
        lambda: reads.neighbourhood(reads.load(store), q.get("entity", ""), hops, at),
        "application/json",
    )


async def model_baseline(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    q = request.query
    at = _at(request)
    return await _text(
        request,
        lambda: reads.dumps(
            reads.baseline(reads.load(store), q.get("entity", ""), q.get("signal", ""), at)
        ),
        "application/json",
    )


async def model_deviations(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    limit, after = _limit(request), decode_cursor(request)
    return await _page(
        request, lambda: _offset_page(reads.deviations(reads.load(store)), after, limit)
    )


async def model_changes(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    limit, after = _limit(request), decode_cursor(request)
    since, until = _at(request, "since"), _at(request, "until")
    return await _page(
        request,
        lambda: Page(
            *list_page(
                reads.changes(reads.load(store), since, until), "time_unix_nano", after, limit
            )
        ),
    )


# -- wiring -----------------------------------------------------------------------------------


def _bad_arguments_answer_400() -> Any:
    """Arguments parsed on the event loop (limit, cursor, times) raise QueryError: a 400."""

    @web.middleware
    async def bad_arguments(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except QueryError as e:
            _audit(request, 400, 0)
            return _json({"error": str(e)}, status=400)

    return bad_arguments


def _token_ok(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def _unauthorized() -> web.Response:
    refused = _json({"error": "missing or wrong bearer token"}, 401)
    refused.headers["WWW-Authenticate"] = "Bearer"
    return refused


def _bearer(token: str | None) -> list[Any]:
    """A middleware refusing a request without ``Authorization: Bearer <token>`` (401, audited)
    when a token is configured: the API shows what the team's systems do, so it is guarded as
    the receivers are."""
    if token is None:
        return []

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        if not _token_ok(request, token):
            _audit(request, 401, 0)
            return _unauthorized()
        response: web.StreamResponse = await handler(request)
        return response

    return [require_token]


def _sub_app(
    token: str | None, service: QueryService | None, settings: Settings
) -> web.Application:
    app = web.Application(middlewares=[*_bearer(token), _bad_arguments_answer_400()])
    if service is None:
        service = QueryService(settings)
        app.on_cleanup.append(service.close)
    app[SERVICE_KEY] = service
    return app


def build_model_app(
    settings: Settings, token: str | None = None, service: QueryService | None = None
) -> web.Application:
    """``/api/v1/model/``: graph, neighbourhood, baseline, deviations, changes (read-only);
    ``token``: when set, every request needs it as a bearer token."""
    app = _sub_app(token, service, settings)
    app.router.add_get("/graph", model_graph)
    app.router.add_get("/neighbourhood", model_neighbourhood)
    app.router.add_get("/baseline", model_baseline)
    app.router.add_get("/deviations", model_deviations)
    app.router.add_get("/changes", model_changes)
    return app


def build_query_app(
    settings: Settings, token: str | None = None, service: QueryService | None = None
) -> web.Application:
    """``/api/v1/query/``: logs, traces, metrics, templates (read-only); ``token``: when set,
    every request needs it as a bearer token."""
    app = _sub_app(token, service, settings)
    app.router.add_get("/logs", logs)
    app.router.add_get("/traces/{trace_id}", traces)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/templates", templates)
    return app


def mount_api(app: web.Application, settings: Settings, token: str | None = None) -> None:
    """Add the query and model routes and the OpenAPI document to ``app``, sharing one store,
    one audit log and one pool of query threads."""
    service = QueryService(settings)
    app.on_startup.append(service.warm_up)
    app.on_cleanup.append(service.close)
    app.add_subapp(QUERY_PREFIX, build_query_app(settings, token, service))
    app.add_subapp(MODEL_PREFIX, build_model_app(settings, token, service))
    body = orjson.dumps(document())

    async def openapi(request: web.Request) -> web.Response:
        if not _token_ok(request, token):
            return _unauthorized()
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, openapi)


__all__ = [
    "MODEL_PREFIX",
    "OPENAPI_PATH",
    "QUERY_PREFIX",
    "QueryService",
    "build_model_app",
    "build_query_app",
    "mount_api",
]
