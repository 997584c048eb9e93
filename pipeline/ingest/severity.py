"""A log record's severity when its sender set none.

OpenTelemetry SDKs and parsing pipelines set ``severity_number``. A Collector's filelog receiver
without a severity parser, or a log shipper forwarding raw container output, sends the line as
it was written, severity unspecified (0): read as given, no line would ever be an error and a
service's error logs would be no evidence. The level is then read as the line's own format
writes it: a level word (``2022-08-22 03:54:00 ERROR ...``, ``[WARN]``), a ``level=error`` or
``"level": "error"`` field, or the first line of an exception's stack trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opentelemetry.proto.logs.v1 import logs_pb2

SEVERITIES: Mapping[str, int] = {
    "trace": logs_pb2.SEVERITY_NUMBER_TRACE,
    "debug": logs_pb2.SEVERITY_NUMBER_DEBUG,
    "dbug": logs_pb2.SEVERITY_NUMBER_DEBUG,
    "info": logs_pb2.SEVERITY_NUMBER_INFO,
    "information": logs_pb2.SEVERITY_NUMBER_INFO,
    "notice": logs_pb2.SEVERITY_NUMBER_INFO2,
    "warn": logs_pb2.SEVERITY_NUMBER_WARN,
    "warning": logs_pb2.SEVERITY_NUMBER_WARN,
    "error": logs_pb2.SEVERITY_NUMBER_ERROR,
    "err": logs_pb2.SEVERITY_NUMBER_ERROR,
    "eror": logs_pb2.SEVERITY_NUMBER_ERROR,
    "severe": logs_pb2.SEVERITY_NUMBER_ERROR,
    "critical": logs_pb2.SEVERITY_NUMBER_FATAL,
    "crit": logs_pb2.SEVERITY_NUMBER_FATAL,
    "fatal": logs_pb2.SEVERITY_NUMBER_FATAL,
    "panic": logs_pb2.SEVERITY_NUMBER_FATAL,
    "alert": logs_pb2.SEVERITY_NUMBER_FATAL2,
    "emergency": logs_pb2.SEVERITY_NUMBER_FATAL3,
}
"""Level words as loggers write them (lower-cased) -> OpenTelemetry severity numbers."""

# where a line's own level is: its first words (a timestamp, a thread, a logger may come before)
HEAD_CHARS = 160
LEVEL_WORD = re.compile(
    r"(?:^|[\s\[(|:])(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|SEVERE|CRITICAL|CRIT|FATAL"
    r"|PANIC)(?=$|[\s\]):|,])"
)
"""A level word in capitals, standing alone: loggers' default layouts (log4j, logback, Python's
logging, glog's spelled-out form) write it so; a lower-case "error" in a message is not one."""
LEVEL_FIELD = re.compile(r"""["']?(?:level|severity|lvl|loglevel)["']?\s*[=:]\s*["']?(\w+)""", re.I)
"""A structured line's level field (logfmt ``level=error``, JSON ``"level": "error"``)."""
STACK_TRACE = re.compile(
    r"^(?:Traceback \(most recent call last\)|Exception in thread |"
    r"(?:[a-z_][\w$]*\.)+[A-Z]\w*(?:Exception|Error)\b)"
)
"""The first line of a stack trace: Python's, or a JVM exception's qualified class name."""


def severity_number(text: str) -> int:
    """The severity a level word names; 0 for a word that names none."""
    return SEVERITIES.get(text.strip().lower(), 0)


def inferred_severity(given: int, text: str | None, body: str) -> int:
    """``given`` when the sender set it; else the level ``text`` names; else the level the
    line writes of itself (``LEVEL_FIELD``, ``LEVEL_WORD``, a ``STACK_TRACE``'s first line);
    else 0, unspecified."""
    if given:
        return given
    if text and (named := severity_number(text)):
        return named
    head = body[:HEAD_CHARS]
    for pattern in (LEVEL_FIELD, LEVEL_WORD):
        found = pattern.search(head)
        if found and (named := severity_number(found.group(1))):
            return named
    if STACK_TRACE.match(head.lstrip()):
        return logs_pb2.SEVERITY_NUMBER_ERROR
    return 0
