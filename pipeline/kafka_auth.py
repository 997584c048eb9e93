"""TLS and SASL for an external Kafka: the same security on every client worldline creates.

The ``kafka_*`` settings say how to reach the brokers (``kafka_security_protocol``: PLAINTEXT,
SSL, SASL_PLAINTEXT or SASL_SSL; a SASL mechanism, user name and password file; CA, client
certificate and key files). ``KafkaAuth`` turns them into the keyword arguments aiokafka's
clients take (``aiokafka_options``) and into the credentials faust passes to its own clients
(``faust_credentials``). Clients built where the settings are at hand take them from there; the
helpers of ``pipeline.kafka`` take the process's (``use``, called once at start by the command
line).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from pipeline.settings import Settings, SettingsError

SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True)
class KafkaAuth:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaAuth:
        """The settings' security, the SASL password read from its file."""
        password = None
        if settings.kafka_security_protocol in SASL_PROTOCOLS:
            path = settings.kafka_sasl_password_file
            try:
                password = path.read_text(encoding="utf-8").strip() if path else None
            except OSError as e:
                raise SettingsError(f"kafka_sasl_password_file={path}: {e.strerror}") from None
        return cls(
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=password,
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the brokers' certificates (against ``cafile``, else the system's CAs) and
        host names; presents the client certificate when one is set. None without TLS."""
        if self.security_protocol not in SSL_PROTOCOLS:
            return None
        return create_ssl_context(cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile)

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and
        ``AIOKafkaAdminClient``."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.security_protocol in SASL_PROTOCOLS:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None for PLAINTEXT)."""
        import faust  # imported here: faust is slow to import and only workers need it

        if self.security_protocol in SASL_PROTOCOLS:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                ssl_context=self.ssl_context,
                mechanism=self.sasl_mechanism,
            )
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context)
        return None


_process_auth = KafkaAuth()


def use(settings: Settings) -> None:
    """Make ``settings``' security the one ``client_options`` gives in this process."""
    global _process_auth
    _process_auth = KafkaAuth.from_settings(settings)


def client_options() -> dict[str, Any]:
    """The process's aiokafka keyword arguments (PLAINTEXT until ``use``)."""
    return _process_auth.aiokafka_options()
