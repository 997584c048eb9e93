"""PetShop (Hardt et al., CLeaR 2024): loader, and the dataset's own protocol run on worldline's
causal search, BARO and N-Sigma side by side.

Loading goes through the same world-model code as live telemetry: every row of a PetShop
``metrics.csv`` becomes an OTLP ExportMetricsServiceRequest (one gauge per (metric, statistic)
column, named ``<metric>.<statistic>`` such as ``latency.p90``, resource ``service.name`` = the
component; a ``Sum`` column, the increase of a counter over the row's period, is a delta sum
named after its metric, and ``requests`` count events one by one: unit ``{request}``, so one
call of a rarely called endpoint is counting noise, not 30 spreads; a metric with an ``Average``
and percentiles, ``latency``, is a summary of the row's requests when their count is known, so
the median of 5 calls is known to its sampling error, not as if it were the median of 500), the
requests go through ``MetricColumns`` into series and points tables, and those into
``WorldModel.apply`` as sealed-segment manifests, so baselines learn through ``MetricDeriver``
exactly as they do from a collector. The call graph (``graph.csv``: a row calls a column)
becomes ``given`` edges of the world model's ``EdgeStore``.

Protocol (per scenario and alert metric): top-1 / top-3 recall of the root-cause node, an empty
answer being a miss; specificity on normal data: windows taken from ``noissue`` with an "alert"
on PetSite, counted right when the method names no cause.

Time. Each row aggregates 5 minutes, so the world model runs with 300 s intervals. The normal
history (``noissue``, ~49 h) was recorded months *after* the issues; it is moved back in time
by whole days so it ends before the scenario's first issue window (hour-of-day stays aligned)
and is learned once per scenario; each issue is answered on a restored copy. A scenario without
normal history (``temporal_traffic*``) learns from what a live deployment would have seen: the
windows of the same scenario recorded before the target one (labels are never read). The alert
(on ``PetSite``, at the dataset's alert time) is answered as the causal stage answers it
(``answer_as_live``): the window's rows are fed as they close, the search runs once the alert's
interval has closed, and while its answer is not settled (the alerted signal not yet seen
deviating, or an abstention) again as each of the alerted series' next two values arrives; the
last answer stands and the model never holds a later row. (The dataset's alert time is when the
issue began: its deviation shows in the next row.)
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from jobs.causal.followup import FOLLOW_INTERVALS, follow_step, settled, supersedes
from jobs.causal.search import CausalSearch, SearchConfig, SearchResult
from jobs.evaluate.baselines import baro, nsigma
from pipeline.ingest.metrics import MetricColumns
from pipeline.segments.store import Manifest, SourceRange
from pipeline.testing import kv
from pipeline.worldmodel.graph import EntityRef
from pipeline.worldmodel.model import WorldModel, WorldModelConfig

SCENARIOS = ("low_traffic", "high_traffic", "temporal_traffic1", "temporal_traffic2")
ALERT_METRICS = ("latency", "availability")
INTERVAL_S = 300.0
DAY_S = 86400.0
WINDOW_ROWS = 5
SPECIFICITY_WINDOWS = 12  # per scenario with normal data, per alert metric
SPECIFICITY_MIN_HISTORY_S = DAY_S  # a normal window is judged after a day of history
PETSHOP_SEARCH = SearchConfig()
"""The search as evaluated here: the default ``SearchConfig``, as deployed."""


# ------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Frame:
    """One PetShop ``metrics.csv``: rows of 5-minute aggregates, columns (component, metric,
    statistic), NaN where the dataset has no value."""

    timestamps: np.ndarray  # unix seconds, ascending
    columns: list[tuple[str, str, str]]
    values: np.ndarray  # (rows, columns) float64

    def __len__(self) -> int:
        return len(self.timestamps)

    def rows(self, start: int, stop: int) -> Frame:
        return Frame(self.timestamps[start:stop], self.columns, self.values[start:stop])

    def components(self) -> list[str]:
        return sorted({c for c, _, _ in self.columns})


def read_metrics(path: Path) -> Frame:
    """Parse the three header rows (microservice, metric, statistic), the index-name row
    (``unix_timestamp``) and the data rows (read columnar: long histories stay cheap)."""
    with path.open(newline="") as fh:
        head = [next(csv.reader([fh.readline()]), []) for _ in range(3)]
    if (
        not head[0]
        or head[0][0] != "microservice"
        or not (len(head[0]) == len(head[1]) == len(head[2]))
    ):
        raise ValueError(f"{path}: not a PetShop metrics file (three header rows expected)")
    header = list(zip(head[0][1:], head[1][1:], head[2][1:], strict=True))
    table = pl.read_csv(
        path,
        has_header=False,
        skip_rows=3,
        infer_schema=False,
        new_columns=[f"c{j}" for j in range(len(header) + 1)],
    )
    index = pl.col("c0").str.strip_chars()
    table = table.filter(index.is_not_null() & (index != "") & (index != "unix_timestamp"))
    numbers = table.select(
        pl.all().str.strip_chars().cast(pl.Float64, strict=False).fill_null(math.nan)
    ).to_numpy()
    times = numbers[:, 0].astype(np.float64)
    if np.isnan(times).any():
        raise ValueError(f"{path}: a row's timestamp is not a number")
    values = np.ascontiguousarray(numbers[:, 1:], dtype=np.float64).reshape(len(times), len(header))
    order = np.argsort(times, kind="stable")
    return Frame(times[order], header, values[order])


def read_graph(path: Path) -> list[tuple[str, str]]:
    """(caller, callee) pairs of ``graph.csv`` (an adjacency matrix: a row calls a column)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    callees = rows[0][1:]
    edges = []
    for row in rows[1:]:
        for callee, cell in zip(callees, row[1:], strict=True):
            if cell and float(cell) != 0.0 and row[0] != callee:
                edges.append((row[0], callee))
    return sorted(edges)


