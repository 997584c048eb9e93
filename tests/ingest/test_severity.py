"""A log line's severity when its sender set none: read from the line as loggers write it."""

from __future__ import annotations

import pytest

from pipeline.ingest.severity import inferred_severity

ERROR, WARN, INFO = 17, 13, 9


@pytest.mark.parametrize(
    ("body", "severity"),
    [
        ("2022-08-22 03:54:00.123 ERROR 1 --- [nio-8080-exec-1] o.a.c.c.C: Servlet failed", ERROR),
        ("2022-08-22 03:54:00,123 [main] WARN  com.shop.Cart - retrying", WARN),
        ("[INFO] 2022-08-22 order placed", INFO),
        ('{"ts": 1661140434, "level": "error", "msg": "charge failed"}', ERROR),
        ("ts=2022-08-22T03:54:00Z level=warn msg=slow", WARN),
        ("java.lang.IllegalStateException: cart is empty", ERROR),
        ("Traceback (most recent call last):", ERROR),
        ('Exception in thread "main" java.lang.NullPointerException', ERROR),
        # words in a message are not its level
        ("no error found while checking the cart", 0),
        ("retrying: the previous call returned an Error", 0),
        ("\tat com.shop.Cart.get(Cart.java:42)", 0),
        ("", 0),
    ],
)
def test_a_lines_own_level_is_its_severity(body: str, severity: int) -> None:
    assert inferred_severity(0, None, body) == severity


def test_a_severity_the_sender_set_is_kept() -> None:
    assert inferred_severity(INFO, "INFO", "ERROR in the text") == INFO
    assert inferred_severity(0, "Error", "plain text") == ERROR
    assert inferred_severity(0, "verbose", "2022-08-22 WARN slow") == WARN
