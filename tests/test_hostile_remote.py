"""Hostile answers to rotator's outgoing HTTP (HEC/webhook audit sink, http hooks, alerts).

A receiver on 127.0.0.1 answers with a redirect, a huge body, one byte at a time (of its
headers or its body), invalid UTF-8 or an HTML page echoing the request. Each sender gives up
within its total timeout (counted in what the receiver managed to send, not in seconds),
reads at most a bounded prefix of an answer, follows no redirect, raises only its own error,
and says nothing of the token or key it sent.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hostile_http import HostileServer

from rotator import _deadline
from rotator.audit import AuditLog
from rotator.audit.http import HttpTransport
from rotator.audit.spool import DeliveryError, Record
from rotator.hooks.alerts import Alerter
from rotator.hooks.config import AlertConfig, HookConfig
from rotator.hooks.kinds import HookFailed, post_event, run_command
from rotator.interfaces import State
from rotator.journal import SqliteJournal
from rotator.secrets import Secret

TIMEOUT = 0.5
#: A slow receiver sends one piece every PACE seconds, LIMIT pieces in all (100 s):
#: a sender that keeps its total timeout leaves after about TIMEOUT / PACE of them.
PACE, LIMIT = 0.05, 2000
MODES = ("redirect", "huge", "slow_body", "slow_headers", "bad_utf8", "html")
RECORD = Record(1, "0" * 64, '{"@timestamp":"2026-01-01T00:00:00+00:00",'
                             '"event":{"action":"rotation_completed"}}')


@pytest.fixture
def elsewhere() -> Iterator[HostileServer]:
    server = HostileServer("html", status=200)
    yield server
    server.close()


@pytest.fixture
def hostile(elsewhere: HostileServer) -> Iterator[Callable[[str], HostileServer]]:
    made: list[HostileServer] = []

    def make(mode: str) -> HostileServer:
        made.append(HostileServer(mode, elsewhere=elsewhere.url, pace=PACE, limit=LIMIT,
                                  status=500))
        return made[-1]
    yield make
    for server in made:
        server.close()


def _check(server: HostileServer, elsewhere: HostileServer, message: str,
           *secrets_sent: str) -> None:
    assert server.requests, "the request never arrived"
    assert server.finished.wait(30), "the sender never let go of the connection"
    if server.mode.startswith("slow"):
        assert server.chunks_sent < LIMIT // 4
    if server.mode == "huge":  # 64 KiB blocks: at most a few socket buffers were sent
        assert server.chunks_sent < 200
    assert elsewhere.requests == []
    assert "\n" not in message and "\r" not in message
    for value in secrets_sent:
        assert value not in message


class TestHecAgainstHostileCollector:
    """The HEC transport turns every hostile answer into one short DeliveryError line."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer],
                  elsewhere: HostileServer) -> None:
        server = hostile(mode)
        token = secrets.token_urlsafe(24)
        transport = HttpTransport(server.url, token=Secret(token), sink="siem",
                                  timeout=TIMEOUT)
        try:
            with pytest.raises(DeliveryError) as caught:
                transport.send([RECORD])
        finally:
            transport.close()
        message = str(caught.value)
        _check(server, elsewhere, message, token)
        assert len(message) < 300


class TestHookAgainstHostileReceiver:
    """An http hook fails (or, for a 2xx it does not read, succeeds) within its timeout."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer],
                  elsewhere: HostileServer) -> None:
        server = hostile(mode)
        key = secrets.token_urlsafe(32)
        hook = HookConfig(name="h", kind="http", on=("promoted",), required=True,
                          timeout=TIMEOUT, attempts=1, backoff=0.0, url=server.url,
                          key=Secret(key))
        with pytest.raises(HookFailed) as caught:
            post_event(hook, {"event_id": "e1", "client": "svc"})
        _check(server, elsewhere, str(caught.value), key)


class TestAlertAgainstHostileWebhook:
    """An alert webhook that answers badly is a failed send, audited, never an exception."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer],
                  elsewhere: HostileServer, tmp_path: Path) -> None:
        server = hostile(mode)
        key = secrets.token_urlsafe(32)
        url = server.url + "/" + secrets.token_urlsafe(24)  # Slack-like: the path is secret
        alerts = AlertConfig(url=Secret(url), format="json", key=Secret(key), repeat=3600.0,
                             open_longer_than=3600.0, check_every=60.0, timeout=TIMEOUT,
                             tls_verify=True)
        journal = SqliteJournal(tmp_path / "state")
        at = datetime(2026, 1, 1, tzinfo=UTC)
        journal.begin("r1", "a", "overlap", "cli", "fp-old", at)
        journal.advance("r1", State.FAILED, at, expected=State.STARTED, error="no")
        audit = AuditLog(Secret("a" * 40), file=tmp_path / "audit.jsonl")
        try:
            sent = Alerter(alerts, tmp_path / "state", audit, clock=lambda: at).check(
                {"a": SimpleNamespace(name="a", max_age=None, hooks=[])}, journal)
        finally:
            audit.close()
            journal.close()
        assert sent == []
        audit_text = (tmp_path / "audit.jsonl").read_text()
        assert '"alert_sent"' in audit_text
        _check(server, elsewhere, audit_text.replace("\n", ""), key, url)


class TestDeadlineHelper:
    """rotator._deadline.post reads no more than its bound of an answer's body."""

    def test_prefix_only(self, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile("huge")
        with _deadline.client(5.0) as http:
            answer = _deadline.post(http, server.url, content=b"{}", headers={},
                                    deadline=5.0, max_body=100)
        assert answer.status_code == 500
        assert len(answer.content) == 100
        assert server.finished.wait(30)
        assert server.chunks_sent < 200




class TestCommandOutputTail:
    """A failing command's output tail in the error is redacted whole, then cut, one line."""

    def test_secret_straddling_the_cut(self) -> None:
        value = secrets.token_urlsafe(30)  # 40 characters
        secret = Secret(value)
        script = f"import sys; print({value!r} + 'y' * 280 + '\\nlast'); sys.exit(3)"
        hook = HookConfig(name="c", kind="command", on=("promoted",), required=False,
                          timeout=30.0, attempts=1, backoff=0.0,
                          argv=(sys.executable, "-c", script))
        with pytest.raises(HookFailed) as caught:
            run_command(hook, {"client": "svc"})
        message = str(caught.value)
        assert "status 3" in message and "\n" not in message
        assert value[-12:] not in message
        assert secret