@dataclass(frozen=True)
class Issue:
    scenario: str
    split: str
    name: str
    frame: Frame
    alert_node: str
    alert_metric: str
    alert_agg: str
    alert_time_s: float
    root_cause: str

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.split}/{self.name}"


@dataclass
class Scenario:
    name: str
    graph: list[tuple[str, str]]
    normal: Frame | None
    issues: list[Issue] = field(default_factory=list)


def _issue_number(path: Path) -> int:
    tail = path.name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_issue(path: Path, scenario: str, split: str) -> Issue:
    target = json.loads((path / "target.json").read_text())
    return Issue(
        scenario=scenario,
        split=split,
        name=path.name,
        frame=read_metrics(path / "metrics.csv"),
        alert_node=str(target["target"]["node"]),
        alert_metric=str(target["target"]["metric"]),
        alert_agg=str(target["target"]["agg"]),
        alert_time_s=float(target["target"]["timestamp"]),
        root_cause=str(target["root_cause"]["node"]),
    )


def dataset_dir(root: Path) -> Path:
    """Accept the ``petshop`` folder or its ``dataset`` folder."""
    return root / "dataset" if (root / "dataset").is_dir() else root


def discover_scenarios(root: Path) -> list[str]:
    """Scenario folders of a dataset in PetShop's layout: the four published ones first (in
    their order), then any other folder with a ``graph.csv`` and issue folders, by name."""
    base = dataset_dir(root)
    if not base.is_dir():
        return []
    found = {
        p.name
        for p in base.iterdir()
        if (p / "graph.csv").is_file() and any(p.glob("*/issue_*/target.json"))
    }
    return [n for n in SCENARIOS if n in found] + sorted(found - set(SCENARIOS))


def load_scenario(root: Path, name: str) -> Scenario:
    base = dataset_dir(root) / name
    normal_path = base / "noissue" / "metrics.csv"
    scenario = Scenario(
        name=name,
        graph=read_graph(base / "graph.csv"),
        normal=read_metrics(normal_path) if normal_path.exists() else None,
    )
    for split in ("train", "test"):
        folder = base / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("issue_*"), key=_issue_number):
            scenario.issues.append(read_issue(path, name, split))
    return scenario


def row_spacing_s(scenarios: Sequence[Scenario], default: float = INTERVAL_S) -> float:
    """The rows' spacing in whole seconds: the median gap between consecutive rows over every
    frame (``default`` when no frame has two rows). PetShop's rows are 5 minutes apart; a
    dataset in its layout with finer rows runs the world model at their resolution."""
    gaps = [
        np.diff(frame.timestamps)
        for scenario in scenarios
        for frame in [
            *([] if scenario.normal is None else [scenario.normal]),
            *(issue.frame for issue in scenario.issues),
        ]
        if len(frame.timestamps) > 1
    ]
    every = np.concatenate(gaps) if gaps else np.array([])
    every = every[every > 0]
    return float(max(1.0, round(float(np.median(every))))) if len(every) else default


