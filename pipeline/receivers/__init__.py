"""HTTP receivers that publish telemetry onto the OTLP topics.

Data flows through the modules in this order: ``bodies`` (media type, decompression with a
cap) -> a decoder per protocol (``otlp_export``, ``remote_write``, ``loki``; the foreign
protobuf messages are in ``protos``) -> ``otlp_export.prepare_export`` (item limits, split into
records) -> ``app`` (the aiohttp shell: publish, answer, dead-letter via ``refusals``) ->
``server`` (producer and listening socket) -> ``cli`` (``worldline receive``).
"""

from pipeline.receivers.app import build_receiver_app
from pipeline.receivers.server import run_receivers, running_receivers

__all__ = ["build_receiver_app", "run_receivers", "running_receivers"]
