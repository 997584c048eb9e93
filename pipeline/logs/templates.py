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
    count is tried (so a variable in a leading token does not split an event).

Other shapes: variable-length parameters
    If the leaf has no template at the threshold, templates of any token count are tried by
    alignment: constant tokens are matched by a longest common subsequence, a parameter may
    absorb extra tokens ("<1 sec" where another line had "00:01") and template pieces a line
    lacks become empty parameters. Only if the unmatched tokens are mostly variable (constant
    words that only one side has mean a different event) and aligned constants over all
    constants reach ``alignment_threshold``. Otherwise a new template is created.

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

STATE_FORMAT = "worldline.log_templates/2"
READABLE_STATE_FORMATS = ("worldline.log_templates/1", STATE_FORMAT)
UNPARSED_TEMPLATE_ID = 0
PARAMETER_TEXT = "<*>"
DELIMITER_CHARACTERS = r"\s,;=\"'|:"
REFUSAL_REASONS = ("template_cap", "leaf_cap")

_MergePlan = tuple[list[tuple[int, int]] | None, tuple[bool, ...]]
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
    align_other_lengths: bool = True
    alignment_threshold: float = 0.8
    max_alignment_cells: int = 4096


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
    constants: frozenset[str] = frozenset()
    constant_count: int = 0

    def refresh(self) -> None:
        current: list[str | None] = [
            text if version == _CONSTANT else None
            for text, version in zip(self.original, self.slot_version, strict=True)
        ]
        self.tokens = current[0::2]
        self.separators = current[1::2]
        self.slot_positions = tuple(i for i, piece in enumerate(current) if piece is None)
        constants = [token for token in self.tokens if token is not None]
        self.constants = frozenset(constants)
        self.constant_count = len(constants)
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
        # Pure memo as well: masked pieces of another token count -> (template, piece ranges).
        self._aligned_memo: dict[tuple[str | None, ...], tuple[int, tuple[tuple[int, int], ...]]]
        self._aligned_memo = {}
        # Pure memo: variable flags of the tokens -> how the split pieces merge (bounded).
        self._merge_plans: dict[tuple[bool, ...], _MergePlan] = {}
        # Pure memo: whole lines -> their match, dropped whenever any template changes.
        self._line_memo: dict[str, tuple[Match, int, int]] = {}
        self._stamps: dict[int, int] = {}  # token count -> changes to its templates
        self._next_id = UNPARSED_TEMPLATE_ID + 1
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.lines_seen = 0

    # ---- the verbs -------------------------------------------------------------------------

    def add(self, line: str) -> Match:
        """Learn from ``line`` and return its template id and parameters."""
        self.lines_seen += 1
        known_line = self._line_memo.get(line)
        if known_line is not None:
            match, token_count, stamp = known_line
            if self._stamps.get(token_count, 0) == stamp:
                return match
        match, token_count = self._add(line)
        if token_count and len(self._line_memo) < self.config.memo_capacity:
            self._line_memo[line] = (match, token_count, self._stamps.get(token_count, 0))
        return match

    def _add(self, line: str) -> tuple[Match, int]:
        """The match, and the line's token count when it depends on that leaf's templates only
        and nothing changed (0 otherwise)."""
        pieces, key = self._read(line)
        token_count = (len(pieces) + 1) >> 1
        memo = self._memo.get(token_count)
        if memo is not None:
            known = memo.get(key)
            if known is not None:
                positions = self._templates[known].slot_positions
                return Match(known, tuple([pieces[i] for i in positions])), token_count
        aligned_known = self._aligned_memo.get(key)
        if aligned_known is not None:
            template_id, ranges = aligned_known
            return Match(template_id, tuple(["".join(pieces[a:b]) for a, b in ranges])), 0
        masked = key[0::2]
        template = self._best_template(masked, key[1::2], token_count)
        if template is None:
            alignment = self._best_alignment(key)
            if alignment is not None:
                return self._add_aligned(alignment, pieces, key), 0
            template = self._create(pieces, masked, token_count)
            if template is None:
                return Match(UNPARSED_TEMPLATE_ID, (line,)), 0
            memoable = 0
        elif self._generalise(template, pieces, masked):
            self._forget_memo(token_count)
            memoable = 0
        else:
            self._remember(token_count, key, template.template_id)
            memoable = token_count
        params = tuple([pieces[i] for i in template.slot_positions])
        return Match(template.template_id, params), memoable

    def _add_aligned(
        self,
        alignment: tuple[_Template, list[tuple[int, int]], list[int]],
        pieces: list[str],
        key: tuple[str | None, ...],
    ) -> Match:
        template, spans, changed = alignment
        if changed:
            new_version = template.version + 1
            for position in changed:
                template.slot_version[position] = new_version
            template.refresh()
            self._forget_memo(template.leaf[0])
        ranges = tuple(spans[i] for i in template.slot_positions)
        if not changed and self._memo_size < self.config.memo_capacity:
            self._aligned_memo[key] = (template.template_id, ranges)
            self._memo_size += 1
        return Match(template.template_id, tuple(["".join(pieces[a:b]) for a, b in ranges]))

    def match(self, line: str) -> Match | None:
        """The template ``line`` fits as it stands, without learning; None if there is none."""
        pieces, key = self._read(line)
        token_count = (len(pieces) + 1) >> 1
        known = self._memo.get(token_count, {}).get(key)
        template = self._templates[known] if known is not None else None
        if template is None:
            template = self._best_template(key[0::2], key[1::2], token_count)
            if template is None:
                alignment = self._best_alignment(key)
                if alignment is None or alignment[2]:
                    return None
                found, spans, _ = alignment
                return Match(
                    found.template_id,
                    tuple(
                        [
                            "".join(pieces[a:b])
                            for a, b in map(spans.__getitem__, found.slot_positions)
                        ]
                    ),
                )
            if self._needs_change(template, pieces, key[0::2]):
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
        """The whole learned state as JSON bytes (no code runs on load).

        Compact: a piece that was a parameter from the first line on keeps no text (it is never
        shown nor rebuilt), and slot versions are listed only for parameter pieces.
        """
        state = {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "masking_rules": [asdict(rule) for rule in self.masker.rules],
            "next_id": self._next_id,
            "lines_seen": self.lines_seen,
            "refusals": self.refusals,
            "templates": [
                [
                    t.template_id,
                    [
                        "" if version == 0 else piece
                        for piece, version in zip(t.original, t.slot_version, strict=True)
                    ],
                    [[i, v] for i, v in enumerate(t.slot_version) if v != _CONSTANT],
                    list(t.leaf),
                ]
                for t in self._templates.values()
            ],
        }
        return orjson.dumps(state)

    @classmethod
    def from_bytes(cls, data: bytes) -> TemplateMiner:
        state = orjson.loads(data)
        if not isinstance(state, dict) or state.get("format") not in READABLE_STATE_FORMATS:
            raise ValueError(f"not a {STATE_FORMAT} state")
        config = {
            name: value
            for name, value in state["config"].items()
            if name in MinerConfig.__dataclass_fields__
        }
        miner = cls(
            MinerConfig(**config),
            [MaskingRule(**rule) for rule in state["masking_rules"]],
        )
        miner._next_id = int(state["next_id"])
        miner.lines_seen = int(state["lines_seen"])
        miner.refusals.update({str(k): int(v) for k, v in state["refusals"].items()})
        for entry in state["templates"]:
            if isinstance(entry, dict):  # format 1
                template_id, original = entry["id"], entry["original"]
                slot_version = [int(v) for v in entry["slot_version"]]
                leaf_labels = entry["leaf"]
            else:
                template_id, original, slots, leaf_labels = entry
                slot_version = [_CONSTANT] * len(original)
                for position, version in slots:
                    slot_version[int(position)] = int(version)
            original = [str(piece) for piece in original]
            if len(original) != len(slot_version) or len(original) % 2 != 1:
                raise ValueError(f"template {template_id}: inconsistent pieces")
            leaf = (int(leaf_labels[0]), *map(str, leaf_labels[1:]))
            miner._register(_Template(int(template_id), original, slot_version, leaf))
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
        flags_key = tuple(flags)
        plan = self._merge_plans.get(flags_key)
        if plan is None:
            plan = _merge_plan(flags_key)
            if len(self._merge_plans) < self.config.memo_capacity:
                self._merge_plans[flags_key] = plan
        ranges, piece_is_variable = plan
        pieces = (
            split
            if ranges is None
            else [split[a] if a + 1 == b else "".join(split[a:b]) for a, b in ranges]
        )
        key = [
            None if variable else piece
            for piece, variable in zip(pieces, piece_is_variable, strict=True)
        ]
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
        """Drop memo entries a new or generalised template of ``token_count`` may change."""
        self._stamps[token_count] = self._stamps.get(token_count, 0) + 1
        dropped = self._memo.pop(token_count, None)
        if dropped:
            self._memo_size -= len(dropped)
        if self._aligned_memo:
            self._memo_size -= len(self._aligned_memo)
            self._aligned_memo.clear()

    # ---- alignment across token counts ---------------------------------------------------

    def _best_alignment(
        self, key: tuple[str | None, ...]
    ) -> tuple[_Template, list[tuple[int, int]], list[int]] | None:
        """The most similar template of another shape, matched by aligning tokens.

        Used when the line's own leaf has no template at the threshold. Constant tokens are
        aligned by a longest common subsequence (a parameter of the template may face a variable
        of the line); the pieces between aligned tokens are spread over the template's pieces
        there, one piece absorbing any surplus (a parameter that holds several tokens) or taking
        the place of several (which then become empty parameters). Similarity is aligned
        constants over the constants of either (``alignment_threshold``, stricter than the
        positional one: a different shape is weaker evidence of the same event).
        Returns (template, line piece range per template piece, pieces that become parameters).
        """
        if not self.config.align_other_lengths or not self._templates:
            return None
        masked = key[0::2]
        line_constants = [token for token in masked if token is not None]
        if not line_constants:
            return None
        line_set = frozenset(line_constants)
        line_count = len(line_constants)
        threshold = self.config.alignment_threshold
        cells = self.config.max_alignment_cells
        own_leaf = self._leaf_path(masked, len(masked), plan=False)
        best: tuple[float, int, int] | None = None
        best_result: tuple[_Template, list[tuple[int, int]], list[int]] | None = None
        low, high = threshold * line_count, line_count / threshold
        for template in self._templates.values():
            if not low <= template.constant_count <= high or template.leaf == own_leaf:
                continue  # cannot reach the threshold, or already compared position by position
            # Upper bound of aligned constants from the distinct ones shared (repeats aside).
            bound = len(template.constants & line_set)
            bound = min(bound + template.constant_count - len(template.constants), line_count)
            if bound < threshold * (template.constant_count + line_count - bound):
                continue
            if len(template.tokens) * len(masked) > cells:
                continue
            anchors, matched = _align_tokens(template.tokens, masked)
            similarity = matched / (template.constant_count + line_count - matched)
            if similarity < threshold:
                continue
            spans = _spread(template, key, anchors)
            if spans is None:
                continue
            changed = [
                position
                for position, (start, end) in enumerate(spans)
                if template.slot_version[position] == _CONSTANT
                and not (end == start + 1 and key[start] == template.original[position])
            ]
            score = (similarity, -len(changed), -template.template_id)
            if best is None or score > best:
                best, best_result = score, (template, spans, changed)
        return best_result


