"""``worldline model``: read the world model (graph, baselines, deviations, changes)."""

from __future__ import annotations

import datetime as dt

import click

from pipeline.query_cli import parse_time
from pipeline.segments.store import SegmentStore
from pipeline.worldmodel import reads


def _store(ctx: click.Context) -> SegmentStore:
    return SegmentStore(ctx.obj.settings.data_dir / "segments")


def _model(ctx: click.Context) -> reads.WorldModel:
    try:
        return reads.load(_store(ctx))
    except reads.ModelReadError as e:
        raise click.ClickException(str(e)) from None


def _at(value: str | None) -> int | None:
    return parse_time(value, dt.datetime.now(dt.UTC))


_at_option = click.option(
    "--at",
    metavar="TIME",
    help="As of this time (RFC 3339, unix s, or 15m ago); default: the model's watermark.",
)


@click.group()
def model() -> None:
    """Read the world model the world-model stage keeps (from its last checkpoint).

    \b
    Examples:
      worldline model graph --format dot > graph.dot
      worldline model neighbourhood service:checkout --hops 2
      worldline model baseline service:checkout span.latency_p95_ms --recent 1h
      worldline model deviations
      worldline model changes --since 2h
    """


@model.command()
@_at_option
@click.option(
    "--format", "fmt", type=click.Choice(["json", "dot"]), default="json", show_default=True
)
@click.pass_context
def graph(ctx: click.Context, at: str | None, fmt: str) -> None:
    """The dependency graph valid at a time (node-link JSON or Graphviz dot)."""
    click.echo(reads.graph(_model(ctx), _at(at), fmt))


@model.command()
@click.argument("entity")
@click.option("--hops", type=click.IntRange(min=1), default=1, show_default=True)
@_at_option
@click.pass_context
def neighbourhood(ctx: click.Context, entity: str, hops: int, at: str | None) -> None:
    """Everything within HOPS edges of ENTITY (kind:name, e.g. service:checkout)."""
    try:
        click.echo(reads.neighbourhood(_model(ctx), entity, hops, _at(at)))
    except reads.ModelReadError as e:
        raise click.UsageError(str(e)) from None


@model.command()
@click.argument("entity")
@click.argument("signal")
@_at_option
@click.option(
    "--recent",
    metavar="DURATION",
    help="Also recompute the values of this window from the segments, e.g. 1h.",
)
@click.pass_context
def baseline(
    ctx: click.Context, entity: str, signal: str, at: str | None, recent: str | None
) -> None:
    """The baseline of one series (expected level, spread, current deviation)."""
    m = _model(ctx)
    try:
        out = reads.baseline(m, entity, signal, _at(at))
        if recent:
            now = dt.datetime.now(dt.UTC)
            since = parse_time(recent, now)
            assert since is not None
            until = int(now.timestamp() * 1e9)
            out["recent"] = reads.recent_values(
                _store(ctx), entity, signal, since, until, m.config.interval_s
            )
    except reads.ModelReadError as e:
        raise click.UsageError(str(e)) from None
    click.echo(reads.dumps(out))


@model.command()
@click.pass_context
def deviations(ctx: click.Context) -> None:
    """Sustained deviations in progress, strongest first, with their onset."""
    for row in reads.deviations(_model(ctx)):
        click.echo(reads.dumps(row))


@model.command()
@click.option("--since", metavar="TIME")
@click.option("--until", metavar="TIME")
@click.pass_context
def changes(ctx: click.Context, since: str | None, until: str | None) -> None:
    """Changes in a window: from the changes topic and deploys inferred from service.version."""
    for row in reads.changes(_model(ctx), _at(since), _at(until)):
        click.echo(reads.dumps(row))
