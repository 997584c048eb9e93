"""``worldline simulate``: list the scenarios, or run one into a replay bundle or onto Kafka.

The shell reads the wall clock (to place the run just before now) and the settings; the
simulation itself gets the start time as an argument and is deterministic from the seed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobs.simulator import scenarios
from jobs.simulator.bundle import BundleWriter
from jobs.simulator.changes import iso
from jobs.simulator.simulation import Record, RunConfig, Simulation
from jobs.simulator.sink import send_records
from pipeline import kafka as pipeline_kafka
from pipeline.platform import NoBrokerError, find_bootstrap
from pipeline.settings import Settings, SettingsError
from pipeline.settings import load as load_settings

console = Console(stderr=True, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def simulate() -> None:
    """Incident simulator: realistic microservice telemetry with injected faults."""


@simulate.command("list")
def list_scenarios() -> None:
    """List the scenarios, one line each."""
    width = max(len(n) for n in scenarios.SCENARIOS)
    for name, scenario in scenarios.SCENARIOS.items():
        click.echo(f"{name:<{width}}  {scenario.description}")


def _parse_start(value: str | None, total_s: float, pace: str) -> float:
    if value:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    now = float(int(time.time()))
    return now if pace == "realtime" else now - total_s


@simulate.command("run")
@click.option(
    "--scenario", default="normal", show_default=True, type=click.Choice(list(scenarios.SCENARIOS))
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--services", default=30, show_default=True, type=click.IntRange(10, 500), help="Topology size."
)
@click.option(
    "--duration",
    default=900.0,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="Time after the fault onset.",
)
@click.option(
    "--warmup",
    default=1800.0,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="History before the fault onset.",
)
@click.option(
    "--pace",
    default="fast",
    show_default=True,
    type=click.Choice(["realtime", "fast"]),
    help="Kafka only: send at event-time pace, or as fast as possible.",
)
@click.option(
    "--rate",
    default=150.0,
    show_default=True,
    type=float,
    help="Edge requests/s at the daily peak.",
)
@click.option(
    "--slice",
    "slice_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(1.0, 60.0),
    metavar="SECONDS",
    help="Simulation step; longer steps generate faster but resolve the resource model coarser.",
)
@click.option(
    "--standing-condition",
    "standing_condition_s",
    default=None,
    type=click.FloatRange(0.0, min_open=True),
    metavar="SECONDS",
    help="Also grow another busy service's heap to a new level this long before the fault, and"
    " keep it there, harmlessly: what an earlier incident or change leaves standing"
    " (labelled, naming it is a wrong answer).",
)
@click.option(
    "--start",
    default=None,
    metavar="RFC3339",
    help="Event time of the first record (default: just before now).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write a replay bundle here.",
)
@click.option(
    "--kafka", is_flag=True, help="Send to the broker (configured servers or the running platform)."
)
@click.pass_context
def run(
    ctx: click.Context,
    scenario: str,
    seed: int,
    services: int,
    duration: float,
    warmup: float,
    pace: str,
    rate: float,
    slice_s: float,
    standing_condition_s: float | None,
    start: str | None,
    out_dir: Path | None,
    kafka: bool,
) -> None:
    """Run a scenario into a replay bundle (--out) and/or onto Kafka (--kafka)."""
    if not out_dir and not kafka:
        raise click.UsageError("choose a destination: --out DIR and/or --kafka")
    if standing_condition_s is not None and scenario == "normal":
        raise click.UsageError(
            "--standing-condition stands beside a fault: choose a fault scenario"
        )
    if standing_condition_s is not None and standing_condition_s > warmup:
        raise click.UsageError(
            f"--standing-condition {standing_condition_s:g} begins before the run does"
            f" (--warmup {warmup:g}): it would be part of the normal history"
        )
    config = RunConfig(
        start_s=_parse_start(start, warmup + duration, pace),
        scenario=scenario,
        seed=seed,
        services=services,
        warmup_s=warmup,
        duration_s=duration,
        peak_rate=rate,
        slice_s=slice_s,
        standing_condition_s=standing_condition_s,
    )
    sim = Simulation(config)
    labels = sim.labels()
    console.print(
        f"scenario [bold]{scenario}[/] seed {seed}: {len(sim.topology.services)} services,"
        f" {len(sim.topology.pods)} pods, {iso(config.start_s)} .. {iso(config.end_s)}, onset {iso(config.onset_s)}"
    )
    settings: Settings | None = None
    bootstrap: str | None = None
    if kafka:
        settings = _settings(ctx)
        try:
            bootstrap = find_bootstrap(settings)
        except NoBrokerError as e:
            raise click.ClickException(str(e)) from None
        asyncio.run(pipeline_kafka.ensure_topics(settings, bootstrap))
    writer = BundleWriter(out_dir) if out_dir else None
    totals = {"spans": 0, "records": 0}
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[spans]:,} spans"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("simulating", total=sim.n_slices, spans=0)

        def records() -> Iterator[Record]:
            for result in sim.slices():
                totals["spans"] += result.span_count
                for record in result.records:
                    totals["records"] += 1
                    if writer is not None:
                        writer.write(record)
                    yield record
                progress.update(task, advance=1, spans=totals["spans"])

        if settings is not None and bootstrap is not None:
            asyncio.run(
                send_records(
                    bootstrap,
                    records(),
                    settings.topic,
                    pace="realtime" if pace == "realtime" else "fast",
                )
            )
        else:
            for _ in records():
                pass
    if writer is not None and out_dir is not None:
        writer.close(labels, {**config.__dict__, "onset_s": config.onset_s, "end_s": config.end_s})
        console.print(
            f"bundle written to {out_dir} ({totals['records']:,} records, labels in labels.json)"
        )
    console.print(f"{totals['spans']:,} spans, {totals['records']:,} records")


def _settings(ctx: click.Context) -> Settings:
    """The settings of the enclosing ``worldline`` command, else loaded the usual way."""
    found = getattr(ctx.find_root().obj, "settings", None)
    if isinstance(found, Settings):
        return found
    try:
        settings, _sources = load_settings()
    except SettingsError as e:
        raise click.ClickException(str(e)) from None
    return settings
