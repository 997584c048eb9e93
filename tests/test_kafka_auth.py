"""TLS / SASL settings reach every Kafka client worldline builds (aiokafka and faust).

There is no TLS Kafka here: these check the keyword arguments and credentials the clients are
constructed with, and a static check that every client construction in the code takes them.
The PEM files in tests/data/kafka-tls are self-signed test certificates.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline import kafka, kafka_auth
from pipeline.kafka_auth import KafkaAuth
from pipeline.settings import Settings, SettingsError, load, parse_assignments
from pipeline.workers import faust_app

REPO = Path(__file__).resolve().parents[1]
TLS = REPO / "tests" / "data" / "kafka-tls"
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def _settings(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> Settings:
    cfg = tmp_path / "worldline.toml"
    cfg.write_text(toml + f'\ndata_dir = "{tmp_path / "data"}"\n')
    settings, _ = load(config_file=cfg, environ=env or {})
    return settings


SASL_SSL = f"""
bootstrap_servers = "kafka-1:9093"
kafka_security_protocol = "SASL_SSL"
kafka_sasl_mechanism = "SCRAM-SHA-512"
kafka_sasl_username = "worldline"
kafka_sasl_password_file = "{TLS / "sasl-password"}"
kafka_ssl_cafile = "{TLS / "ca.pem"}"
kafka_ssl_certfile = "{TLS / "client.pem"}"
kafka_ssl_keyfile = "{TLS / "client.key"}"
"""


def _ca_names(context: ssl.SSLContext) -> list[str]:
    return [
        value
        for cert in context.get_ca_certs()
        for rdn in cert["subject"]
        for key, value in rdn
        if key == "commonName"
    ]


def test_sasl_ssl_reaches_aiokafka_options(tmp_path: Path) -> None:
    options = KafkaAuth.from_settings(_settings(tmp_path, SASL_SSL)).aiokafka_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worldline",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert _ca_names(context) == ["worldline-test-ca"]


def test_sasl_ssl_reaches_faust(tmp_path: Path) -> None:
    settings = _settings(tmp_path, SASL_SSL)
    app = faust_app(settings, "worldline-test", settings.bootstrap_servers or "")
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, SASLCredentials)
    # what faust's aiokafka driver gives each of its producers, consumers and admin clients
    options = dict(credentials_to_aiokafka_auth(credentials))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worldline",
        "sasl_plain_password": "s3cret",
    }
    assert _ca_names(context) == ["worldline-test-ca"]


def test_tls_without_sasl_from_the_environment(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        "",
        {
            "WORLDLINE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "WORLDLINE_KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
        },
    )
    auth = KafkaAuth.from_settings(settings)
    options = auth.aiokafka_options()
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert _ca_names(options["ssl_context"]) == ["worldline-test-ca"]
    credentials = faust_app(settings, "worldline-test", "kafka:9093").conf.broker_credentials
    assert isinstance(credentials, SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


def test_plaintext_is_the_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "")
    assert KafkaAuth.from_settings(settings).aiokafka_options() == {
        "security_protocol": "PLAINTEXT"
    }
    assert faust_app(settings, "worldline-test", "kafka:9092").conf.broker_credentials is None


def test_the_kafka_helpers_and_the_receivers_use_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, SASL_SSL)
    monkeypatch.setattr(kafka_auth, "_process_auth", KafkaAuth())
    kafka_auth.use(settings)
    made: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

        async def start(self) -> None:
            raise ConnectionError("not connecting in this test")

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Recorder)
    kafka.admin_client("kafka-1:9093")
    assert made[-1]["security_protocol"] == "SASL_SSL"
    assert made[-1]["sasl_plain_password"] == "s3cret"

    import asyncio

    from pipeline.receivers import server

    monkeypatch.setattr(server, "AIOKafkaProducer", Recorder)

    async def serve() -> None:
        async with server.running_receivers(settings, "kafka-1:9093", port=0):
            pass

    with pytest.raises(ConnectionError):
        asyncio.run(serve())
    assert made[-1]["sasl_mechanism"] == "SCRAM-SHA-512"
    assert made[-1]["ssl_context"] is not None


def test_every_client_worldline_builds_takes_the_security_options() -> None:
    """A construction of an aiokafka client without ``**options`` would connect in plain text
    to a cluster that wants TLS or SASL; faust apps are built in one place only."""
    checked = 0
    for package in ("pipeline", "jobs"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if name in CLIENTS:
                    checked += 1
                    assert any(k.arg is None for k in node.keywords), f"{where}: {name}"
                if name == "App" and path.name != "workers.py":
                    raise AssertionError(f"{where}: a faust app built outside faust_app")
    assert checked >= 8


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["kafka_security_protocol=SASL_PLAINTEXT"],
            "invalid setting kafka_sasl_username=None (from default): required with",
        ),
        (
            ["kafka_security_protocol=SASL_SSL", "kafka_sasl_username=u"],
            "invalid setting kafka_sasl_password_file=None (from default): required with",
        ),
        (
            ["kafka_security_protocol=SSL", "kafka_ssl_cafile=/nonexistent/ca.pem"],
            "invalid setting kafka_ssl_cafile='/nonexistent/ca.pem' (from command line):"
            " not a readable file",
        ),
        (
            [f"kafka_ssl_cafile={TLS / 'ca.pem'}"],
            "kafka_ssl_cafile",
        ),
        (["kafka_sasl_username=u"], "used only with kafka_security_protocol SASL_"),
        (
            ["kafka_security_protocol=SSL", f"kafka_ssl_keyfile={TLS / 'client.key'}"],
            "invalid setting kafka_ssl_keyfile=",
        ),
        (["kafka_security_protocol=TLS"], "invalid setting kafka_security_protocol='TLS'"),
        (
            ["kafka_security_protocol=SASL_SSL", "kafka_sasl_mechanism=GSSAPI"],
            "invalid setting kafka_sasl_mechanism='GSSAPI'",
        ),
    ],
)
def test_wrong_security_settings_fail_with_one_line(flags: list[str], expected: str) -> None:
    with pytest.raises(SettingsError) as e:
        load(environ={}, cli=parse_assignments(flags))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_every_command_takes_the_settings_security(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    monkeypatch.setattr(kafka_auth, "_process_auth", KafkaAuth())
    cfg = tmp_path / "worldline.toml"
    cfg.write_text(SASL_SSL)
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "--json"], env={})
    assert result.exit_code == 0, result.output
    assert kafka_auth.client_options()["sasl_plain_username"] == "worldline"