# ---------------------------------------------------------------- into the world model
def entity_key(component: str) -> str:
    return f"service:{component}"


def signal_name(metric: str, statistic: str) -> str:
    return f"{metric}.{statistic}".lower()


PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def _request_count(frame: Frame, i: int, cols: list[int]) -> float:
    """The component's requests in row ``i`` (its ``requests`` ``Sum`` column), 0 if unknown."""
    for j in cols:
        _, metric, statistic = frame.columns[j]
        if metric.lower() == "requests" and statistic.lower() == "sum":
            value = float(frame.values[i, j])
            return value if math.isfinite(value) and value > 0 else 0.0
    return 0.0


def _summarised(frame: Frame, i: int, cols: list[int], count: float) -> dict[str, list[int]]:
    """Metrics of a component's row that are statistics of its requests: an ``Average`` with
    percentiles (``p50``, ``p99``...), when the row's request count is known; metric -> its
    columns."""
    if count <= 0:
        return {}
    by_metric: dict[str, list[int]] = {}
    for j in cols:
        statistic = frame.columns[j][2].lower()
        if statistic == "average" or PERCENTILE.match(statistic):
            by_metric.setdefault(frame.columns[j][1], []).append(j)
    return {
        metric: js
        for metric, js in by_metric.items()
        if any(frame.columns[j][2].lower() == "average" for j in js) and len(js) > 1
    }


def to_requests(frame: Frame, shift_s: float = 0.0) -> list[ExportMetricsServiceRequest]:
    """One ExportMetricsServiceRequest per row: per component a resource, per column a gauge
    (a delta sum for a ``Sum`` column). A metric with an ``Average`` and percentiles is a
    statistic of the component's requests: when the row's request count is known, it is one
    summary of those requests alone (count, sum = average x count, the percentiles as
    quantiles, a start time of its own), so each statistic is known to its sampling error over
    that many requests."""
    by_component: dict[str, list[int]] = {}
    for j, (component, _, _) in enumerate(frame.columns):
        by_component.setdefault(component, []).append(j)
    requests = []
    for i, t in enumerate(frame.timestamps):
        req = ExportMetricsServiceRequest()
        t_ns = int(round((t + shift_s) * 1e9))
        for component in sorted(by_component):
            cols = [j for j in by_component[component] if not math.isnan(frame.values[i, j])]
            if not cols:
                continue
            rm = req.resource_metrics.add()
            rm.resource.attributes.append(kv("service.name", component))
            sm = rm.scope_metrics.add()
            sm.scope.name = "petshop"
            count = _request_count(frame, i, cols)
            summarised = _summarised(frame, i, cols, count)
            for metric, js in summarised.items():
                statistics = {frame.columns[j][2].lower(): float(frame.values[i, j]) for j in js}
                n = max(1, round(count))
                # a summary of the row's requests alone: its own start time (stamped, as every
                # column of the row is, at the row's timestamp, the row's period before it)
                point = sm.metrics.add(name=metric.lower()).summary.data_points.add(
                    start_time_unix_nano=t_ns - int(INTERVAL_S * 1e9),
                    time_unix_nano=t_ns,
                    count=n,
                    sum=statistics["average"] * n,
                )
                for statistic, value in sorted(statistics.items()):
                    found = PERCENTILE.match(statistic)
                    if found:
                        point.quantile_values.add(quantile=float(found.group(1)) / 100, value=value)
            done = {j for js in summarised.values() for j in js}
            for j in cols:
                if j in done:
                    continue
                _, metric, statistic = frame.columns[j]
                value = float(frame.values[i, j])
                if statistic.lower() == "sum":
                    # a Sum over the row's period is the increase of a counter in it: a delta
                    # sum (its rate per second over the model's interval), counting events one
                    # by one when it counts requests
                    unit = "{request}" if metric.lower() == "requests" else ""
                    total = sm.metrics.add(name=metric, unit=unit).sum
                    total.aggregation_temporality = (
                        AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
                    )
                    total.is_monotonic = True
                    total.data_points.add(time_unix_nano=t_ns, as_double=value)
                    continue
                gauge = sm.metrics.add(name=signal_name(metric, statistic)).gauge
                gauge.data_points.add(time_unix_nano=t_ns, as_double=value)
        requests.append(req)
    return requests


