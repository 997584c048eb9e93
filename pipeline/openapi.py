"""The OpenAPI 3.1 document of the read-only HTTP API, served at ``/api/v1/openapi.json``.

Written by hand: the routes are few, and aiohttp has no schema layer to derive it from. The test
suite validates it (``openapi-spec-validator``) and checks that it names every API route the
server mounts, so the document and the routes cannot drift apart.
"""

from __future__ import annotations

from typing import Any

OPENAPI_PATH = "/api/v1/openapi.json"

_ERROR = {"$ref": "#/components/responses/Error"}
_COMMON_ERRORS = {
    "400": _ERROR,
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "408": {"$ref": "#/components/responses/Timeout"},
}


def _param(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


_TIME = {"type": "string", "examples": ["15m", "2026-11-20T14:00:00Z", "1763647200"]}
_SINCE = _param("since", "Start: RFC 3339, unix seconds, or a duration ago (15m, 2h, 7d).", _TIME)
_UNTIL = _param("until", "End, same forms as since.", _TIME)
_LIMIT = {"$ref": "#/components/parameters/limit"}
_CURSOR = {"$ref": "#/components/parameters/cursor"}


def _page_of(row: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["rows", "next"],
                        "properties": {
                            "rows": {"type": "array", "items": row},
                            "next": {"$ref": "#/components/schemas/Next"},
                        },
                    }
                }
            },
        },
        **_COMMON_ERRORS,
    }


def _json_doc(description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **_COMMON_ERRORS,
    }


_ENTITY = _param(
    "entity", "An entity as kind:name, e.g. service:checkout.", {"type": "string"}, required=True
)
_AT = _param("at", "As of this time (default: the model's watermark); same forms as since.", _TIME)

