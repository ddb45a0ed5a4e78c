"""Deferred registration: wrapping a value costs an append; the next redaction knows it."""

from __future__ import annotations

import base64
import gc
import io
import logging
import secrets
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest

import rotator.secrets as rs
from rotator.logsafety import install_log_safety
from rotator.secrets import Secret, _Redactor, redact

MASK = "**********"


def _value() -> str:
    return secrets.token_urlsafe(32)


class TestWrappingDefersTheWork:
    """Wrapping a value queues it: no encoding and no digest until text is redacted."""

    def test_a_new_secret_waits_in_the_queue(self) -> None:
        redact("")  # empty the queue
        forms = len(rs._REDACTOR._forms)
        s = Secret(_value())
        assert [value for _, value in rs._REDACTOR._pending] == [s.reveal()]
        assert len(rs._REDACTOR._forms) == forms

    def test_a_redaction_empties_the_queue(self) -> None:
        s = Secret(_value())
        redact("nothing secret here")
        assert not rs._REDACTOR._pending
        assert rs._REDACTOR.redact(s.reveal()) == MASK

    def test_past_the_bound_the_queue_is_registered_at_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(rs, "MAX_PENDING_VALUES", 3)
        redactor = _Redactor()
        owners = [Secret(_value()) for _ in range(4)]
        for owner in owners[:3]:
            redactor.defer(owner, owner.reveal())
        assert len(redactor._pending) == 3 and not redactor._forms
        redactor.defer(owners[3], owners[3].reveal())
        assert not redactor._pending
        assert all(redactor._forms.get(redactor._digest(o.reveal().encode())) for o in owners)


class TestNonAsciiValuesAtOnce:
    """A value that is not ASCII is registered when it is wrapped, so a value without a
    UTF-8 form fails there and never in a later redaction (a log call)."""

    def test_non_ascii_is_registered_at_once(self) -> None:
        redact("")
        s = Secret(_value() + "é")
        assert not rs._REDACTOR._pending
        assert rs._REDACTOR.redact(s.reveal()) == MASK

    def test_a_lone_surrogate_fails_at_wrapping_and_redaction_goes_on(self) -> None:
        with pytest.raises(UnicodeEncodeError):
            Secret("abc\ud800defghijkl")
        value = _value()
        Secret(value)
        # A random neighbour: earlier tests in the session may have registered short
        # values (a lone "x" is masked then), which would mask a fixed one too.
        plain = "plain-" + secrets.token_hex(8)
        assert redact(f"{plain} {value}") == f"{plain} {MASK}"


class TestDeferredValuesAreMasked:
    """A value is masked by the first redaction after it was wrapped, in every form, and
    also when its Secret died before that redaction."""

    def test_masked_by_the_next_redaction(self) -> None:
        value = _value()
        Secret(value)
        assert redact(f"a {value} b") == f"a {MASK} b"

    def test_encoded_forms_are_masked_too(self) -> None:
        value = _value() + "/+ é"
        Secret(value)
        b64 = base64.b64encode(value.encode()).decode()
        assert value not in redact(f"{quote(value, safe='')} {b64}")
        assert redact(quote(value, safe="")) == MASK
        assert redact(b64) == MASK

    def test_a_secret_that_died_before_any_redaction_is_still_masked(self) -> None:
        value = _value()
        s = Secret(value)
        del s
        gc.collect()
        assert redact(f"late: {value}") == f"late: {MASK}"

    def test_a_value_whose_secret_died_in_the_queue_counts_as_no_longer_wrapped(self) -> None:
        redactor = _Redactor()
        value = _value()
        owner = Secret(value)
        redactor.defer(owner, value)
        del owner
        gc.collect()
        assert redactor.redact(f"late: {value}") == f"late: {MASK}"
        assert redactor._forms
        assert all(form.owner() is None for form in redactor._forms.values())

    def test_threads_that_wrap_and_log_at_once_never_see_their_value(self) -> None:
        leaks: list[str] = []
        start = threading.Barrier(8)

        def run() -> None:
            start.wait()
            for _ in range(200):
                value = _value()
                Secret(value)
                if value in redact(f"token {value}"):
                    leaks.append(value)

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert leaks == []


@pytest.fixture
def info_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    saved = (root.level, logging.getLogRecordFactory())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.setLogRecordFactory(saved[1])


class TestLogRecordRightAfterWrapping:
    """A log record created right after a value was wrapped is redacted with it known."""

    def test_stdlib_record_is_masked(self, info_log: io.StringIO) -> None:
        install_log_safety()
        value = _value()
        Secret(value)
        logging.getLogger("app").info("got %s", value)
        assert value not in info_log.getvalue()
        assert MASK in info_log.getvalue()
