"""``worldline evaluate``: accuracy on labelled data, next to published baselines."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobs.evaluate import petshop, simulator
from jobs.evaluate.replay_baselines import replay_baseline

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PETSHOP = REPO_ROOT.parent / "shared" / "data" / "petshop"
PUBLISHED = "published/petshop_repo_notebook_baseline_traversal_MAD5.csv"


@click.group("evaluate")
def evaluate() -> None:
    """Accuracy of the causal search on labelled datasets, side by side with baselines."""


def _published(data: Path) -> dict[tuple[str, str], dict[str, float]]:
    """The dataset authors' traversal baseline (``../published`` next to the petshop folder)."""
    path = data.resolve().parent / PUBLISHED
    if not path.exists():
        return {}
    out = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            scenario = row["scenario"]
            names = (
                ("temporal_traffic1", "temporal_traffic2")
                if scenario.startswith("temporal_traffic(")
                else (scenario,)
            )
            for name in names:
                out[(name, row["issue_metric"])] = {
                    k: float(row[k])
                    for k in (
                        "top1_recall",
                        "top3_recall",
                        "frac_empty_result",
                        "specificity_on_normal",
                    )
                }
    return out


def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def render(summary: dict[str, Any], published: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = [
        "| scenario | metric | n | worldline top-1 | top-3 | empty | BARO top-1 | top-3 |"
        " N-Sigma top-1 | top-3 | published top-1 | top-3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["groups"]:
        pub = published.get((row["scenario"], row["metric"]), {})
        w, b, n = row["worldline"], row["baro"], row["nsigma"]
        lines.append(
            f"| {row['scenario']} | {row['metric']} | {row['n']} | {_f(w['top1'])} | {_f(w['top3'])}"
            f" | {_f(w['empty'])} | {_f(b['top1'])} | {_f(b['top3'])} | {_f(n['top1'])}"
            f" | {_f(n['top3'])} | {_f(pub.get('top1_recall'))} | {_f(pub.get('top3_recall'))} |"
        )
    avg = summary["average_over_scenarios"]
    lines.append(
        f"| **average over scenarios** | | | {_f(avg['worldline']['top1'])}"
        f" | {_f(avg['worldline']['top3'])} | | {_f(avg['baro']['top1'])} | {_f(avg['baro']['top3'])}"
        f" | {_f(avg['nsigma']['top1'])} | {_f(avg['nsigma']['top3'])} | | |"
    )
    spec = summary["specificity"]
    pub_spec = {
        metric: [v["specificity_on_normal"] for (s, m), v in published.items() if m == metric]
        for metric in petshop.ALERT_METRICS
    }
    lines += [
        "",
        f"Specificity on normal data ({summary['normal_windows']} alerts on the issues' alerted"
        " service in windows sampled from `noissue`; right = no cause named):",
        "",
        "| method | all | latency alerts | availability alerts |",
        "|---|---|---|---|",
    ]
    for method, label in (("worldline", "worldline"), ("baro", "BARO"), ("nsigma", "N-Sigma")):
        s = spec[method]
        lines.append(
            f"| {label} | {_f(s['all'])} | {_f(s.get('latency'))} | {_f(s.get('availability'))} |"
        )
    if published:
        lines.append(
            "| published traversal (per scenario, as reported) | | "
            + " | ".join(
                "/".join(f"{v:.2f}" for v in pub_spec[m]) or "–" for m in petshop.ALERT_METRICS
            )
            + " |"
        )
    lines += [
        "",
        'BARO and N-Sigma rank every metric whatever the data: they never answer "no cause", so'
        " their specificity is 0 by construction (as in their papers, which have no threshold).",
        "Published: the dataset authors' traversal baseline as reported in their notebook"
        " (all issues, temporal scenarios pooled); the other columns are on the `test` issues.",
    ]
    return "\n".join(lines)


@evaluate.command("petshop")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    show_default="../shared/data/petshop, skipped when absent",
    help="A dataset in PetShop's layout: <scenario>/graph.csv, <scenario>/noissue/metrics.csv"
    " (optional) and <scenario>/{train,test}/issue_*/{metrics.csv,target.json}, directly or"
    " under dataset/. Every such scenario folder is evaluated.",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option(
    "--split",
    type=click.Choice(["test", "train", "all"]),
    default="test",
    show_default=True,
    help="Issues to score (train is for calibration only).",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    help="Only these scenario folders (repeatable; default all found, e.g. "
    + ", ".join(petshop.SCENARIOS)
    + ").",
)
@click.option(
    "--normal-windows",
    default=petshop.SPECIFICITY_WINDOWS,
    show_default=True,
    help="Normal windows sampled per scenario for specificity.",
)
@click.option(
    "--interval-s",
    type=click.FloatRange(min=1.0, max=3600.0),
    default=None,
    help="The world model's interval (the setting interval_s). Default: the rows' spacing"
    " (median gap between rows: 300 s for PetShop's 5-minute rows); a shorter interval shows"
    " what a deployment whose interval is finer than its data sees.",
)
@click.option(
    "--latency-statistic",
    type=click.Choice(["average", "p50", "p90", "p95", "p99"]),
    default=None,
    help="Answer the latency alerts as if they fired on this statistic of the alerted"
    " service's latency instead of the dataset's (Average): how the answers hold up for"
    " alerts on a tail quantile. BARO and N-Sigma do not read the alert.",
)
def petshop_command(
    data: Path | None,
    json_out: Path | None,
    split: str,
    scenarios: tuple[str, ...],
    normal_windows: int,
    interval_s: float | None,
    latency_statistic: str | None,
) -> None:
    """PetShop RCA dataset: top-1/top-3 per scenario and alert metric, specificity on normal
    data; worldline's causal search, BARO and N-Sigma in the same run."""
    err = Console(stderr=True, highlight=False)
    found = petshop.discover_scenarios(data or DEFAULT_PETSHOP)
    if not found:
        if data is None:
            err.print(f"PetShop data not found at {DEFAULT_PETSHOP}: skipping (pass --data PATH).")
            sys.exit(0)
        raise click.BadParameter(
            f"{data} holds no scenario in PetShop's layout (a folder with graph.csv and"
            " train/ or test/ issue_* folders, each with metrics.csv and target.json)",
            param_hint="--data",
        )
    data = data or DEFAULT_PETSHOP
    unknown = sorted(set(scenarios) - set(found))
    if unknown:
        raise click.BadParameter(
            f"no scenario {', '.join(unknown)} in {data}; found: {', '.join(found)}",
            param_hint="--scenario",
        )
    names = scenarios or tuple(found)
    splits = ("train", "test") if split == "all" else (split,)
    cases: list[petshop.CaseResult] = []
    normals: list[petshop.NormalResult] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        loaded = [petshop.load_scenario(data, name) for name in names]
        if interval_s is None:
            interval_s = petshop.row_spacing_s(loaded)
            err.print(f"interval: {interval_s:g} s (the rows' spacing)")
        if latency_statistic:
            err.print(f"latency alerts answered on the alerted service's {latency_statistic}")
        total = sum(
            sum(i.split in splits for i in s.issues)
            + (
                len(petshop.normal_window_starts(s.normal, normal_windows))
                if s.normal is not None
                else 0
            )
            for s in loaded
        )
        task = progress.add_task("petshop", total=total)
        for scenario in loaded:
            progress.update(task, description=scenario.name)
            c, n = petshop.run_scenario(
                scenario,
                splits,
                on_case=lambda _key: progress.advance(task),
                specificity_windows=normal_windows,
                interval_s=interval_s,
                latency_statistic=latency_statistic,
            )
            cases += c
            normals += n
    summary = petshop.summarize(cases, normals)
    published = _published(data)
    click.echo(render(summary, published))
    if json_out is not None:
        doc = {
            "dataset": "petshop",
            "split": split,
            "interval_s": interval_s,
            "latency_statistic": latency_statistic,
            "summary": summary,
            "published": {f"{s}/{m}": v for (s, m), v in published.items()},
            "cases": [
                {
                    "case": c.key,
                    "metric": c.metric,
                    "root_cause": c.root_cause,
                    "answers": {
                        m: {
                            "ranked": a.ranked[:5],
                            "probability": a.probability,
                            "reason": a.reason,
                            "stats": a.stats,
                        }
                        for m, a in c.answers.items()
                    },
                }
                for c in cases
            ],
            "normal": [
                {
                    "scenario": n.scenario,
                    "metric": n.metric,
                    "at": n.at_s,
                    "answers": {m: a.ranked[:3] for m, a in n.answers.items()},
                }
                for n in normals
            ],
        }
        json_out.write_bytes(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        err.print(f"wrote {json_out}")


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


@evaluate.command("simulator")
@click.option("--seeds", default="1-2", show_default=True, help="Held-out seeds: 1-3 or 1,4.")
@click.option(
    "--train-seeds",
    default="",
    help="Seeds to fit the probability mapping on (temperature, null logit); reported beside"
    " the held-out seeds. Empty: no fit.",
)
@click.option("--quick", is_flag=True, help="CI: a few scenarios, one seed.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(simulator.FAULT_SCENARIOS),
    help="Only these fault scenarios (repeatable; default all).",
)
@click.option("--no-normal", is_flag=True, help="Skip the fault-free runs.")
@click.option(
    "--history-s",
    type=click.FloatRange(min=60.0),
    default=simulator.SuiteConfig.history_s,
    show_default=True,
    help="Normal telemetry before each fault, in seconds. Under the search's warm-up (15"
    " intervals: 900 at the default 60 s interval) every case is a cold start, as for a"
    " service just deployed or a replay of a short capture.",
)
@click.option(
    "--services",
    type=click.IntRange(min=10, max=500),
    default=simulator.SuiteConfig.services,
    show_default=True,
    help="Services in the simulated system (each case draws its topology from its seed): a"
    " larger system has more callers per dependency, longer call chains and more series"
    " that deviate by chance. About 40 is the size of the larger microservice benchmarks;"
    " a case takes about three times as long to prepare.",
)
@click.option(
    "--realism",
    type=click.Choice(list(simulator.REALISM)),
    default="full",
    show_default=True,
    help="What the deployment delivers: "
    + "; ".join(f"{k}: {v}" for k, v in simulator.REALISM.items())
    + ".",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep prepared cases (simulated + learned world model) here and reuse them.",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None)
def simulator_command(
    seeds: str,
    train_seeds: str,
    quick: bool,
    scenarios: tuple[str, ...],
    no_normal: bool,
    history_s: float,
    services: int,
    realism: str,
    cache: Path | None,
    json_out: Path | None,
) -> None:
    """Simulator suite: every fault scenario over seeds (top-1, top-3, Avg@5, abstention per
    fault class, calibration, specificity on fault-free runs); BARO and N-Sigma side by side."""
    from jobs.causal.search import SearchConfig

    err = Console(stderr=True, highlight=False)
    names = list(scenarios) or list(
        simulator.QUICK_SCENARIOS if quick else simulator.FAULT_SCENARIOS
    )
    held = [1] if quick and seeds == "1-2" else _seeds(seeds)
    train = _seeds(train_seeds) if train_seeds else []
    suite = simulator.SuiteConfig(history_s=history_s, services=services, realism=realism)
    config = SearchConfig()
    per_seed = len(names) + (0 if no_normal else 1)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("simulator", total=per_seed * (len(held) + len(train)))

        def advance(key: str) -> None:
            progress.update(task, advance=1, description=key)

        kwargs: dict[str, Any] = {"normal_runs": not no_normal, "on_case": advance, "cache": cache}
        train_cases = simulator.prepare_all(names, train, suite, **kwargs) if train else []
        held_cases = simulator.prepare_all(names, held, suite, **kwargs)
    doc: dict[str, Any] = {
        "dataset": "simulator",
        "suite": suite.__dict__,
        "scenarios": names,
        "seeds": held,
        "train_seeds": train,
        "search_config": {"temperature": config.temperature, "null_logit": config.null_logit},
    }
    held_out = [simulator.score(p, config) for p in held_cases]
    if train_cases:
        train_out = [simulator.score(p, config) for p in train_cases]
        t, null, loss = simulator.fit_probability(train_out)
        fitted = SearchConfig(temperature=t, null_logit=null)
        doc["fit"] = {
            "temperature": t,
            "null_logit": null,
            "train_log_loss": loss,
            "train": {
                "current": simulator.calibration(simulator._calibrated_cases(train_out)),
                "fitted": simulator.calibration(
                    simulator._calibrated_cases(simulator.with_probability(train_out, fitted))
                ),
            },
            "held_out": {
                "current": simulator.calibration(simulator._calibrated_cases(held_out)),
                "fitted": simulator.calibration(
                    simulator._calibrated_cases(simulator.with_probability(held_out, fitted))
                ),
            },
        }
        err.print(
            f"fitted on seeds {train}: temperature {t:.2f}, null logit {null:.2f}"
            f" (log loss {loss:.3f})"
        )
    summary = simulator.summarize(held_out)
    doc["summary"] = summary
    doc["cases"] = [simulator.outcome_json(o) for o in held_out]
    click.echo(simulator.render(summary))
    if "fit" in doc:
        fit = doc["fit"]
        click.echo("")
        click.echo("| calibration | ECE | precision p>=0.8 | n p>=0.8 |")
        click.echo("|---|---|---|---|")
        for split in ("train", "held_out"):
            for which in ("current", "fitted"):
                c = fit[split][which]
                click.echo(
                    f"| {split} seeds, {which} mapping | {_f(c['ece'])}"
                    f" | {_f(c['high_confidence_precision'])} | {c['high_confidence_n']} |"
                )
    if json_out is not None:
        json_out.write_bytes(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        err.print(f"wrote {json_out}")


evaluate.add_command(replay_baseline)


DEFAULT_BUNDLE = REPO_ROOT.parent / "shared" / "data" / "nezha-ob"


@evaluate.command("bundle")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--interval-s", type=float, default=60.0, show_default=True, help="interval_s.")
@click.option(
    "--max-alerts", type=int, default=None, help="Answer only the first N alerts (quick runs)."
)
@click.option(
    "--alert-shift-s",
    type=click.FloatRange(-3600, 3600),
    default=0.0,
    show_default=True,
    help="Move every alert's startsAt by this many seconds (later when positive) and answer"
    " from the data up to the moved time: how the answers depend on when an alerting rule"
    " fires (the Online Boutique alerts fire 60 s after each injection).",
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write scores and answers here."
)
def bundle_command(
    bundle: Path | None,
    interval_s: float,
    max_alerts: int | None,
    alert_shift_s: float,
    json_out: Path | None,
) -> None:
    """A labelled replay bundle (default ../shared/data/nezha-ob) offline, in event time: its
    records go through ingest and the world model as the stages store and apply them, each alert
    is answered as the causal stage answers it (first: from the data up to its startsAt, the open
    intervals scored provisionally; final: once its interval has closed), BARO and N-Sigma rank
    the metrics at the same instants. Prints AS@1/3/5, Avg@5, abstention and ECE side by side.
    The replay tool through Kafka (README, Evaluation) judges the live path; this is the faster
    loop (a few minutes on the Online Boutique bundle)."""
    from jobs.evaluate import bundle as offline

    err = Console(stderr=True, highlight=False)
    path = bundle or DEFAULT_BUNDLE
    if not (path / "manifest.json").exists():
        if bundle is None:
            err.print(f"no replay bundle at {DEFAULT_BUNDLE}: skipping (pass a BUNDLE folder).")
            sys.exit(0)
        raise click.BadParameter(f"{path} is not a replay bundle (no manifest.json)")
    try:
        run = offline.evaluate_bundle(
            path,
            interval_s=interval_s,
            max_alerts=max_alerts,
            progress=err.print,
            alert_shift_s=alert_shift_s,
        )
    except offline.BundleError as e:
        raise click.ClickException(str(e)) from e
    click.echo(offline.render(run, path.name))
    if json_out is not None:
        doc = {
            "bundle": str(path),
            "interval_s": interval_s,
            "alert_shift_s": alert_shift_s,
            "scores": run.scores,
            "answers": {m: {"first": a.first, "final": a.final} for m, a in run.answers.items()},
        }
        json_out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        err.print(f"wrote {json_out}")


@evaluate.command("ablate")
@click.option(
    "--realism",
    "modes",
    default=",".join(simulator.REALISM),
    show_default=True,
    help="Simulator realism modes, comma separated ('' for none).",
)
@click.option("--seeds", default="1-2", show_default=True, help="Simulator seeds: 1-3 or 1,4.")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory keeping the prepared simulator cases (one folder per mode): minutes per"
    " mode the first time, seconds after.",
)
@click.option(
    "--petshop/--no-petshop",
    "with_petshop",
    default=True,
    show_default=True,
    help="Score PetShop (every issue; about two minutes per variant).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="PetShop's folder (default: ../shared/data/petshop beside the project).",
)
@click.option(
    "--bundle",
    "bundles",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    multiple=True,
    help="A replay bundle scored offline (first records), e.g. ../shared/data/nezha-ob.",
)
@click.option(
    "--vary",
    multiple=True,
    metavar="NAME=VALUE",
    help="Another variant of the search's config (repeatable), e.g. --vary w_depth=0.3;"
    " --vary off=cold_start turns a rule off (SearchConfig.off names them).",
)
@click.option(
    "--no-rules",
    is_flag=True,
    help="Only the --vary variants, not every rule of the search turned off in turn.",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the figures.")
def ablate_command(
    modes: str,
    seeds: str,
    cache: Path | None,
    with_petshop: bool,
    data: Path | None,
    bundles: tuple[Path, ...],
    vary: tuple[str, ...],
    no_rules: bool,
    json_out: Path | None,
) -> None:
    """Each rule and weight of the causal search turned off in turn, scored on every dataset
    family next to the default (top-1, abstained = miss): a rule is kept only when it holds or
    improves on every family. Prints the change in top-1 per family and a verdict per rule."""
    from jobs.evaluate import ablate

    try:
        configs = ablate.variants(vary, rules=not no_rules)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--vary") from exc
    err = Console(stderr=True, highlight=False)
    result = ablate.Ablation()
    wanted = [m for m in (x.strip() for x in modes.split(",")) if m]
    unknown = [m for m in wanted if m not in simulator.REALISM]
    if unknown:
        raise click.BadParameter(
            f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(simulator.REALISM)}",
            param_hint="--realism",
        )
    with Progress(
        TextColumn("[bold]{task.description}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("ablation", total=None)

        def step(key: str) -> None:
            progress.update(task, advance=1, description=key)

        if wanted:
            ablate.simulator_family(result, configs, wanted, _seeds(seeds), cache, step)
        if with_petshop:
            root = data or DEFAULT_PETSHOP
            if not root.exists():
                raise click.UsageError(f"no PetShop data at {root} (--data DIR or --no-petshop)")
            ablate.petshop_family(result, configs, petshop.dataset_dir(root), step)
        for bundle in bundles:
            ablate.bundle_family(result, configs, bundle, step)
    if not result.families:
        raise click.UsageError("nothing to score: give --realism, --petshop or --bundle")
    click.echo(ablate.render(result))
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
        click.echo(f"wrote {json_out}")


@evaluate.command("lodo")
@click.option(
    "--simulator",
    "simulators",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A `worldline evaluate simulator --json` output (repeatable: one per realism mode).",
)
@click.option(
    "--petshop",
    "petshops",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A `worldline evaluate petshop --json` output (`--split all` gives the fit most cases).",
)
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A `worldline evaluate bundle --json` output.",
)
@click.option(
    "--l2",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="L2 penalty of the calibration fit.",
)
def lodo_command(
    simulators: tuple[Path, ...], petshops: tuple[Path, ...], bundles: tuple[Path, ...], l2: float
) -> None:
    """Every dataset side by side (top-1, top-3, abstention, specificity, ECE, with BARO and
    N-Sigma), and the top-1 probability's calibration judged leave-one-dataset-out: fitted on
    the other dataset families, scored on the one left out, the held-out folds pooled.

    Reads the JSON the other `worldline evaluate` commands write, e.g.

    \b
      worldline evaluate simulator --realism metrics-only --json sim-metrics-only.json
      worldline evaluate petshop --split all --json petshop.json
      worldline evaluate bundle --json ob.json
      worldline evaluate lodo --simulator sim-metrics-only.json --petshop petshop.json \\
          --bundle ob.json
    """
    from jobs.evaluate import lodo

    datasets = []
    try:
        for path in simulators:
            datasets.append(lodo.from_simulator(orjson.loads(path.read_bytes())))
        for path in petshops:
            datasets.append(lodo.from_petshop(orjson.loads(path.read_bytes())))
        for path in bundles:
            datasets.append(lodo.from_bundle(orjson.loads(path.read_bytes())))
    except (KeyError, TypeError, orjson.JSONDecodeError) as e:
        raise click.ClickException(f"not an evaluation output this command reads: {e!r}") from e
    if len({d.family for d in datasets}) < 2:
        raise click.UsageError("give outputs of at least two dataset families")
    folds, pooled = lodo.leave_one_out(datasets, l2)
    click.echo(lodo.render(datasets, folds, pooled, l2))
