"""Sealed columnar segments: where ingest writes and queries read."""
