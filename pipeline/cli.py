"""The ``worldline`` command line.

Every command reads settings the same way (defaults < config file < environment < flags) and
fails at start with one line naming a wrong setting. Commands that talk to Kafka use
``bootstrap_servers`` when set, else the embedded platform started by ``worldline up``.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
from rich.table import Table

import schemas
from jobs.evaluate.cli import evaluate
from jobs.simulator.cli import simulate
from pipeline import kafka, kafka_auth, otlp, registry, topics
from pipeline.broker import BrokerError
from pipeline.cli_common import Context, console, fail, stdout
from pipeline.platform import NoBrokerError, Platform, find_bootstrap
from pipeline.query_cli import query
from pipeline.receivers.cli import receive
from pipeline.settings import Settings, SettingsError, describe, load, parse_assignments
from pipeline.worldmodel.cli import model

ALL_STAGES = list(registry.NAMES)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config file (default: $WORLDLINE_CONFIG, else ./worldline.toml if present).",
)
@click.option(
    "--bootstrap-servers",
    metavar="HOST:PORT[,...]",
    help="Use this Kafka cluster instead of the embedded broker.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where worldline keeps its data.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override any setting, e.g. --set broker_port=9092 or --set topics.alerts=am-alerts. Repeatable.",
)
@click.version_option(package_name="worldline")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: Path | None,
    bootstrap_servers: str | None,
    data_dir: Path | None,
    assignments: tuple[str, ...],
) -> None:
    """worldline: a root-cause engine for production incidents.

    It consumes telemetry from Kafka (OTLP spans, metrics and logs, Alertmanager alerts and change
    events), keeps a compressed columnar copy and a world model of the system, and publishes
    ranked, evidence-backed causes to the `causes.ranked` topic.

    \b
    Start here:
      worldline up          start the embedded platform (broker + topics) and watch it
      worldline status      topics, partitions, high-water marks and consumer groups
      worldline topics      the topic registry: what each topic carries and who uses it
      worldline config      the effective settings and where each value came from

    Settings come from defaults, then a TOML config file, then WORLDLINE_* environment
    variables, then flags; `worldline config` shows the result.
    """
    if ctx.resilient_parsing:
        return
    try:
        layer: dict[str, Any] = parse_assignments(assignments)
        if bootstrap_servers is not None:
            layer["bootstrap_servers"] = bootstrap_servers
        if data_dir is not None:
            layer["data_dir"] = data_dir
        settings, sources = load(config_file=config_file, cli=layer)
        kafka_auth.use(settings)
    except SettingsError as e:
        fail(str(e))
    ctx.obj = Context(settings, sources)


def _bootstrap(ctx: Context) -> str:
    try:
        return find_bootstrap(ctx.settings)
    except NoBrokerError as e:
        fail(str(e))


@cli.command()
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop by itself after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--status-every",
    type=float,
    default=0.0,
    metavar="SECONDS",
    help="Reprint the status table this often (0: only once at start).",
)
@click.option(
    "--stages",
    default=",".join(ALL_STAGES),
    show_default=True,
    metavar="LIST",
    help="Comma-separated stages to run as processes beside the broker ('' for none).",
)
@click.pass_obj
def up(ctx: Context, duration: float | None, status_every: float, stages: str) -> None:
    """Start the platform and keep it running until Ctrl-C.

    With no bootstrap_servers set, starts the embedded broker on a free loopback port (or
    broker_port), creates every registry topic with its partition count and prints the status.
    Ctrl-C or SIGTERM stops everything it started; nothing is left running.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(ALL_STAGES))
    if unknown:
        fail(f"--stages: unknown stage {unknown[0]!r}; known: {', '.join(ALL_STAGES)}")
    platform = Platform(ctx.settings, stages=wanted)
    try:
        with console.status("starting worldline") as status:
            platform.on_step = lambda msg: status.update(msg)
            platform.start()
        platform.on_step = lambda msg: console.print(f"[dim]{msg}[/]")
        where = "embedded broker" if platform.broker else "external Kafka"
        console.print(f"[green]worldline is up[/] on {where} {platform.bootstrap_servers}")
        _print_status(ctx.settings, platform.bootstrap_servers)
        console.print("press Ctrl-C to stop" if duration is None else f"stopping in {duration:g}s")
        started = time.monotonic()
        last_status = started
        while duration is None or time.monotonic() - started < duration:
            time.sleep(0.2)
            if platform.broker is not None and not platform.broker.alive():
                held = (
                    f"its records are kept in {ctx.settings.broker_storage}"
                    if ctx.settings.durable_broker
                    else "every record it held is gone (it keeps them in memory)"
                )
                fail(
                    f"the embedded broker exited: {held}; stopping every stage."
                    " Start worldline again.",
                    code=1,
                )
            if platform.supervisor is not None:
                from pipeline.workers import stats_path, write_stats

                for r in platform.supervisor.restart_crashed(time.monotonic()):
                    console.print(
                        f"[yellow]stage {r.stage} exited with code {r.returncode}; restarted"
                        f" after {r.waited_s:.0f} s (restart {r.restarts});"
                        f" see {platform.supervisor.settings.data_dir}/logs/{r.stage}.log[/]"
                    )
                    write_stats(
                        stats_path(ctx.settings, "supervisor"),
                        {"restarts": dict(platform.supervisor.restarts)},
                    )
            if status_every > 0 and time.monotonic() - last_status >= status_every:
                _print_status(ctx.settings, platform.bootstrap_servers)
                last_status = time.monotonic()
    except KeyboardInterrupt:
        console.print("stopping")
    except (BrokerError, kafka.TopicLayoutError) as e:
        fail(str(e), code=1)
    finally:
        platform.stop()
    console.print("stopped")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_status(settings: Settings, bootstrap: str) -> None:
    status = asyncio.run(kafka.cluster_status(settings, bootstrap))
    table = Table(title=f"topics on {status.bootstrap_servers}", title_justify="left")
    table.add_column("topic")
    table.add_column("registry")
    table.add_column("partitions", justify="right")
    table.add_column("high-water marks", justify="right")
    table.add_column("records", justify="right")
    for t in status.topics:
        table.add_row(
            t.name,
            t.logical or "-",
            str(len(t.partitions)),
            " ".join(str(p.high_water) for p in t.partitions),
            str(t.records),
        )
    stdout().print(table)
    if status.groups:
        groups = Table(title="consumer groups", title_justify="left")
        groups.add_column("group")
        groups.add_column("state")
        groups.add_column("members", justify="right")
        groups.add_column("lag by topic")
        for g in status.groups:
            groups.add_row(
                g.group,
                g.state,
                str(g.members),
                ", ".join(f"{k}={v}" for k, v in sorted(g.lag.items())) or "-",
            )
        stdout().print(groups)
    else:
        stdout().print("consumer groups: none")


