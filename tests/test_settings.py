from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings, SettingsError, describe, load, parse_assignments


def test_defaults_are_embedded_and_loopback(tmp_path: Path) -> None:
    s, sources = load(environ={}, cwd=tmp_path)
    assert s.embedded
    assert s.broker_host == "127.0.0.1"
    assert s.http_host == "127.0.0.1"
    assert s.topic("alerts") == "alerts"
    assert set(sources.values()) == {"default"}


def test_layers_apply_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        'broker_port = 9100\nhttp_port = 5000\nlog_level = "DEBUG"\n[topics]\nalerts = "am"\n'
    )
    env = {
        "WORLDLINE_HTTP_PORT": "5001",
        "WORLDLINE_LOG_LEVEL": "WARNING",
        "WORLDLINE_TOPIC_CAUSES_RANKED": "rc",
    }
    s, sources = load(config_file=cfg, environ=env, cli={"log_level": "ERROR"})
    assert s.broker_port == 9100 and sources["broker_port"] == f"file {cfg}"
    assert s.http_port == 5001 and sources["http_port"] == "environment"
    assert s.log_level == "ERROR" and sources["log_level"] == "command line"
    assert s.topic("alerts") == "am"
    assert s.topic("causes.ranked") == "rc"
    rows = {name: (value, src) for name, value, src in describe(s, sources)}
    assert rows["topics.alerts"][0] == "am"
    assert rows["topics.deadletter"] == ("deadletter", "default")


def test_config_file_from_environment_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "worldline.toml").write_text("http_port = 6000\n")
    s, _ = load(environ={}, cwd=tmp_path)
    assert s.http_port == 6000
    other = tmp_path / "other.toml"
    other.write_text("http_port = 6001\n")
    s, _ = load(environ={"WORLDLINE_CONFIG": str(other)}, cwd=tmp_path)
    assert s.http_port == 6001


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"broker_port": "abc"}, "invalid setting broker_port='abc' (from command line)"),
        ({"broker_port": "70000"}, "invalid setting broker_port='70000'"),
        ({"http_host": "0.0.0.0"}, "invalid setting http_host='0.0.0.0'"),
        ({"bootstrap_servers": "kafka"}, "invalid setting bootstrap_servers='kafka'"),
        ({"log_level": "LOUD"}, "invalid setting log_level='LOUD'"),
        ({"session_timeout_ms": "10"}, "invalid setting session_timeout_ms='10'"),
    ],
)
def test_invalid_values_name_the_setting(
    tmp_path: Path, layer: dict[str, str], expected: str
) -> None:
    with pytest.raises(SettingsError) as err:
        load(environ={}, cli=layer, cwd=tmp_path)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting 'brokr_port'"):
        load(environ={"WORLDLINE_BROKR_PORT": "1"}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="no registry topic"):
        load(environ={"WORLDLINE_TOPIC_NOPE": "x"}, cwd=tmp_path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("nope = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'nope'"):
        load(config_file=cfg, environ={}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="unknown topic 'nope'"):
        load(environ={}, cli=parse_assignments(["topics.nope=x"]), cwd=tmp_path)
    with pytest.raises(SettingsError, match="expected name=value"):
        parse_assignments(["broker_port"])


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("broker_port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load(config_file=cfg, environ={})
    with pytest.raises(SettingsError, match="does not exist"):
        load(config_file=tmp_path / "missing.toml", environ={})


def test_external_kafka_is_not_embedded() -> None:
    s = Settings(bootstrap_servers="k1:9092,k2:9092")
    assert not s.embedded


def test_broker_storage_is_a_url_and_names_the_cluster(tmp_path: Path) -> None:
    from pipeline.platform import broker_cluster_id

    memory = Settings(data_dir=tmp_path)
    assert not memory.durable_broker
    # in memory, every start is a new life of the broker's storage: a new cluster id
    assert broker_cluster_id(memory) != broker_cluster_id(memory)
    assert not (tmp_path / "broker-cluster-id").exists()
    durable, _ = load(environ={"WORLDLINE_BROKER_STORAGE": "s3://bucket/"}, cwd=tmp_path)
    durable = durable.model_copy(update={"data_dir": tmp_path})
    assert durable.durable_broker
    # durable: one id per data directory, kept, since the broker keeps its records under it
    first = broker_cluster_id(durable)
    assert (
        first == broker_cluster_id(durable) == (tmp_path / "broker-cluster-id").read_text().strip()
    )
    with pytest.raises(SettingsError, match="broker_storage='tmp/tansu'.*storage URL"):
        load(environ={"WORLDLINE_BROKER_STORAGE": "tmp/tansu"}, cwd=tmp_path)