_PATHS: dict[str, Any] = {
    "/api/v1/query/logs": {
        "get": {
            "operationId": "queryLogs",
            "summary": "Log lines by service, time, severity, template and text, oldest first.",
            "parameters": [
                _param(
                    "service", "Only these services (repeatable).", {"type": "string"}, explode=True
                ),
                _SINCE,
                _UNTIL,
                _param(
                    "severity",
                    "Minimum severity: a number 1-24 or trace, debug, info, warn, error, fatal.",
                    {"type": "string"},
                ),
                _param(
                    "template",
                    "Regular expression over template texts (Rust regex syntax: linear time,"
                    " no look-around or back-references).",
                    {"type": "string"},
                ),
                _param("text", "Literal text the rebuilt line contains.", {"type": "string"}),
                _LIMIT,
                _CURSOR,
            ],
            "responses": _page_of(
                {"$ref": "#/components/schemas/LogLine"},
                "A page of log lines (a text query can leave a page short and still have a next).",
            ),
        }
    },
    "/api/v1/query/traces/{trace_id}": {
        "get": {
            "operationId": "queryTrace",
            "summary": "The stored spans of one trace by start time.",
            "parameters": [
                {
                    "name": "trace_id",
                    "in": "path",
                    "required": True,
                    "description": "32 hex characters.",
                    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                },
                _SINCE,
                _UNTIL,
                _LIMIT,
                _CURSOR,
            ],
            "responses": _page_of({"type": "object"}, "A page of spans (OTLP fields, hex ids)."),
        }
    },
    "/api/v1/query/metrics": {
        "get": {
            "operationId": "queryMetrics",
            "summary": "Series of one metric matching labels, aggregated per step.",
            "parameters": [
                _param("name", "Metric name.", {"type": "string"}, required=True),
                _param(
                    "label",
                    "key=value a point or resource attribute must equal (repeatable).",
                    {"type": "string"},
                    explode=True,
                ),
                _SINCE,
                _UNTIL,
                _param(
                    "step", "Bucket width in seconds.", {"type": "number", "exclusiveMinimum": 0}
                ),
                _param(
                    "agg",
                    "Aggregation per bucket.",
                    {"type": "string", "enum": ["mean", "max", "min", "sum", "last", "count"]},
                ),
                _LIMIT,
                _CURSOR,
            ],
            "responses": _page_of(
                {"$ref": "#/components/schemas/Series"}, "A page of series (limit counts series)."
            ),
        }
    },
    "/api/v1/query/templates": {
        "get": {
            "operationId": "queryTemplates",
            "summary": "The log template dictionary by template id.",
            "parameters": [_LIMIT, _CURSOR],
            "responses": _page_of(
                {
                    "type": "object",
                    "properties": {
                        "template_id": {"type": "integer"},
                        "template": {"type": "string"},
                    },
                },
                "A page of templates.",
            ),
        }
    },
    "/api/v1/model/graph": {
        "get": {
            "operationId": "modelGraph",
            "summary": "The learned dependency graph as of a time.",
            "parameters": [
                _AT,
                _param("format", "Output format.", {"type": "string", "enum": ["json", "dot"]}),
            ],
            "responses": {
                "200": {
                    "description": "Node-link JSON, or Graphviz dot with format=dot.",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/vnd.graphviz": {"schema": {"type": "string"}},
                    },
                },
                **_COMMON_ERRORS,
            },
        }
    },
    "/api/v1/model/neighbourhood": {
        "get": {
            "operationId": "modelNeighbourhood",
            "summary": "An entity's neighbourhood in the dependency graph.",
            "parameters": [
                _ENTITY,
                _param("hops", "How far to go.", {"type": "integer", "minimum": 0, "maximum": 10}),
                _AT,
            ],
            "responses": _json_doc("Node-link JSON of the neighbourhood."),
        }
    },
    "/api/v1/model/baseline": {
        "get": {
            "operationId": "modelBaseline",
            "summary": "The baseline of one series and its current deviation.",
            "parameters": [
                _ENTITY,
                _param("signal", "Signal name.", {"type": "string"}, required=True),
                _AT,
            ],
            "responses": _json_doc("Expected value, spread, tier, deviation."),
        }
    },
    "/api/v1/model/deviations": {
        "get": {
            "operationId": "modelDeviations",
            "summary": "What deviates from its baseline now, largest score first.",
            "parameters": [_LIMIT, _CURSOR],
            "responses": _page_of({"type": "object"}, "A page of deviations."),
        }
    },
    "/api/v1/model/changes": {
        "get": {
            "operationId": "modelChanges",
            "summary": "Recorded changes (deploys, config pushes, flag flips) by time.",
            "parameters": [_SINCE, _UNTIL, _LIMIT, _CURSOR],
            "responses": _page_of({"type": "object"}, "A page of change records."),
        }
    },
    OPENAPI_PATH: {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        }
    },
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Required on every route but /healthz when http_token_file is set.",
        }
    },
    "parameters": {
        "limit": {
            "name": "limit",
            "in": "query",
            "description": "Rows per page: default query_limit_default (100), at most"
            " query_limit_max (10000); outside 1..max: 400.",
            "schema": {"type": "integer", "minimum": 1},
        },
        "cursor": {
            "name": "cursor",
            "in": "query",
            "description": "The next of the previous page, to read the page after it.",
            "schema": {"type": "string"},
        },
    },
    "schemas": {
        "Next": {
            "description": "Opaque cursor of the following page; null when this page is the last.",
            "type": ["string", "null"],
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "LogLine": {
            "type": "object",
            "properties": {
                "time_unix_nano": {"type": "integer"},
                "service": {"type": ["string", "null"]},
                "severity_number": {"type": ["integer", "null"]},
                "severity_text": {"type": ["string", "null"]},
                "template_id": {"type": "integer"},
                "template": {"type": ["string", "null"]},
                "partition": {"type": "integer"},
                "line": {"type": "string"},
                "trace_id": {"type": ["string", "null"]},
                "span_id": {"type": ["string", "null"]},
            },
        },
        "Series": {
            "type": "object",
            "properties": {
                "series_id": {"type": "integer"},
                "kind": {"type": "string"},
                "service": {"type": ["string", "null"]},
                "labels": {"type": "object"},
                "points": {
                    "type": "array",
                    "description": "[bucket start unix nanoseconds, value]",
                    "items": {"type": "array", "prefixItems": [{"type": "integer"}, {}]},
                },
            },
        },
    },
    "responses": {
        "Error": {
            "description": "A bad argument; the message says which and why.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
        "Unauthorized": {
            "description": "Missing or wrong bearer token (a token is configured).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
        "Timeout": {
            "description": "The query ran past query_timeout_s.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "worldline query API",
            "version": "1",
            "description": "Read-only queries over the stored telemetry and the world model."
            " Paged answers are {rows, next}; pass next back as cursor for the following page.",
        },
        "paths": _PATHS,
        "components": _COMPONENTS,
        # the token is required only when one is configured (http_token_file)
        "security": [{"bearer": []}, {}],
    }