CHUNK_ROWS = 288  # a day of 5-minute rows per segment: memory stays bounded on long histories


def apply_frame(
    model: WorldModel, frame: Frame, topic: str, first_offset: int, shift_s: float = 0.0
) -> int:
    """Apply a frame's rows to the model in segments of at most ``CHUNK_ROWS`` rows (offsets
    ``first_offset`` .. one per row), closing the intervals each covers, as a live stream
    delivers them. Returns the next offset."""
    offset = first_offset
    for start in range(0, len(frame), CHUNK_ROWS):
        offset = _apply_rows(
            model, frame.rows(start, min(len(frame), start + CHUNK_ROWS)), topic, offset, shift_s
        )
    return offset


def _apply_rows(
    model: WorldModel, frame: Frame, topic: str, first_offset: int, shift_s: float
) -> int:
    """One series and one points segment for ``frame``'s rows, then the intervals they cover."""
    if len(frame) == 0:
        return first_offset
    columns = MetricColumns()
    for request in to_requests(frame, shift_s):
        columns.add_request(request)
    series, points = columns.tables()
    last_offset = first_offset + len(frame) - 1
    start = int(round((frame.timestamps[0] + shift_s) * 1e9))
    # a row aggregates the interval that starts at its timestamp: the data covers through its end
    end = int(round((frame.timestamps[-1] + shift_s + model.config.interval_s) * 1e9))
    for signal, table in (("metric_series", series), ("metrics", points)):
        manifest = Manifest(
            segment_id=f"{topic}-{signal}-{first_offset}",
            signal=signal,
            path="",
            start_unix_nano=start,
            end_unix_nano=end,
            services=tuple(sorted({str(s) for s in series.column("service").to_pylist()})),
            rows=table.num_rows,
            bytes=int(table.nbytes),
            source=SourceRange(topic, 0, first_offset, last_offset),
            arrow_schema_version=1,
            sealed_at="1970-01-01T00:00:00Z",
        )
        model.apply(manifest, table)
    model.advance()
    return last_offset + 1


def new_model(
    graph: Sequence[tuple[str, str]], t_s: float, interval_s: float = INTERVAL_S
) -> WorldModel:
    """A world model with ``graph``'s given edges, its intervals ``interval_s`` long (the rows'
    5 minutes by default)."""
    model = WorldModel(WorldModelConfig(interval_s=interval_s, allowed_lateness_s=0.0))
    for caller, callee in graph:
        model.graph.add_given_edge(
            EntityRef.from_key(entity_key(caller)),
            EntityRef.from_key(entity_key(callee)),
            "calls",
            int(t_s * 1e9),
        )
    return model


# ---------------------------------------------------------------------------- the runs
@dataclass
class Answer:
    """One method's answer on one case: ranked root-cause nodes (empty = "no cause")."""

    ranked: list[str]
    probability: float | None = None
    reason: str | None = None
    # the search's statistics: calibration features (``jobs.causal.calibration``) among them
    stats: dict[str, float] = field(default_factory=dict)


def worldline_answer(result: SearchResult) -> Answer:
    if result.abstained or not result.causes:
        return Answer([], None, result.abstain_reason, dict(result.stats))
    ranked: list[str] = []
    for cause in result.causes:
        node = cause.entity.partition(":")[2]
        if node not in ranked:
            ranked.append(node)
    return Answer(ranked, result.causes[0].probability, None, dict(result.stats))


def symptom_signal(metric: str, agg: str, latency_statistic: str | None = None) -> str:
    """The alerted series of an issue's (metric, statistic); ``latency_statistic`` replaces
    the statistic of latency alerts (what alerts on another statistic would be answered)."""
    if latency_statistic and metric == "latency":
        agg = latency_statistic
    if agg.lower() == "sum":
        return f"{metric}.rate_per_s"  # a Sum column is loaded as a delta sum (``to_requests``)
    return signal_name(metric, "average" if agg.lower() in ("average", "mean") else agg)


