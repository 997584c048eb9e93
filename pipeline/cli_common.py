"""What every ``worldline`` command shares: the settings context, the consoles, failing.

A module of its own so that the command groups defined beside their stages
(``pipeline.receivers.cli`` and the others) and ``pipeline.cli``, which assembles them, import
it rather than each other.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

from pipeline.settings import Settings

console = Console(stderr=True, highlight=False)


def stdout() -> Console:
    """A console for results, made per call so COLUMNS and redirections are honoured."""
    return Console(highlight=False)


class Context:
    def __init__(self, settings: Settings, sources: dict[str, str]) -> None:
        self.settings = settings
        self.sources = sources


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)