def _merge_plan(flags: tuple[bool, ...]) -> _MergePlan:
    """How split pieces become pieces: runs of adjacent variable tokens (and the separators
    between them) join into one piece. Returns (split ranges per piece, or None when nothing
    joins; whether each piece is variable)."""
    ranges: list[tuple[int, int]] = []
    variable: list[bool] = []
    previous = False
    for position, flag in enumerate(flags):
        if flag and previous:
            ranges[-1] = (ranges[-1][0], 2 * position + 1)
        else:
            if position:
                ranges.append((2 * position - 1, 2 * position))
                variable.append(False)
            ranges.append((2 * position, 2 * position + 1))
            variable.append(flag)
        previous = flag
    joined = len(ranges) != 2 * len(flags) - 1
    return (ranges if joined else None), tuple(variable)


def _align_tokens(
    template_tokens: Sequence[str | None], masked: Sequence[str | None]
) -> tuple[list[tuple[int, int]], int]:
    """Longest common subsequence of two token lists: equal constants weigh 2, a template
    parameter facing a line variable 1. Returns the aligned (template, line) token indices and
    how many of them are equal constants."""
    width = len(masked)
    rows = [[0] * (width + 1)]
    previous = rows[0]
    for constant in template_tokens:
        current = [0] * (width + 1)
        for j, token in enumerate(masked):
            value = previous[j + 1] if previous[j + 1] > current[j] else current[j]
            if constant is None:
                if token is None and previous[j] + 1 > value:
                    value = previous[j] + 1
            elif constant == token and previous[j] + 2 > value:
                value = previous[j] + 2
            current[j + 1] = value
        rows.append(current)
        previous = current
    anchors: list[tuple[int, int]] = []
    matched = 0
    i, j = len(template_tokens), width
    while i and j:
        value = rows[i][j]
        if value == rows[i - 1][j]:
            i -= 1
        elif value == rows[i][j - 1]:
            j -= 1
        else:
            i -= 1
            j -= 1
            anchors.append((i, j))
            matched += template_tokens[i] is not None
    anchors.reverse()
    return anchors, matched


