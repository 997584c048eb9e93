"""``worldline receive``: run the HTTP receivers against the configured or embedded broker."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_common import Context, console, fail
from pipeline.platform import NoBrokerError, find_bootstrap
from pipeline.receivers.server import RunningReceivers, run_receivers


@click.command()
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Require 'Authorization: Bearer <token>' on every route but /healthz; the token is read from this file.",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop by itself after this many seconds (default: run until Ctrl-C or SIGTERM).",
)
@click.pass_obj
def receive(ctx: Context, token_file: Path | None, duration: float | None) -> None:
    """Run the HTTP receivers that publish onto the OTLP topics.

    \b
    Listens on http_host:http_port (default 127.0.0.1:4318):
      POST /v1/traces /v1/metrics /v1/logs   OTLP/HTTP, protobuf or JSON, gzip  -> otlp_*
      POST /api/v1/write                     Prometheus remote_write 1.0       -> otlp_metrics
      POST /loki/api/v1/push                 Loki push, JSON or protobuf       -> otlp_logs
      POST /alertmanager/webhook             Alertmanager webhook (version 4)  -> alerts
      GET  /healthz                          health (503 with reasons) and counters, JSON
      GET  /metrics                          every stage's metrics, Prometheus format
      GET  /api/v1/query/...                 logs, traces, metrics, templates (read-only)
      GET  /api/v1/model/...                 graph, neighbourhood, baseline, deviations, changes
      GET  /api/v1/openapi.json              the query API's OpenAPI document
    Refused requests go to `deadletter` with the reason. With a token, every route but
    /healthz requires it.
    """
    try:
        bootstrap = find_bootstrap(ctx.settings)
    except NoBrokerError as e:
        fail(str(e))
    token_file = token_file or ctx.settings.http_token_file
    if token_file is not None and not token_file.is_file():
        fail(f"http_token_file={token_file} is not a readable file")
    token = token_file.read_text().strip() if token_file else None
    if token_file and not token:
        fail(f"token file {token_file} is empty")

    def ready(running: RunningReceivers) -> None:
        console.print(f"receivers listening on {running.url}, publishing to {bootstrap}")

    try:
        run_receivers(ctx.settings, bootstrap, token=token, duration_s=duration, on_ready=ready)
    except OSError as e:
        fail(f"cannot listen on {ctx.settings.http_host}:{ctx.settings.http_port}: {e}", code=1)
