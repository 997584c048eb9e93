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

from jobs.evaluate import petshop

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
        f"Specificity on normal data ({summary['normal_windows']} alerts on PetSite in windows"
        " sampled from `noissue`, low and high traffic; right = no cause named):",
        "",
        "| method | all | latency alerts | availability alerts |",
        "|---|---|---|---|",
    ]
    for method, label in (("worldline", "worldline"), ("baro", "BARO"), ("nsigma", "N-Sigma")):
        s = spec[method]
        lines.append(f"| {label} | {_f(s['all'])} | {_f(s['latency'])} | {_f(s['availability'])} |")
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
    default=DEFAULT_PETSHOP,
    show_default="../shared/data/petshop",
    help="The PetShop folder (with dataset/).",
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
    type=click.Choice(petshop.SCENARIOS),
    help="Only these scenarios (repeatable; default all).",
)
@click.option(
    "--normal-windows",
    default=petshop.SPECIFICITY_WINDOWS,
    show_default=True,
    help="Normal windows sampled per scenario for specificity.",
)
def petshop_command(
    data: Path,
    json_out: Path | None,
    split: str,
    scenarios: tuple[str, ...],
    normal_windows: int,
) -> None:
    """PetShop RCA dataset: top-1/top-3 per scenario and alert metric, specificity on normal
    data; worldline's causal search, BARO and N-Sigma in the same run."""
    err = Console(stderr=True, highlight=False)
    if not (petshop.dataset_dir(data) / "low_traffic").is_dir():
        err.print(f"PetShop data not found at {data}: skipping (pass --data PATH).")
        sys.exit(0)
    names = scenarios or petshop.SCENARIOS
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
