"""Logging set-up: text and JSON lines, extras, idempotence, quiet libraries."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import pytest

from monitor.logs import NOISY_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_core_fields_and_every_extra() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)

    before = dt.datetime.now(dt.UTC)
    logging.getLogger("monitor.worker").info(
        "polled %s", "chart", extra={"chart": "apple/us/top_free/iphone/all", "entries": 100}
    )

    [line] = json_lines(stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "monitor.worker"
    assert line["msg"] == "polled chart"
    assert line["chart"] == "apple/us/top_free/iphone/all"
    assert line["entries"] == 100
    assert isinstance(line["ts"], str)
    assert line["ts"].endswith("Z")
    stamp = dt.datetime.fromisoformat(line["ts"])
    assert abs(stamp - before) < dt.timedelta(seconds=5)


def test_json_lines_put_the_exception_under_exc_and_keep_core_fields_safe() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)

    try:
        raise RuntimeError("feed exploded")
    except RuntimeError:
        logging.getLogger("monitor").exception("fetch failed", extra={"level": "ignored"})

    [line] = json_lines(stream)
    assert line["level"] == "ERROR"
    assert line["extra_level"] == "ignored"
    assert isinstance(line["exc"], str)
    assert "RuntimeError: feed exploded" in line["exc"]


def test_a_message_with_newlines_stays_one_json_line() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)

    logging.getLogger("monitor").warning("two\nlines", extra={"when": dt.date(2025, 1, 26)})

    [line] = json_lines(stream)
    assert line["msg"] == "two\nlines"
    assert line["when"] == "2025-01-26"


def test_text_lines_read_time_level_logger_message_then_key_values() -> None:
    stream = io.StringIO()
    configure_logging("text", "INFO", stream)

    logging.getLogger("monitor.worker").info(
        "polled", extra={"chart": "apple/us/top_free/iphone/all", "app": "Claude by Anthropic"}
    )

    [line] = stream.getvalue().splitlines()
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z")
    dt.datetime.fromisoformat(stamp)
    assert rest == (
        "INFO    monitor.worker: polled "
        'chart=apple/us/top_free/iphone/all app="Claude by Anthropic"'
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorns_coloured_copy_of_its_message_is_not_a_field(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(fmt, "INFO", stream)

    # What uvicorn.error logs when its server stops.
    logging.getLogger("uvicorn.error").info(
        "Finished server process [%d]",
        42,
        extra={"color_message": "Finished server process [\x1b[36m%d\x1b[0m]"},
    )

    [line] = stream.getvalue().splitlines()
    assert "color_message" not in line
    message = json.loads(line)["msg"] if fmt == "json" else line.partition(": ")[2]
    assert message == "Finished server process [42]"


def test_configuring_twice_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", "INFO", first)
    configure_logging("json", "INFO", second)

    logging.getLogger("monitor").info("once")

    assert first.getvalue() == ""
    assert [line["msg"] for line in json_lines(second)] == ["once"]


def test_records_below_the_level_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream)

    logging.getLogger("monitor").info("quiet")
    logging.getLogger("monitor").warning("loud")

    assert [line["msg"] for line in json_lines(stream)] == ["loud"]


def test_noisy_libraries_are_quiet_unless_debugging() -> None:
    stream = io.StringIO()

    configure_logging("json", "INFO", stream)
    logging.getLogger("httpx").info("HTTP Request: GET https://itunes.apple.com 200 OK")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("uvicorn.access").info("GET /metrics 200")
    logging.getLogger("httpx").warning("redirect loop")
    configure_logging("json", "DEBUG", stream)
    logging.getLogger("httpx").info("HTTP Request: visible")
    configure_logging("json", "INFO", stream)
    logging.getLogger("uvicorn.access").info("GET / 200")

    assert [line["msg"] for line in json_lines(stream)] == [
        "redirect loop",
        "HTTP Request: visible",
    ]


@pytest.mark.parametrize(("fmt", "level"), [("text", "LOUD"), ("yaml", "INFO")])
def test_an_unknown_level_or_format_is_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        configure_logging(fmt, level, io.StringIO())  # type: ignore[arg-type]
