"""Masking rules: which tokens of a log line are variables, decided before any mining.

A rule is data: a name and a regular expression that must match a *whole token* (tokens are what
``pipeline.logs.templates`` splits a line into: runs of characters between whitespace and
punctuation delimiters), brackets around the token set aside. The miner treats a masked token as a parameter from the first line on,
so an IP address or a request id never becomes part of a template. Rules are generic on purpose:
nothing here may exist for one particular system's logs.

Rules can be loaded from a TOML or JSON file shaped like::

    [[rules]]
    name = "ipv4"
    pattern = '(\\d{1,3}\\.){3}\\d{1,3}'
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Brackets around a token ("(10.0.0.1)", "[worker-3]") are ignored when rules are matched;
# a token made only of them ("()", "[]") is an empty value, so a variable.
ENCLOSING_CHARACTERS = "()[]{}<>"


_NUMBER_PATTERN = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


@dataclass(frozen=True, slots=True)
class MaskingRule:
    """A named regular expression; a token it fully matches is a variable."""

    name: str
    pattern: str


DEFAULT_MASKING_RULES: tuple[MaskingRule, ...] = (
    MaskingRule(
        "uuid", r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    ),
    MaskingRule("ipv4", r"(?:\d{1,3}\.){3}\d{1,3}"),
    MaskingRule("hex_number", r"0[xX][0-9a-fA-F]+"),
    MaskingRule("hex_id", r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}"),
    MaskingRule("number", _NUMBER_PATTERN),
    MaskingRule("duration", r"\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d|sec|secs|min|mins)"),
    MaskingRule("size", r"\d+(?:\.\d+)?(?:[kKMGT]i?[bB]?|[bB])"),
    MaskingRule("path", r"[~.]?(?:/[^/]+)+/?"),
    MaskingRule("url", r"[a-zA-Z][a-zA-Z0-9+.-]*://.*"),
    MaskingRule("hostname", r"(?:[a-z0-9-]+\.)+[a-z]{2,6}"),
    MaskingRule("email", r"[^@\s]+@[^@\s]+\.[a-zA-Z]{2,}"),
    # Any other token that carries a digit (block ids, host names with numbers, versions):
    # the same heuristic Drain uses to route such tokens to its wildcard branch.
    MaskingRule("token_with_digit", r".*\d.*"),
)


class TokenMasker:
    """Decides, token by token, whether the configured rules make it a variable.

    The decision for a token never changes, so it is memoised (bounded: once
    ``memo_capacity`` tokens are remembered, further tokens are evaluated each time).
    """

    def __init__(
        self,
        rules: Sequence[MaskingRule] = DEFAULT_MASKING_RULES,
        memo_capacity: int = 200_000,
        enclosing_characters: str = ENCLOSING_CHARACTERS,
    ) -> None:
        self.rules = tuple(rules)
        self.enclosing_characters = enclosing_characters
        for rule in self.rules:
            try:
                re.compile(rule.pattern)
            except re.error as error:
                raise ValueError(f"masking rule {rule.name!r}: invalid pattern: {error}") from error
        alternatives = "|".join(f"(?:{rule.pattern})" for rule in self.rules)
        self._combined = re.compile(f"(?s:{alternatives})") if self.rules else None
        self._memo: dict[str, bool] = {}
        self._memo_capacity = memo_capacity
        # Cheap decisions that need no regex, valid only when a rule says so: with the default
        # "number" rule every run of ASCII digits is a variable.
        self._digits_are_variable = any(rule.pattern == _NUMBER_PATTERN for rule in self.rules)

    def is_variable(self, token: str) -> bool:
        known = self._memo.get(token)
        if known is not None:
            return known
        core = token.strip(self.enclosing_characters)
        if self._digits_are_variable and core.isdigit() and core.isascii():
            verdict = True
        elif not core:  # "()" or "[]": an empty value; "" itself is nothing
            verdict = bool(token)
        else:
            verdict = self._combined is not None and self._combined.fullmatch(core) is not None
        if len(self._memo) < self._memo_capacity:
            self._memo[token] = verdict
        return verdict

    def flags(self, tokens: list[str]) -> list[bool]:
        """``is_variable`` for each token (fast path: one memo lookup per token)."""
        known = list(map(self._memo.get, tokens))
        if None not in known:
            return known  # type: ignore[return-value]
        return [self.is_variable(t) if v is None else v for t, v in zip(tokens, known, strict=True)]

    def rule_for(self, token: str) -> str | None:
        """Name of the first rule that masks ``token`` (slow path, for typing parameters)."""
        for rule in self.rules:
            if re.fullmatch(rule.pattern, token.strip(self.enclosing_characters), flags=re.DOTALL):
                return rule.name
        return None


def rules_from_data(data: Any) -> tuple[MaskingRule, ...]:
    """Rules from parsed TOML/JSON: ``{"rules": [{"name": ..., "pattern": ...}, ...]}``."""
    entries: Iterable[Any] = data.get("rules", ()) if isinstance(data, dict) else data
    rules = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"name", "pattern"} <= entry.keys():
            raise ValueError(f"masking rule #{position}: needs 'name' and 'pattern'")
        rules.append(MaskingRule(str(entry["name"]), str(entry["pattern"])))
    return tuple(rules)


def load_masking_rules(path: str | Path) -> tuple[MaskingRule, ...]:
    """Rules from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    if path.suffix == ".toml":
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"{path}: masking rules must be a .toml or .json file")
    return rules_from_data(data)