def rows_through(frame: Frame, t_s: float, interval_s: float = INTERVAL_S) -> Frame:
    """The rows of ``frame`` in the world model's intervals (``interval_s``, aligned to the
    epoch) up to the one starting at ``t_s``: all the model has when that interval has closed,
    not the rows recorded after it."""
    interval_start = np.floor(frame.timestamps / interval_s) * interval_s
    return frame.rows(0, int(np.searchsorted(interval_start, t_s, side="right")))


def answer_as_live(
    model: WorldModel,
    frame: Frame,
    alert_node: str,
    signal: str,
    config: SearchConfig,
    alert_s: float,
    topic: str,
    offset: int,
) -> SearchResult:
    """The alert answered as the causal stage answers it, feeding ``model`` the window's rows
    (offsets from ``offset``) as they close: searched at the alert's time once its interval has
    closed, then, while the answer is not settled (``jobs.causal.followup``), again as the
    alerted series' next values arrive, within the window; the last answer stands
    (``supersedes``). The model never holds a row after the last search's interval."""
    interval = model.config.interval_s
    symptoms: list[tuple[str, str | None]] = [(entity_key(alert_node), signal)]
    fed = 0
    last = math.floor(float(frame.timestamps[-1]) / interval) * interval
    result: SearchResult | None = None
    step = interval
    for follow in range(FOLLOW_INTERVALS + 1):
        t_s = alert_s + follow * step
        through = rows_through(frame, math.floor(t_s / interval) * interval, interval)
        if len(through) > fed:
            offset = apply_frame(model, through.rows(fed, len(through)), topic, offset)
            fed = len(through)
        if follow == 0:
            step = follow_step(model, symptoms)
        answer = CausalSearch(model, config).run(symptoms, t_s, alert_s)
        if result is not None and not supersedes(bool(answer.causes), bool(result.causes), follow):
            break
        result = answer
        seen = result.symptom_onset_s is not None
        if settled(seen, result.abstained) or t_s + step > last + interval:
            break
    assert result is not None
    return result


def history_shift(normal: Frame, first_window_start_s: float) -> float:
    """Whole days to move the normal history back so it ends before ``first_window_start_s``."""
    end = float(normal.timestamps[-1]) + INTERVAL_S
    days = math.ceil((end - first_window_start_s) / DAY_S)
    return -days * DAY_S if days > 0 else 0.0


def matrix_of(frame: Frame, columns: list[tuple[str, str, str]]) -> np.ndarray:
    index = {c: j for j, c in enumerate(frame.columns)}
    out = np.full((len(frame), len(columns)), math.nan)
    for k, c in enumerate(columns):
        j = index.get(c)
        if j is not None:
            out[:, k] = frame.values[:, j]
    return out


def baseline_answers(
    normal: np.ndarray | None, window: np.ndarray, columns: list[tuple[str, str, str]]
) -> dict[str, Answer]:
    """BARO and N-Sigma on the normal history (or nothing) followed by the issue window."""
    labels = [f"{c}|{m}.{s}" for c, m, s in columns]
    out = {}
    for name, method in (("baro", baro), ("nsigma", nsigma)):
        ranking = method(normal, window, labels)
        ranked: list[str] = []
        for label, _score in ranking:
            node = label.split("|", 1)[0]
            if node not in ranked:
                ranked.append(node)
        out[name] = Answer(ranked)
    return out


@dataclass
class CaseResult:
    key: str
    scenario: str
    split: str
    metric: str
    root_cause: str
    answers: dict[str, Answer]


@dataclass
class NormalResult:
    scenario: str
    metric: str
    at_s: float
    answers: dict[str, Answer]


def _prior_windows(scenario: Scenario, issue: Issue) -> list[Frame]:
    """Windows of the same scenario recorded before ``issue``'s (any split; labels unread)."""
    start = float(issue.frame.timestamps[0])
    earlier = [
        other.frame
        for other in scenario.issues
        if other is not issue and float(other.frame.timestamps[-1]) < start
    ]
    return sorted(earlier, key=lambda f: float(f.timestamps[0]))


