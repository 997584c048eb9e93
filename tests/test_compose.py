"""docker-compose.yml can't be started here (no container engine); check what can be checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline import registry
from pipeline.cli import cli
from pipeline.settings import load

REPO = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_parses_and_runs_a_real_kafka() -> None:
    services = _compose()["services"]
    assert "kafka" in services
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_published_ports_are_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_worldline_services_name_existing_commands() -> None:
    services = _compose()["services"]
    stages = {n: s for n, s in services.items() if n != "kafka"}
    assert stages
    for name, service in stages.items():
        command = service["command"]
        assert command[0] == "worldline", name
        sub = cli.commands.get(command[1])  # type: ignore[attr-defined]
        assert sub is not None, f"{name}: worldline {command[1]} does not exist"
        known = {opt for p in sub.params for opt in getattr(p, "opts", [])}
        choices = [
            getattr(p.type, "choices", None)
            for p in sub.params
            if not getattr(p, "opts", [""])[0].startswith("-")
        ]
        for i, arg in enumerate(command[2:], start=2):
            if arg.startswith("--"):
                assert arg in known, f"{name}: worldline {command[1]} has no option {arg}"
            elif not command[i - 1].startswith("--") and choices and choices[0] is not None:
                assert arg in choices[0], f"{name}: worldline {command[1]} has no {arg!r}"
        assert service["environment"]["WORLDLINE_BOOTSTRAP_SERVERS"] == "kafka:19092"


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    for package in ("pipeline", "jobs", "schemas"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_every_stage_runs_as_a_service_and_kafka_keeps_its_data_on_the_volume() -> None:
    services = _compose()["services"]
    commands = [tuple(s["command"][1:]) for s in services.values() if "command" in s]
    for stage in registry.STAGES:
        assert commands.count(stage.argv) == 1, f"stage {stage.name}: no service runs {stage.argv}"
    kafka = services["kafka"]
    data_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.endswith(f":{data_dir}") for v in kafka["volumes"])


def test_every_service_has_the_shared_environment() -> None:
    services = _compose()["services"]
    shared = services["ingest-spans"]["environment"]
    for name, service in services.items():
        if name != "kafka":
            assert shared.items() <= service["environment"].items(), name


def test_the_commented_security_variables_are_real_settings(tmp_path: Path) -> None:
    """The TLS / SASL block a user uncomments names settings worldline knows, and loads."""
    text = (REPO / "docker-compose.yml").read_text()
    commented = dict(re.findall(r"^\s*# (WORLDLINE_KAFKA_[A-Z_]+): (\S+)", text, re.M))
    assert set(commented) == {
        "WORLDLINE_KAFKA_SECURITY_PROTOCOL",
        "WORLDLINE_KAFKA_SASL_MECHANISM",
        "WORLDLINE_KAFKA_SASL_USERNAME",
        "WORLDLINE_KAFKA_SASL_PASSWORD_FILE",
        "WORLDLINE_KAFKA_SSL_CAFILE",
        "WORLDLINE_KAFKA_SSL_CERTFILE",
        "WORLDLINE_KAFKA_SSL_KEYFILE",
    }
    files = [k for k in commented if k.endswith("FILE")]
    for key in files:  # the files as they would be mounted
        (tmp_path / key).write_text("x")
        commented[key] = str(tmp_path / key)
    settings, sources = load(environ=commented, cwd=tmp_path)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert all(sources[k[len("WORLDLINE_") :].lower()] == "environment" for k in commented)