@cli.command(name="create-topics")
@click.pass_obj
def create_topics(ctx: Context) -> None:
    """Create every registry topic with its partition count on the configured Kafka.

    For clusters you run yourself (the embedded platform does this at start). Existing topics
    with enough partitions are kept; one with fewer partitions is an error.
    """
    bootstrap = _bootstrap(ctx)

    def report(name: str, partitions: int, created: bool) -> None:
        stdout().print(f"{'created' if created else 'exists '} {name} ({partitions} partitions)")

    try:
        asyncio.run(kafka.ensure_topics(ctx.settings, bootstrap, on_topic=report))
    except kafka.TopicLayoutError as e:
        fail(str(e), code=1)


@cli.command()
@click.argument("stage", type=click.Choice(registry.WORKERS))
@click.pass_obj
def worker(ctx: Context, stage: str) -> None:
    """Run one pipeline stage as its own process, until Ctrl-C or SIGTERM.

    \b
    Stages:
      ingest-spans     otlp_spans   -> span segments
      ingest-metrics   otlp_metrics -> metric series and point segments
      ingest-logs      otlp_logs    -> log template and log segments
      world-model      sealed segments + changes -> baselines, graph, changes, new templates
      causal-search    alerts + world model -> causes.ranked
    Run as many replicas of a stage as its topic has partitions; they share the work through
    their consumer group. Segments go under <data_dir>/segments; refused records to `deadletter`.
    """
    from pipeline.workers import run_worker  # imported here: faust is slow to import

    run_worker(ctx.settings, stage, _bootstrap(ctx))