def run_scenario(
    scenario: Scenario,
    splits: Sequence[str] = ("test",),
    config: SearchConfig | None = None,
    on_case: Callable[[str], None] = lambda _key: None,
    specificity_windows: int = SPECIFICITY_WINDOWS,
    interval_s: float = INTERVAL_S,
    latency_statistic: str | None = None,
) -> tuple[list[CaseResult], list[NormalResult]]:
    """Every issue of ``splits`` and the normal windows, each answered as live, by a world model
    of ``interval_s`` intervals (the rows' 5 minutes by default; shorter ones show what a
    deployment whose interval is finer than its data would see)."""
    config = config or PETSHOP_SEARCH
    issues = [i for i in scenario.issues if i.split in splits]
    columns = sorted({c for i in scenario.issues for c in i.frame.columns})
    cases: list[CaseResult] = []
    normals: list[NormalResult] = []
    topic = f"petshop.{scenario.name}"
    if scenario.normal is not None:
        first_start = min(float(i.frame.timestamps[0]) for i in scenario.issues)
        shift = history_shift(scenario.normal, first_start)
        base = new_model(scenario.graph, float(scenario.normal.timestamps[0]) + shift, interval_s)
        offset = apply_frame(base, scenario.normal, topic, 0, shift)
        snapshot = base.checkpoint()
        normal_matrix = matrix_of(scenario.normal, columns)
        for issue in issues:
            model = WorldModel.restore(snapshot)
            window = matrix_of(issue.frame, columns)
            cases.append(
                _case(
                    issue,
                    model,
                    config,
                    normal_matrix,
                    window,
                    columns,
                    topic,
                    offset,
                    latency_statistic,
                )
            )
            on_case(issue.key)
        normals = _normal_windows(
            scenario, config, columns, specificity_windows, on_case, interval_s, latency_statistic
        )
    else:
        for issue in issues:
            prior = _prior_windows(scenario, issue)
            model = new_model(
                scenario.graph,
                float(prior[0].timestamps[0] if prior else issue.frame.timestamps[0]),
                interval_s,
            )
            offset = 0
            for frame in prior:
                offset = apply_frame(model, frame, topic, offset)
            history = np.concatenate([matrix_of(f, columns) for f in prior]) if prior else None
            window = matrix_of(issue.frame, columns)
            cases.append(
                _case(
                    issue, model, config, history, window, columns, topic, offset, latency_statistic
                )
            )
            on_case(issue.key)
    return cases, normals


def _case(
    issue: Issue,
    model: WorldModel,
    config: SearchConfig,
    normal: np.ndarray | None,
    window: np.ndarray,
    columns: list[tuple[str, str, str]],
    topic: str,
    offset: int,
    latency_statistic: str | None = None,
) -> CaseResult:
    signal = symptom_signal(issue.alert_metric, issue.alert_agg, latency_statistic)
    result = answer_as_live(
        model, issue.frame, issue.alert_node, signal, config, issue.alert_time_s, topic, offset
    )
    answers = {"worldline": worldline_answer(result)}
    answers.update(baseline_answers(normal, window, columns))
    return CaseResult(
        issue.key, issue.scenario, issue.split, issue.alert_metric, issue.root_cause, answers
    )


def normal_window_starts(normal: Frame, count: int) -> list[int]:
    """Row indices of ``count`` evenly spread 5-row windows after a day of history."""
    t = normal.timestamps
    first = int(np.searchsorted(t, t[0] + SPECIFICITY_MIN_HISTORY_S))
    last = len(normal) - WINDOW_ROWS
    if last < first or count <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(first, last, count)})


def normal_alerts(scenario: Scenario) -> tuple[str, list[tuple[str, str]]]:
    """What normal windows are alerted on: the node the scenario's issues alert on most often
    (PetShop: ``PetSite``), with each (metric, statistic) they alert on."""
    nodes = [i.alert_node for i in scenario.issues]
    node = max(sorted(set(nodes)), key=nodes.count) if nodes else "PetSite"
    pairs = sorted(
        {(i.alert_metric, i.alert_agg) for i in scenario.issues if i.alert_node == node},
        key=lambda p: (ALERT_METRICS.index(p[0]) if p[0] in ALERT_METRICS else 99, p),
    )
    return node, pairs or [(m, "Average") for m in ALERT_METRICS]


