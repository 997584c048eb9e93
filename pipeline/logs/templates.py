"""Online log template mining: a Drain-like parse tree with lossless parameter extraction.

The pure algorithm; no I/O. ``TemplateMiner`` learns templates one line at a time and turns each
line into ``(template_id, params)`` such that :meth:`TemplateMiner.reconstruct` gives the line
back byte for byte. That is what lets the store keep only a template id and parameter columns.

How a line is read
    The line is split into alternating *tokens* and *separators* (runs of whitespace and
    punctuation delimiters), so joining the pieces gives the line back. Masking rules
    (``pipeline.logs.masking``) mark tokens that are variables before mining.

How a line finds its template (after Drain, He et al., ICWS 2017)
    Templates live in leaves of a fixed-depth tree keyed by the token count and the first
    ``tree_depth`` tokens (masked tokens and tokens beyond ``max_children`` go to a wildcard
    branch). The line is compared with the templates of its leaf; similarity is the share of
    positions where the template has a parameter or the same token. The most similar template at
    or above ``similarity_threshold`` wins; if the leaf has none, every template of the same token
    count is tried (so a variable in a leading token does not split an event). Otherwise a new
    template is created.

Stable ids, lossless forever
    A template only ever generalises: a constant piece becomes a parameter, never the reverse,
    and the template keeps its id. Each generalisation is a new *version* that adds at least
    one parameter, so the number of params of a stored row names the version it was written
    with, and :meth:`TemplateMiner.reconstruct` rebuilds rows written before a template grew.

Bounded
    At most ``max_templates`` templates and ``max_clusters_per_leaf`` per leaf; a line that would
    need a template beyond a cap is *refused*: it gets ``UNPARSED_TEMPLATE_ID`` with the whole
    line as its single parameter (still lossless), and the refusal is counted by reason.
    Lines with more than ``max_tokens`` tokens keep their tail as one token.

Deterministic
    The same lines in the same order give the same ids and params, whatever the memo sizes, and
    whether or not the state went through :meth:`TemplateMiner.to_bytes` in between.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from pipeline.logs.masking import DEFAULT_MASKING_RULES, MaskingRule, TokenMasker

STATE_FORMAT = "worldline.log_templates/1"
UNPARSED_TEMPLATE_ID = 0
PARAMETER_TEXT = "<*>"
DELIMITER_CHARACTERS = r"\s,;=\"'|:"
REFUSAL_REASONS = ("template_cap", "leaf_cap")

_CONSTANT = -1  # slot version of a piece that is still constant
_WILDCARD_LABEL = "\x00*"  # tree label for masked tokens and overflowing children


@dataclass(frozen=True, slots=True)
class Match:
    """A line as the store keeps it: template id plus the parameter values, in line order."""

    template_id: int
    params: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MinerConfig:
    similarity_threshold: float = 0.6
    tree_depth: int = 3
    max_children: int = 100
    max_templates: int = 10_000
    max_clusters_per_leaf: int = 500
    max_tokens: int = 256
    memo_capacity: int = 100_000
    search_same_length: bool = False
    compare_separators: bool = False


@dataclass(slots=True)
class _Template:
    """One template: the pieces of the line that created it and when each became a parameter."""

    template_id: int
    original: list[str]  # pieces (token, separator, token, ...) of the first line
    slot_version: list[int]  # per piece: version at which it became a parameter, or _CONSTANT
    leaf: tuple[Any, ...]
    tokens: list[str | None] = field(default_factory=list)  # None where a parameter
    separators: list[str | None] = field(default_factory=list)
    slot_positions: tuple[int, ...] = ()
    version_slot_counts: list[int] = field(default_factory=list)

    def refresh(self) -> None:
        current: list[str | None] = [
            text if version == _CONSTANT else None
            for text, version in zip(self.original, self.slot_version, strict=True)
        ]
        self.tokens = current[0::2]
        self.separators = current[1::2]
        self.slot_positions = tuple(i for i, piece in enumerate(current) if piece is None)
        top_version = max(self.slot_version, default=_CONSTANT)
        self.version_slot_counts = [
            sum(1 for v in self.slot_version if v != _CONSTANT and v <= version)
            for version in range(max(top_version, 0) + 1)
        ]

    @property
    def version(self) -> int:
        return len(self.version_slot_counts) - 1

    def text(self) -> str:
        return "".join(
            PARAMETER_TEXT if version != _CONSTANT else piece
            for piece, version in zip(self.original, self.slot_version, strict=True)
        )


class TemplateMiner:
    """Learns log templates online; every line maps losslessly to ``(template_id, params)``."""

    def __init__(
        self,
        config: MinerConfig | None = None,
        masking_rules: Sequence[MaskingRule] = DEFAULT_MASKING_RULES,
    ) -> None:
        self.config = config or MinerConfig()
        if not 0.0 < self.config.similarity_threshold <= 1.0:
            raise ValueError("similarity_threshold must be in (0, 1]")
        if self.config.max_tokens < 1 or self.config.tree_depth < 0:
            raise ValueError("max_tokens must be >= 1 and tree_depth >= 0")
        self.masker = TokenMasker(masking_rules)
        self._variable_flags = self.masker.flags
        self._split = re.compile(f"([{DELIMITER_CHARACTERS}]+)").split
        self._templates: dict[int, _Template] = {}
        self._leaves: dict[tuple[Any, ...], list[int]] = {}
        self._children: dict[tuple[Any, ...], set[str]] = {}
        self._by_token_count: dict[int, list[int]] = {}
        # Pure memo (never changes a result): masked pieces -> template they fully match.
        self._memo: dict[int, dict[tuple[str | None, ...], int]] = {}
        self._memo_size = 0
        self._next_id = UNPARSED_TEMPLATE_ID + 1
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.lines_seen = 0

    # ---- the verbs -------------------------------------------------------------------------

    def add(self, line: str) -> Match:
        """Learn from ``line`` and return its template id and parameters."""
        self.lines_seen += 1
        pieces, key = self._read(line)
        token_count = (len(pieces) + 1) >> 1
        memo = self._memo.get(token_count)
        if memo is not None:
            known = memo.get(key)
            if known is not None:
                positions = self._templates[known].slot_positions
                return Match(known, tuple([pieces[i] for i in positions]))
        masked = key[0::2]
        template = self._best_template(masked, key[1::2], token_count)
        if template is None:
            template = self._create(pieces, masked, token_count)
            if template is None:
                return Match(UNPARSED_TEMPLATE_ID, (line,))
        elif self._generalise(template, pieces, masked):
            self._forget_memo(token_count)
        else:
            self._remember(token_count, key, template.template_id)
        return Match(template.template_id, tuple([pieces[i] for i in template.slot_positions]))

    def match(self, line: str) -> Match | None:
        """The template ``line`` fits as it stands, without learning; None if there is none."""
        pieces, key = self._read(line)
        token_count = (len(pieces) + 1) >> 1
        known = self._memo.get(token_count, {}).get(key)
        template = self._templates[known] if known is not None else None
        if template is None:
            template = self._best_template(key[0::2], key[1::2], token_count)
            if template is None or self._needs_change(template, pieces, key[0::2]):
                return None
        return Match(template.template_id, tuple([pieces[i] for i in template.slot_positions]))

    def template(self, template_id: int) -> str:
        """The template's text, parameters shown as ``<*>``."""
        if template_id == UNPARSED_TEMPLATE_ID:
            return PARAMETER_TEXT
        return self._templates[template_id].text()

    def templates(self) -> dict[int, str]:
        """Every template by id (ascending), without the unparsed catch-all."""
        return {template_id: t.text() for template_id, t in self._templates.items()}

    def reconstruct(self, template_id: int, params: Sequence[str]) -> str:
        """The original line from a template id and the params returned for it (any version)."""
        if template_id == UNPARSED_TEMPLATE_ID:
            if len(params) != 1:
                raise ValueError("the unparsed template takes exactly one parameter")
            return params[0]
        template = self._templates[template_id]
        try:
            version = template.version_slot_counts.index(len(params))
        except ValueError:
            raise ValueError(
                f"template {template_id} never had {len(params)} parameters "
                f"(versions have {template.version_slot_counts})"
            ) from None
        values = iter(params)
        return "".join(
            next(values) if slot != _CONSTANT and slot <= version else piece
            for piece, slot in zip(template.original, template.slot_version, strict=True)
        )

    def stats(self) -> dict[str, Any]:
        return {
            "lines": self.lines_seen,
            "templates": len(self._templates),
            "refusals": dict(self.refusals),
        }

    # ---- state as bytes ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole learned state as JSON bytes (no code runs on load)."""
        state = {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "masking_rules": [asdict(rule) for rule in self.masker.rules],
            "next_id": self._next_id,
            "lines_seen": self.lines_seen,
            "refusals": self.refusals,
            "templates": [
                {
                    "id": t.template_id,
                    "original": t.original,
                    "slot_version": t.slot_version,
                    "leaf": list(t.leaf),
                }
                for t in self._templates.values()
            ],
        }
        return orjson.dumps(state)

    @classmethod
    def from_bytes(cls, data: bytes) -> TemplateMiner:
        state = orjson.loads(data)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state")
        miner = cls(
            MinerConfig(**state["config"]),
            [MaskingRule(**rule) for rule in state["masking_rules"]],
        )
        miner._next_id = int(state["next_id"])
        miner.lines_seen = int(state["lines_seen"])
        miner.refusals.update({str(k): int(v) for k, v in state["refusals"].items()})
        for entry in state["templates"]:
            original = [str(piece) for piece in entry["original"]]
            slot_version = [int(v) for v in entry["slot_version"]]
            if len(original) != len(slot_version) or len(original) % 2 != 1:
                raise ValueError(f"template {entry['id']}: inconsistent pieces")
            leaf = (int(entry["leaf"][0]), *map(str, entry["leaf"][1:]))
            miner._register(_Template(int(entry["id"]), original, slot_version, leaf))
        return miner

    # ---- internals -----------------------------------------------------------------------

    def _read(self, line: str) -> tuple[list[str], tuple[str | None, ...]]:
        """Pieces of the line, and the same pieces with variable tokens as None (the key).

        Adjacent variable tokens (only separators between them) become one variable piece, so
        a list of ids or a timestamp counts as one token whatever its length.
        """
        split = self._split(line, self.config.max_tokens - 1)
        tokens = split[0::2]
        flags = self._variable_flags(tokens)
        if True not in flags:
            return split, tuple(split)
        key: list[str | None] = list(split)
        if (True, True) not in zip(flags, flags[1:], strict=False):
            for position, variable in enumerate(flags):
                if variable:
                    key[2 * position] = None
            return split, tuple(key)
        pieces = [tokens[0]]
        key = [None if flags[0] else tokens[0]]
        previous = flags[0]
        for position in range(1, len(tokens)):
            token = tokens[position]
            variable = flags[position]
            if variable and previous:
                pieces[-1] += split[2 * position - 1] + token
                continue
            separator = split[2 * position - 1]
            pieces += (separator, token)
            key += (separator, None if variable else token)
            previous = variable
        return pieces, tuple(key)

    def _best_template(
        self, masked: Sequence[str | None], separators: Sequence[str | None], token_count: int
    ) -> _Template | None:
        leaf = self._leaf_path(masked, token_count, plan=False)
        in_leaf = self._leaves.get(leaf, []) if leaf is not None else []
        best = self._most_similar(in_leaf, masked, separators)
        if best is None and self.config.search_same_length:
            leaf_ids = set(in_leaf)
            others = [i for i in self._by_token_count.get(token_count, ()) if i not in leaf_ids]
            best = self._most_similar(others, masked, separators)
        return best

    def _most_similar(
        self,
        candidates: Sequence[int],
        masked: Sequence[str | None],
        separators: Sequence[str | None],
    ) -> _Template | None:
        compare_separators = self.config.compare_separators
        best: _Template | None = None
        best_score = (-1.0, 0)
        for template_id in candidates:
            template = self._templates[template_id]
            same = compared = 0
            for constant, token in zip(template.tokens, masked, strict=True):
                if constant is None:
                    if token is None:
                        continue  # both variable: says nothing either way
                elif constant == token:
                    same += 1
                compared += 1
            if compare_separators:
                for constant, separator in zip(template.separators, separators, strict=True):
                    if constant is not None:
                        compared += 1
                        same += constant == separator
            similarity = same / compared if compared else 1.0
            score = (similarity, -len(template.slot_positions))
            if score > best_score:
                best, best_score = template, score
        if best is None or best_score[0] < self.config.similarity_threshold:
            return None
        return best

    def _leaf_path(
        self, masked: Sequence[str | None], token_count: int, plan: bool
    ) -> tuple[Any, ...] | None:
        """Leaf for a line: existing one (``plan=False``) or the one a new template would use."""
        path: tuple[Any, ...] = (token_count,)
        for token in masked[: self.config.tree_depth]:
            label = _WILDCARD_LABEL if token is None else token
            children = self._children.get(path, set())
            if label not in children:
                if not plan:
                    if _WILDCARD_LABEL not in children:
                        return None
                    label = _WILDCARD_LABEL
                elif len(children) >= self.config.max_children:
                    label = _WILDCARD_LABEL
            path = (*path, label)
        return path

    def _create(
        self, pieces: list[str], masked: Sequence[str | None], token_count: int
    ) -> _Template | None:
        if len(self._templates) >= self.config.max_templates:
            self.refusals["template_cap"] += 1
            return None
        leaf = self._leaf_path(masked, token_count, plan=True)
        assert leaf is not None
        if len(self._leaves.get(leaf, ())) >= self.config.max_clusters_per_leaf:
            self.refusals["leaf_cap"] += 1
            return None
        slot_version = [_CONSTANT] * len(pieces)
        for position, token in enumerate(masked):
            if token is None:
                slot_version[2 * position] = 0
        template = _Template(self._next_id, list(pieces), slot_version, leaf)
        self._next_id += 1
        self._register(template)
        self._forget_memo(token_count)
        return template

    def _register(self, template: _Template) -> None:
        template.refresh()
        self._templates[template.template_id] = template
        self._leaves.setdefault(template.leaf, []).append(template.template_id)
        for depth in range(1, len(template.leaf)):
            self._children.setdefault(template.leaf[:depth], set()).add(template.leaf[depth])
        token_count = template.leaf[0]
        self._by_token_count.setdefault(token_count, []).append(template.template_id)
        self._next_id = max(self._next_id, template.template_id + 1)

    def _needs_change(
        self, template: _Template, pieces: list[str], masked: Sequence[str | None]
    ) -> bool:
        for constant, token in zip(template.tokens, masked, strict=True):
            if constant is not None and constant != token:
                return True
        for constant, separator in zip(template.separators, pieces[1::2], strict=True):
            if constant is not None and constant != separator:
                return True
        return False

    def _generalise(
        self, template: _Template, pieces: list[str], masked: Sequence[str | None]
    ) -> bool:
        """Turn every constant the line disagrees with into a parameter; True if any changed."""
        if not self._needs_change(template, pieces, masked):
            return False
        new_version = template.version + 1
        for position, constant in enumerate(template.tokens):
            if constant is not None and constant != masked[position]:
                template.slot_version[2 * position] = new_version
        for position, constant in enumerate(template.separators):
            if constant is not None and constant != pieces[2 * position + 1]:
                template.slot_version[2 * position + 1] = new_version
        template.refresh()
        return True

    def _remember(self, token_count: int, key: tuple[str | None, ...], template_id: int) -> None:
        if self._memo_size < self.config.memo_capacity:
            self._memo.setdefault(token_count, {})[key] = template_id
            self._memo_size += 1

    def _forget_memo(self, token_count: int) -> None:
        dropped = self._memo.pop(token_count, None)
        if dropped:
            self._memo_size -= len(dropped)