def _spread(
    template: _Template, key: Sequence[str | None], anchors: list[tuple[int, int]]
) -> list[tuple[int, int]] | None:
    """Line piece range (start, end) for every template piece, given aligned token pairs."""
    spans: list[tuple[int, int]] = []
    template_start = line_start = 0
    final = (len(template.tokens), len(key) // 2 + 1)  # one past the last token of each
    versions = template.slot_version
    absorb_from: int | None = None  # the next anchor (a parameter) also takes the gap before it
    for i, j in [*anchors, final]:
        template_end = min(2 * i, len(template.original))
        line_end = min(2 * j, len(key))
        if template_end == template_start and line_end > line_start:
            # Nothing of the template faces these line pieces: a neighbouring parameter anchor
            # takes them, if they are mostly variable.
            tokens = [key[k] for k in range(line_start + (line_start & 1), line_end, 2)]
            if 2 * tokens.count(None) + 1 < len(tokens):
                return None
            if spans and versions[template_start - 1] != _CONSTANT:
                spans[-1] = (spans[-1][0], line_end)
            elif (i, j) != final and versions[2 * i] != _CONSTANT:
                absorb_from = line_start
            else:
                return None
        else:
            slack = (bool(spans) and versions[template_start - 1] != _CONSTANT) + (
                (i, j) != final and versions[2 * i] != _CONSTANT
            )
            gap = _spread_gap(
                template, key, template_start, template_end, line_start, line_end, slack
            )
            if gap is None:
                return None
            spans += gap
        if (i, j) == final:
            break
        spans.append((2 * j if absorb_from is None else absorb_from, 2 * j + 1))
        absorb_from = None
        template_start, line_start = template_end + 1, line_end + 1
    return spans


def _spread_gap(
    template: _Template,
    key: Sequence[str | None],
    template_start: int,
    template_end: int,
    line_start: int,
    line_end: int,
    slack: int,
) -> list[tuple[int, int]] | None:
    """Spread line pieces [line_start, line_end) over template pieces [template_start, end).

    ``slack``: how many of the aligned tokens around the gap are parameters.
    """
    size = template_end - template_start
    surplus = (line_end - line_start) - size
    if size == 0:
        return [] if surplus == 0 else None
    if surplus == 0:
        return [(line_start + k, line_start + k + 1) for k in range(size)]
    original, versions = template.original, template.slot_version
    # Tokens only one side has must be mostly variable: the longer side of the gap may hold
    # no more constant tokens than variable ones (parameters around the gap count too), or
    # the shapes are different events.
    if surplus > 0:
        longer = [key[k] for k in range(line_start + (line_start & 1), line_end, 2)]
    else:
        longer = [
            None if versions[k] != _CONSTANT else original[k]
            for k in range(template_start + (template_start & 1), template_end, 2)
        ]
    variables = longer.count(None)
    if len(longer) - variables > variables + slack:
        return None
    best: tuple[int, int] | None = None
    best_spans: list[tuple[int, int]] = []
    last = size if surplus > 0 else size + surplus
    for absorber in range(max(last, 0)):
        spans = []
        cursor = line_start
        for k in range(size):
            if k == absorber and surplus > 0:
                spans.append((cursor, cursor + surplus + 1))
                cursor += surplus + 1
            elif surplus < 0 and absorber < k <= absorber - surplus:
                spans.append((cursor, cursor))  # taken over by the absorber: empty
            else:
                spans.append((cursor, cursor + 1))
                cursor += 1
        cost = 0
        for k, (start, end) in enumerate(spans):
            position = template_start + k
            if versions[position] == _CONSTANT and not (
                end == start + 1 and key[start] == original[position]
            ):
                cost += 1
        score = (cost, 0 if versions[template_start + absorber] != _CONSTANT else 1)
        if best is None or score < best:
            best, best_spans = score, spans
    if best is None:  # the line has no pieces here at all: every template piece is empty
        return [(line_start, line_start)] * size
    return best_spans