def _normal_windows(
    scenario: Scenario,
    config: SearchConfig,
    columns: list[tuple[str, str, str]],
    count: int,
    on_case: Callable[[str], None],
    interval_s: float = INTERVAL_S,
    latency_statistic: str | None = None,
) -> list[NormalResult]:
    """Stream the normal data once; at each sampled window run every method with an alert on
    the issues' alerted node and metrics (PetShop: PetSite's latency and availability) at the
    window's third row, as in the issue windows."""
    normal = scenario.normal
    assert normal is not None
    starts = normal_window_starts(normal, count)
    out: list[NormalResult] = []
    model = new_model(scenario.graph, float(normal.timestamps[0]), interval_s)
    topic = f"petshop.{scenario.name}.noissue"
    fed = 0
    matrix = matrix_of(normal, columns)
    alert_node, alerts = normal_alerts(scenario)
    for start in starts:
        stop = start + WINDOW_ROWS
        window = normal.rows(start, stop)
        at = float(window.timestamps[2])
        # the stream up to the window; each alert is answered as live on a copy of the model
        fed = apply_frame(model, normal.rows(fed, start), topic, fed) if start > fed else fed
        snapshot = model.checkpoint()
        history = matrix[:start]
        base_answers = baseline_answers(history, matrix[start:stop], columns)
        for metric, agg in alerts:
            result = answer_as_live(
                WorldModel.restore(snapshot),
                window,
                alert_node,
                symptom_signal(metric, agg, latency_statistic),
                config,
                at,
                topic,
                fed,
            )
            answers = {"worldline": worldline_answer(result), **base_answers}
            out.append(NormalResult(scenario.name, metric, float(window.timestamps[2]), answers))
        on_case(f"{scenario.name}/noissue@{start}")
    return out


# ------------------------------------------------------------------------------ scoring
METHODS = ("worldline", "baro", "nsigma")


def recall_at(cases: Sequence[CaseResult], method: str, k: int) -> float:
    if not cases:
        return math.nan
    return sum(c.root_cause in c.answers[method].ranked[:k] for c in cases) / len(cases)


def empty_rate(cases: Sequence[CaseResult], method: str) -> float:
    if not cases:
        return math.nan
    return sum(not c.answers[method].ranked for c in cases) / len(cases)


def specificity(normals: Sequence[NormalResult], method: str) -> float:
    if not normals:
        return math.nan
    return sum(not n.answers[method].ranked for n in normals) / len(normals)


def _ordered(values: Sequence[str], known: Sequence[str]) -> list[str]:
    """Distinct ``values``: the ``known`` ones in their order, then the rest by name."""
    present = set(values)
    return [v for v in known if v in present] + sorted(present - set(known))


def iter_groups(cases: Sequence[CaseResult]) -> Iterator[tuple[str, str, list[CaseResult]]]:
    for scenario in _ordered([c.scenario for c in cases], SCENARIOS):
        for metric in _ordered([c.metric for c in cases], ALERT_METRICS):
            group = [c for c in cases if c.scenario == scenario and c.metric == metric]
            if group:
                yield scenario, metric, group


def summarize(cases: Sequence[CaseResult], normals: Sequence[NormalResult]) -> dict[str, Any]:
    rows = []
    for scenario, metric, group in iter_groups(cases):
        row: dict[str, Any] = {"scenario": scenario, "metric": metric, "n": len(group)}
        for method in METHODS:
            row[method] = {
                "top1": recall_at(group, method, 1),
                "top3": recall_at(group, method, 3),
                "empty": empty_rate(group, method),
            }
        rows.append(row)
    per_scenario = {}
    for scenario in _ordered([c.scenario for c in cases], SCENARIOS):
        group = [c for c in cases if c.scenario == scenario]
        if group:
            per_scenario[scenario] = {
                m: {"top1": recall_at(group, m, 1), "top3": recall_at(group, m, 3)} for m in METHODS
            }
    average = {
        m: {
            k: float(np.mean([v[m][k] for v in per_scenario.values()])) if per_scenario else None
            for k in ("top1", "top3")
        }
        for m in METHODS
    }
    spec = {
        m: {
            "all": specificity(normals, m),
            **{
                metric: specificity([n for n in normals if n.metric == metric], m)
                for metric in _ordered([n.metric for n in normals], ALERT_METRICS)
            },
        }
        for m in METHODS
    }
    return {
        "groups": rows,
        "per_scenario": per_scenario,
        "average_over_scenarios": average,
        "specificity": spec,
        "normal_windows": len(normals),
    }
