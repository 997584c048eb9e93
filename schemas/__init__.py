"""The contracts of worldline: a JSON Schema per JSON topic, Arrow schemas per segment kind.

Files are named like the topic they describe (``alerts.schema.json``); example payloads live in
``examples/<topic>.json`` (a JSON array) and are validated by the test suite, so a schema and its
examples cannot drift apart.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

SCHEMA_SUFFIX = ".schema.json"


class SchemaViolation(ValueError):
    """A payload does not follow its topic's schema; the message says where and why."""


def _read(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


@functools.cache
def json_schema(file_name: str) -> dict[str, Any]:
    """The parsed JSON Schema document ``schemas/<file_name>``."""
    schema: dict[str, Any] = _read(file_name)
    Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def validator(file_name: str) -> Draft202012Validator:
    return Draft202012Validator(
        json_schema(file_name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def validate(file_name: str, payload: Any) -> None:
    """Raise SchemaViolation with the first error's path and message if payload is invalid."""
    errors = sorted(validator(file_name).iter_errors(payload), key=lambda e: list(e.path))
    if errors:
        err: jsonschema.ValidationError = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise SchemaViolation(f"{file_name}: at {where}: {err.message}")


def examples(topic: str) -> list[Any]:
    """Example payloads for a topic (or a segment kind), from ``examples/<name>.json``."""
    data = _read(f"examples/{topic}.json")
    if not isinstance(data, list):
        raise ValueError(f"examples/{topic}.json must hold a JSON array")
    return data


def available_examples() -> list[str]:
    folder = resources.files(__name__).joinpath("examples")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def available_json_schemas() -> list[str]:
    folder = resources.files(__name__)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(SCHEMA_SUFFIX))
