"""Settings sections: the tuning of the graph, baselines, world model, template miner and causal
search, from TOML / environment / --set to the config objects the stages build."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs.causal.search import SearchConfig
from pipeline import registry, topics
from pipeline.logs.templates import MinerConfig
from pipeline.settings import (
    NAMES,
    SCALARS,
    SECTION_FIELDS,
    SECTIONS,
    Settings,
    SettingsError,
    describe,
    environment,
    load,
    parse_assignments,
    section_config,
)
from pipeline.worldmodel.baseline import BaselineConfig
from pipeline.worldmodel.graph import GraphConfig
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from pipeline.worldmodel.worker import model_config


def test_defaults_are_the_components_own(tmp_path: Path) -> None:
    s, sources = load(environ={}, cwd=tmp_path)
    assert section_config(s, SearchConfig) == SearchConfig()
    assert section_config(s, MinerConfig) == MinerConfig()
    assert section_config(s, GraphConfig) == GraphConfig()
    assert section_config(s, BaselineConfig, interval_s=60.0) == BaselineConfig()
    built = model_config(s)
    assert dataclasses.replace(built, topic_partitions=()) == WorldModelConfig()
    assert dict(built.topic_partitions) == {
        t.name: t.partitions for t in topics.REGISTRY if t.encoding == "otlp_proto"
    }
    assert s.max_incidents == 10_000
    assert all(sources[n] == "default" for n in NAMES)
    # every field of every component is a setting, but for those derived from other settings
    for section in SECTIONS:
        names = {f.name for f in dataclasses.fields(section.config)} - section.derived
        assert set(SECTION_FIELDS[section.name]) == names


def test_toml_env_and_flags_reach_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        "[search]\nw_off_graph = -0.5\nhops = 4\n[graph]\nmax_edges = 1234\n"
        "[templates]\nmax_templates = 77\n[world_model]\nmax_series = 999\n"
    )
    env = {"WORLDLINE_SEARCH_HOPS": "5", "WORLDLINE_BASELINE_CUSUM_THRESHOLD": "9"}
    s, sources = load(
        config_file=cfg,
        environ=env,
        cli=parse_assignments(
            ["search.off=explain_needs_precedence,cold_start", "max_incidents=12"]
        ),
    )
    search = section_config(s, SearchConfig)
    assert search.w_off_graph == -0.5 and sources["search.w_off_graph"] == f"file {cfg}"
    assert search.hops == 5 and sources["search.hops"] == "environment"
    assert search.off == ("explain_needs_precedence", "cold_start")
    assert not search.on("explain_needs_precedence") and search.on("failures_need_harm")
    assert sources["search.off"] == "command line"
    assert sources["search.z_min"] == "default"
    assert s.max_incidents == 12
    config = model_config(s)
    assert config.graph.max_edges == 1234 and config.max_series == 999
    assert config.baseline.cusum_threshold == 9.0 and config.baseline.interval_s == 60.0
    assert section_config(s, MinerConfig).max_templates == 77
    rows = {name: (value, src) for name, value, src in describe(s, sources)}
    assert rows["search.w_off_graph"] == ("-0.5", f"file {cfg}")
    assert rows["graph.max_edges"] == ("1234", f"file {cfg}")
    assert rows["baseline.level_memory_s"] == ("1800.0", "default")
    assert rows["max_incidents"] == ("12", "command line")


@pytest.mark.parametrize(
    ("toml", "env", "flags", "expected"),
    [
        ("[graph]\nmax_edges = 0\n", {}, [], "invalid setting graph.max_edges=0 (from file"),
        (
            "",
            {"WORLDLINE_SEARCH_Z_MIN": "three"},
            [],
            "invalid setting search.z_min='three' (from environment)",
        ),
        ("", {}, ["search.temperature=nan"], "invalid setting search.temperature='nan'"),
        ("", {}, ["templates.bogus=1"], "unknown setting 'templates.bogus'"),
        ("", {"WORLDLINE_GRAPH_BOGUS": "1"}, [], "WORLDLINE_GRAPH_BOGUS: unknown setting"),
        ("[search]\nbogus = 1\n", {}, [], "unknown setting 'search.bogus'"),
        ("search = 1\n", {}, [], "search must be a table of settings"),
        ("", {}, ["max_incidents=0"], "invalid setting max_incidents='0' (from command line)"),
        ("", {}, ["search.temperature=0"], "invalid setting search.temperature='0'"),
        ("", {}, ["baseline.level_memory_s=0"], "invalid setting baseline.level_memory_s='0'"),
        ("", {}, ["search.hops=-1"], "invalid setting search.hops='-1'"),
        (
            "",
            {},
            ["templates.similarity_threshold=1.5"],
            "invalid templates settings: similarity_threshold must be in (0, 1];"
            " set: templates.similarity_threshold=1.5 (from command line)",
        ),
        (
            "",
            {},
            ["search.off=cold_start,nope"],
            "invalid search settings: off names rules of the search; nope is none of them",
        ),
        (
            "",
            {},
            ["search.calibration=0.7,0.1,0.2"],
            "invalid search settings: calibration takes 4 numbers: an intercept, then one weight"
            " each for margin, seen, cold; got 3",
        ),
        (
            "[baseline]\ncusum_cap = 2\n",
            {},
            [],
            "invalid baseline settings: cusum_cap must be >= cusum_threshold;"
            " set: baseline.cusum_cap=2.0 (from file",
        ),
    ],
)
def test_a_wrong_value_is_one_line_naming_it(
    tmp_path: Path, toml: str, env: dict[str, str], flags: list[str], expected: str
) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError) as e:
        load(config_file=cfg, environ=env, cli=parse_assignments(flags))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_the_command_line_fails_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--set", "graph.max_nodes=-1", "config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "400"},
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid setting graph.max_nodes='-1' (from command line)")


def test_weights_and_offsets_may_be_negative() -> None:
    s, _ = load(
        environ={},
        cli=parse_assignments(
            ["search.w_off_graph=-3", "search.null_logit=-1", "baseline.utc_offset_s=-18000"]
        ),
    )
    assert section_config(s, SearchConfig).w_off_graph == -3.0
    assert s.baseline.utc_offset_s == -18000.0


def test_a_child_process_sees_the_same_sections() -> None:
    s, _ = load(
        environ={},
        cli=parse_assignments(
            ["search.w_late=-0.7", "baseline.utc_offset_s=3600", "graph.max_nodes=5"]
        ),
    )
    env = environment(s)
    assert env["WORLDLINE_SEARCH_W_LATE"] == "-0.7"
    again, sources = load(environ=env)
    assert again == s
    assert sources["graph.max_nodes"] == "environment"


def test_no_scalar_setting_reads_as_a_sections_variable() -> None:
    for name in SCALARS:
        for section in SECTION_FIELDS:
            assert not name.startswith(section + "_"), name


def _built(monkeypatch: pytest.MonkeyPatch, stage: str, settings: Settings) -> list[Any]:
    """The configs ``stage`` builds from ``settings`` (its app built, not run)."""
    import pipeline.settings as settings_module

    built: list[Any] = []
    real = settings_module.section_config

    def spy(s: Settings, config: type[Any], **derived: Any) -> Any:
        made = real(s, config, **derived)
        built.append(made)
        return made

    module = registry.stage(stage).builder.partition(":")[0]  # type: ignore[union-attr]
    monkeypatch.setattr(f"{module}.section_config", spy)
    registry.build_app(stage, settings, "127.0.0.1:9")
    return built


def test_the_stages_build_their_configs_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = load(
        environ={"WORLDLINE_DATA_DIR": str(tmp_path)},
        cli=parse_assignments(
            [
                "search.w_off_graph=-0.25",
                "templates.max_templates=321",
                "graph.max_edges=4321",
                "world_model.max_series=1111",
                "max_incidents=9",
            ]
        ),
    )
    causal = _built(monkeypatch, "causal-search", s)
    assert [c.w_off_graph for c in causal if isinstance(c, SearchConfig)] == [-0.25]

    import jobs.causal.worker as causal_worker

    books: list[Any] = []
    real_load_book = causal_worker.load_book
    monkeypatch.setattr(
        causal_worker,
        "load_book",
        lambda path, book: books.append(book) or real_load_book(path, book),
    )
    registry.build_app("causal-search", s, "127.0.0.1:9")
    assert books[0].max_incidents == 9

    logs = _built(monkeypatch, "ingest-logs", s)
    assert [c.max_templates for c in logs if isinstance(c, MinerConfig)] == [321]

    import pipeline.worldmodel.worker as wm_worker

    models: list[WorldModel] = []
    real_load_model = wm_worker.load_model
    monkeypatch.setattr(
        wm_worker,
        "load_model",
        lambda store, config: models.append(real_load_model(store, config)) or models[-1],
    )
    registry.build_app("world-model", s, "127.0.0.1:9")
    model = models[0]
    assert model.graph.config.max_edges == 4321
    assert model.config.max_series == model.baselines.max_series == 1111


def test_a_restored_model_takes_new_caps_and_keeps_what_it_learned_under() -> None:
    learned = WorldModel(WorldModelConfig(max_series=10, graph=GraphConfig(max_edges=10)))
    restored = WorldModel.restore(learned.checkpoint())
    assert restored.config == learned.config
    wanted = WorldModelConfig(
        max_series=20,
        max_changes=7,
        allowed_lateness_s=5.0,
        topic_partitions=(("otlp_spans", 3),),
        graph=GraphConfig(max_edges=30, expiry_s=60.0),
        baseline=BaselineConfig(level_memory_s=900.0),
    )
    kept = restored.adopt(wanted)
    assert sorted(kept) == ["allowed_lateness_s", "baseline.level_memory_s", "graph.expiry_s"]
    assert restored.config.max_series == restored.baselines.max_series == 20
    assert restored.metrics.max_series == 20
    assert restored.config.max_changes == 7
    assert restored.config.allowed_lateness_s == 60.0
    assert restored.config.topic_partitions == (("otlp_spans", 3),)
    assert restored.graph.config.max_edges == 30 and restored.graph.config.expiry_s == 900.0
    assert restored.baselines.config.level_memory_s == 1800.0
