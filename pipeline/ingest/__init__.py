"""Ingest: decode OTLP export requests into Arrow tables that follow ``schemas.segments``."""
