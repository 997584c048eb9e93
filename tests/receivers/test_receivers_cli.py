"""``worldline receive`` serves for a while against the session broker and stops by itself."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ReceiverHarness

from pipeline.cli import Context
from pipeline.receivers.cli import receive

pytestmark = pytest.mark.integration


def test_receive_serves_on_the_configured_port(receiver: ReceiverHarness, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = receiver.settings.model_copy(update={"http_port": port})
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    answers: list[int] = []

    def probe() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not answers:
            try:
                answers.append(
                    receiver.post(
                        "/v1/logs", b"", {"Content-Type": "application/x-protobuf"}, port=port
                    ).status
                )
                answers.append(receiver.post("/healthz", b"", method="GET", port=port).status)
            except OSError:
                time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    result = CliRunner().invoke(
        receive,
        ["--duration", "3", "--token-file", str(token_file)],
        obj=Context(settings, {}),
    )
    prober.join()
    assert result.exit_code == 0, result.output
    assert f"receivers listening on http://127.0.0.1:{port}" in result.output
    assert answers == [401, 200]