@cli.command()
@click.pass_obj
def status(ctx: Context) -> None:
    """Show topics (partitions, high-water marks) and consumer groups (state, lag).

    High-water marks are read from fetch responses, which are right on the embedded broker too.
    """
    _print_status(ctx.settings, _bootstrap(ctx))


@cli.command(name="topics")
@click.pass_obj
def topics_cmd(ctx: Context) -> None:
    """List the topic registry: names, keys, partitions, schemas, producers and consumers."""
    table = Table(title="topic registry", title_justify="left")
    for col in ("topic", "partitions", "encoding", "value schema", "key", "producers", "consumers"):
        table.add_column(col)
    for t in topics.REGISTRY:
        name = ctx.settings.topic(t.name)
        shown = name if name == t.name else f"{name} ({t.name})"
        table.add_row(
            shown + (" [dim](internal)[/]" if t.internal else ""),
            str(t.partitions),
            t.encoding,
            t.value_schema.rsplit(".", 1)[-1] if t.encoding == "otlp_proto" else t.value_schema,
            t.key,
            ", ".join(t.producers),
            ", ".join(t.consumers),
        )
    stdout().print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as a JSON object.")
@click.pass_obj
def config(ctx: Context, as_json: bool) -> None:
    """Print the effective settings and where each value came from."""
    rows = describe(ctx.settings, ctx.sources)
    if as_json:
        stdout().print_json(orjson.dumps({name: value for name, value, _ in rows}).decode())
        return
    table = Table(title="effective settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for name, value, source in rows:
        table.add_row(name, value or "[dim](unset)[/]", source)
    stdout().print(table)


def _topic_spec(ctx: Context, topic: str) -> tuple[str, topics.TopicSpec | None]:
    """Accept a registry name or an actual (renamed) topic name."""
    logical = topic if topic in topics.BY_NAME else topics.logical_name(topic, ctx.settings.topics)
    if logical is None:
        return topic, None
    return ctx.settings.topic(logical), topics.spec(logical)


def decode_value(spec: topics.TopicSpec | None, value: bytes | None) -> Any:
    """A record value as JSON-able data: OTLP decoded to OTLP/JSON, JSON parsed, else base64."""
    if value is None:
        return None
    if spec is not None and spec.encoding == "otlp_proto":
        try:
            return otlp.to_json(otlp.from_proto(value, spec.value_schema))
        except otlp.OtlpDecodeError as e:
            return {"undecodable": str(e), "base64": base64.b64encode(value[:1024]).decode()}
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return {"undecodable": "not JSON", "base64": base64.b64encode(value[:1024]).decode()}


@cli.command()
@click.argument("topic")
@click.option(
    "--from-beginning", is_flag=True, help="Start at the oldest record instead of new ones."
)
@click.option(
    "-n", "--max-records", type=click.IntRange(min=1), help="Stop after this many records."
)
@click.option(
    "--idle-timeout",
    type=float,
    metavar="SECONDS",
    help="Stop when nothing arrived for this long (default: follow forever).",
)
@click.pass_obj
def tail(
    ctx: Context,
    topic: str,
    from_beginning: bool,
    max_records: int | None,
    idle_timeout: float | None,
) -> None:
    """Print the records of TOPIC decoded, one JSON document per line.

    OTLP topics are decoded to OTLP/JSON (hex ids), JSON topics are printed as they are.
    Reads every partition without joining a consumer group, so it never disturbs workers.
    """
    bootstrap = _bootstrap(ctx)
    name, spec = _topic_spec(ctx, topic)

    async def run() -> None:
        async for record in kafka.tail(
            bootstrap,
            name,
            from_beginning=from_beginning,
            limit=max_records,
            idle_timeout_s=idle_timeout,
        ):
            doc = {
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": record.key.decode("utf-8", "replace") if record.key else None,
                "value": decode_value(spec, record.value),
            }
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyError as e:
        fail(str(e.args[0]))
    except KeyboardInterrupt:
        pass


def _read_records(source: str) -> Iterator[Any]:
    """JSON records from a file or '-': one object, an array of objects, or JSON lines."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    stripped = text.strip()
    if not stripped:
        return
    try:
        doc = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        for n, line in enumerate(stripped.splitlines(), 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise click.BadParameter(f"line {n} is not JSON: {e}") from None
        return
    if isinstance(doc, list):
        yield from doc
    else:
        yield doc


@cli.command()
@click.argument("topic")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--key", help="Record key (default: none).")
@click.option(
    "--no-validate", is_flag=True, help="Send even if a record does not follow the topic's schema."
)
@click.pass_obj
def produce(ctx: Context, topic: str, source: str, key: str | None, no_validate: bool) -> None:
    """Send JSON records to TOPIC from FILE or standard input.

    FILE holds one JSON object, an array of objects or JSON lines. For JSON topics each record is
    checked against the topic's schema first (nothing is sent if one fails); for OTLP topics the
    records are OTLP/JSON and are sent as otlp_proto, the way the Collector writes them.

    \b
    Example:
      worldline produce alerts alert.json
    """
    bootstrap = _bootstrap(ctx)
    name, spec = _topic_spec(ctx, topic)
    if spec is None:
        fail(f"{topic!r} is not a registry topic (see `worldline topics`)")
    try:
        records = list(_read_records(source))
    except (OSError, click.BadParameter) as e:
        fail(str(e))
    payloads: list[bytes] = []
    for i, record in enumerate(records):
        try:
            if spec.encoding == "otlp_proto":
                payloads.append(otlp.from_json(record, spec.value_schema).SerializeToString())
            else:
                if not no_validate:
                    schemas.validate(spec.value_schema, record)
                payloads.append(orjson.dumps(record))
        except (schemas.SchemaViolation, otlp.OtlpDecodeError) as e:
            fail(f"record {i}: {e}; nothing was sent")
    if not payloads:
        fail("no records to send")
    k = key.encode() if key is not None else None
    placed = asyncio.run(kafka.produce(bootstrap, name, [(k, p) for p in payloads]))
    for partition, offset in placed:
        stdout().print(f"{name} partition {partition} offset {offset}")


cli.add_command(query)
cli.add_command(receive)
cli.add_command(model)
cli.add_command(simulate)
cli.add_command(evaluate)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def backfill(ctx: Context, bundle: Path) -> None:
    """Re-index a replay bundle's telemetry through the same code as live ingestion.

    Stores its spans, metrics and logs as segments under <data_dir>/segments (a second run stores
    nothing twice), takes its changes, and brings the world model up to date in event-time order,
    checkpointed where the world-model stage keeps it. No broker is needed.

    \b
    Example:
      worldline simulate run --scenario slow_query --out incident.bundle
      worldline backfill incident.bundle && worldline model deviations
    """
    import datetime as dt

    from rich.progress import Progress

    from jobs.backfill import backfill_bundle
    from jobs.simulator.bundle import BundleError

    try:
        with Progress(console=console, transient=True) as progress:
            tasks: dict[str, Any] = {}

            def step(topic: str, n: int) -> None:
                if topic not in tasks:
                    tasks[topic] = progress.add_task(f"backfilling {topic}", total=None)
                progress.update(tasks[topic], completed=n)

            report = backfill_bundle(
                bundle, ctx.settings, now=dt.datetime.now(dt.UTC), progress=step
            )
    except BundleError as e:
        fail(str(e))
    for topic, n in report.records.items():
        console.print(f"{topic}: {n} records")
    console.print(
        f"{report.segments} segments sealed, {report.changes} changes, "
        f"{report.segments_applied} segments applied to the world model"
        + (f"; refused: {report.refused}" if report.refused else "")
    )


@cli.command()
@click.option(
    "--scenario",
    default="database-slowdown",
    show_default=True,
    help="Simulator scenario (see `worldline simulate list`).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--services", type=click.IntRange(10, 60), default=14, show_default=True, help="Topology size."
)
@click.option(
    "--history",
    type=float,
    default=2400.0,
    show_default=True,
    metavar="SECONDS",
    help="Normal history before the fault.",
)
@click.pass_obj
def demo(ctx: Context, scenario: str, seed: int, services: int, history: float) -> None:
    """The incident demo: a simulated incident through the whole pipeline, then its causes.

    Starts the embedded platform with every stage, simulates HISTORY seconds of normal traffic
    and then a fault, sends it all through Kafka (ingest, segments, baselines and graph), sends
    the alert the simulator's SLO rules fired, and prints the ranked causes with their evidence
    next to the injected fault. Everything stops at the end. Data goes to <data_dir>/demo.
    """
    import datetime as dt

    from jobs.demo import label_matches, run_demo
    from jobs.simulator.scenarios import SCENARIOS
    from jobs.simulator.simulation import RunConfig

    if scenario not in SCENARIOS:
        fail(f"--scenario: unknown {scenario!r}; see `worldline simulate list`")
    # event time is the simulation's own: yesterday from 01:00 UTC, a quiet hour of the simulated
    # daily cycle, so a short history is not mistaken for the morning ramp
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    start = dt.datetime(yesterday.year, yesterday.month, yesterday.day, 1, 0, tzinfo=dt.UTC)
    run = RunConfig(
        start_s=start.timestamp(),
        scenario=scenario,
        seed=seed,
        services=services,
        warmup_s=history,
        duration_s=600.0,
        peak_rate=15.0,
        slice_s=10.0,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with console.status("starting") as status:
            result = run_demo(ctx.settings, run, on_step=lambda m: status.update(m))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except (BrokerError, kafka.TopicLayoutError) as e:
        fail(str(e), code=1)
    truth = result.labels.get("faults") or []
    console.print(
        f"simulated {result.spans:,} span batches; injected: "
        + (
            ", ".join(
                f"{f['fault_class']} on {f['entity']['kind']} {f['entity']['name']} at {f['onset']}"
                for f in truth
            )
            or "nothing"
        )
    )
    if result.record is None:
        fail(f"no ranked causes arrived (after {result.seconds:.0f} s)", code=1)
    record = result.record
    stdout().print(_causes_table(record))
    if record["causes"]:
        top = record["causes"][0]
        for item in top["evidence"]:
            # a weight is what the item adds to the cause's odds, in logits
            weight = item.get("weight")
            stdout().print(
                f"  - {item['summary']}" + (f" ({weight:+.2f})" if weight is not None else "")
            )
        stdout().print(f"  {top['explanation']}")
        hit = any(
            label_matches(f"{top['entity']['kind']}:{top['entity']['name']}", f["entity"])
            for f in truth
        )
        stdout().print(f"top-1 names the injected fault: {'yes' if hit else 'no'}")
    if record["abstained"]:
        stdout().print(f"abstained: {record['abstain_reason']}")
    console.print(
        f"done in {result.seconds:.0f} s; the record is on causes.ranked and in {ctx.settings.data_dir / 'demo'}"
    )


def _causes_table(record: dict[str, Any]) -> Table:
    table = Table(title=f"causes.ranked for {record['incident_id']}", title_justify="left")
    for col in ("rank", "probability", "entity", "fault class", "onset", "signal"):
        table.add_column(col)
    for c in record["causes"][:5]:
        table.add_row(
            str(c["rank"]),
            f"{c['probability']:.2f}",
            f"{c['entity']['kind']} {c['entity']['name']}",
            c["fault_class"],
            (c["onset"] or "")[11:19],
            c["signal"][:60],
        )
    return table


def main() -> None:
    cli(prog_name="worldline")


if __name__ == "__main__":
    main()
