"""``worldline query``: logs, traces and metric series from the segment store, as JSON lines."""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any

import click
import orjson

from pipeline.query import LogQuery, QueryError, TimeRange, metric_series, trace
from pipeline.segments.store import SegmentStore

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, now: dt.datetime) -> int | None:
    """RFC 3339, unix seconds, or a duration before ``now`` ("15m", "2h") -> unix nanoseconds."""
    if value is None:
        return None
    rel = _RELATIVE.match(value)
    if rel:
        return int((now.timestamp() - float(rel.group(1)) * _UNITS[rel.group(2)]) * 1e9)
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use RFC 3339, unix seconds or a duration like 15m"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1e9)


def _emit(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")


def _store(ctx: click.Context) -> SegmentStore:
    settings = ctx.obj.settings
    return SegmentStore(settings.data_dir / "segments")


def _range(since: str | None, until: str | None) -> TimeRange:
    now = dt.datetime.now(dt.UTC)
    return TimeRange(parse_time(since, now), parse_time(until, now))


_since = click.option(
    "--since",
    metavar="TIME",
    help="Start: RFC 3339, unix seconds, or a duration ago (15m, 2h, 7d).",
)
_until = click.option("--until", metavar="TIME", help="End, same forms as --since.")


@click.group()
def query() -> None:
    """Query the stored telemetry (segments under <data_dir>/segments), printed as JSON lines.

    \b
    Examples:
      worldline query logs --service checkout --severity error --since 1h
      worldline query logs --template 'timeout after' --text 'payment'
      worldline query trace 4bf92f3577b34da6a3ce929d0e0e4736
      worldline query metrics process.cpu.utilization --label service.name=cart --step 60 --agg max
    """


@query.command()
@click.option("--service", "services", multiple=True, help="Only these services (repeatable).")
@_since
@_until
@click.option(
    "--severity", help="Minimum severity: a number 1-24 or trace/debug/info/warn/error/fatal."
)
@click.option(
    "--template", help="Regular expression on the template text (e.g. 'timeout after <\\*>')."
)
@click.option("--text", help="Substring of the original line.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.pass_context
def logs(
    ctx: click.Context,
    services: tuple[str, ...],
    since: str | None,
    until: str | None,
    severity: str | None,
    template: str | None,
    text: str | None,
    limit: int,
) -> None:
    """Log lines, rebuilt exactly from their template and parameters."""
    try:
        rows = LogQuery(_store(ctx)).run(
            services=list(services) or None,
            time=_range(since, until),
            min_severity=severity,
            template=template,
            text=text,
            limit=limit,
        )
    except (QueryError, re.error) as e:
        raise click.UsageError(str(e)) from None
    _emit(rows)


@query.command(name="trace")
@click.argument("trace_id")
@_since
@_until
@click.pass_context
def trace_cmd(ctx: click.Context, trace_id: str, since: str | None, until: str | None) -> None:
    """Every span of one trace, by start time."""
    try:
        _emit(trace(_store(ctx), trace_id.lower(), _range(since, until)))
    except QueryError as e:
        raise click.UsageError(str(e)) from None


@query.command()
@click.argument("name")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Point or resource attribute to match (repeatable).",
)
@_since
@_until
@click.option("--step", type=float, default=60.0, show_default=True, help="Step in seconds.")
@click.option(
    "--agg", default="mean", show_default=True, help="mean, max, min, sum, last or count per step."
)
@click.pass_context
def metrics(
    ctx: click.Context,
    name: str,
    labels: tuple[str, ...],
    since: str | None,
    until: str | None,
    step: float,
    agg: str,
) -> None:
    """Series of one metric, aggregated per step, one JSON line per series."""
    wanted: dict[str, str] = {}
    for pair in labels:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--label")
        wanted[key] = value
    try:
        _emit(
            metric_series(
                _store(ctx), name, labels=wanted, time=_range(since, until), step_s=step, agg=agg
            )
        )
    except QueryError as e:
        raise click.UsageError(str(e)) from None
