"""The CLI's and daemon's operational log on stderr: timestamped, redacted, console or JSON."""

from __future__ import annotations

import io
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from test_config import Draft

from rotator.cli import _setup_logging, run
from rotator.secrets import Secret

#: ISO 8601 in UTC, as structlog's TimeStamper(fmt="iso", utc=True) writes it.
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


class _Leaky:
    """An object whose text carries a secret (a vendor exception, say)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __str__(self) -> str:
        return f"leaky {self.value}"

    __repr__ = __str__


def _log_everything(value: str) -> None:
    log = structlog.get_logger("rotator.test")
    log.warning("store_refused", detail=f"the store said {value}", nested={"v": [value]},
                obj=_Leaky(value))
    try:
        raise RuntimeError(f"boom {value}")
    except RuntimeError:
        log.error("unexpected_error", exc_info=True)


class TestConsoleLines:
    """Each console log line starts with an ISO 8601 UTC timestamp."""

    def test_timestamp_first(self) -> None:
        err = io.StringIO()
        _setup_logging(False, err)
        structlog.get_logger("rotator.test").warning("daemon_started", pid=1)
        line = err.getvalue().splitlines()[0]
        stamp = line.split(" ", 1)[0]
        assert ISO_UTC.fullmatch(stamp), line
        assert "daemon_started" in line and "pid=1" in line


class TestJsonLines:
    """With --log-format json each log line is one JSON object with an ISO 8601 UTC
    timestamp, the level and the event."""

    def test_one_object_a_line(self) -> None:
        err = io.StringIO()
        _setup_logging(False, err, "json")
        log = structlog.get_logger("rotator.test")
        log.warning("daemon_started", pid=1, clients=["a", "b"])
        log.error("rotation_failed", client="a")
        docs = [json.loads(line) for line in err.getvalue().splitlines()]
        assert [d["event"] for d in docs] == ["daemon_started", "rotation_failed"]
        assert [d["level"] for d in docs] == ["warning", "error"]
        assert all(ISO_UTC.fullmatch(d["timestamp"]) for d in docs)
        assert docs[0]["clients"] == ["a", "b"]

    def test_cli_option_selects_it(self, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        d = Draft(tmp_path)
        d.save()
        for key, value in d.env.items():
            monkeypatch.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        code = run(["config", "check", "--log-format", "json", "-c", str(d.path)], out, err)
        assert code == 0, err.getvalue()
        structlog.get_logger("rotator.test").warning("after_config_check")
        doc = json.loads(err.getvalue().splitlines()[-1])
        assert doc["event"] == "after_config_check"

    def test_unknown_format_is_a_usage_error(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert run(["config", "check", "--log-format", "xml"], out, err) == 2
        assert "--log-format" in err.getvalue()


class TestLogRedaction:
    """A secret handed to a log call (a value, a nested value, an object's text, an
    exception) is masked in both formats."""

    @pytest.mark.parametrize("log_format", ["console", "json"])
    def test_secret_is_masked(self, log_format: str) -> None:
        value = secrets.token_urlsafe(32) + ' "q" \\ x'
        Secret(value)  # handled by rotator: known to the redactor
        err = io.StringIO()
        _setup_logging(True, err, log_format)
        _log_everything(value)
        text = err.getvalue()
        assert text.count("store_refused") == 1 and "Traceback" in text
        for form in (value, json.dumps(value)[1:-1], value.split(" ")[0]):
            assert form not in text
        if log_format == "json":
            docs = [json.loads(line) for line in text.splitlines()]
            assert len(docs) == 2
