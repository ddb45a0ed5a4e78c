"""``rotator status``'s headline state says "due" by the daemon's one rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from rotator.config import ClientConfig, load_config
from rotator.daemon.records import due_clients, load_record
from rotator.engine.adapters import Adapters
from rotator.engine.status import client_status
from rotator.journal import SqliteJournal, State

NOW = datetime(2025, 6, 20, 12, 0, tzinfo=UTC)


def _idp_answers(_client: ClientConfig) -> httpx.Client:
    """A token endpoint that answers a bare GET with 405: reachable, no network used."""
    return httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(405)))


def _success(journal: SqliteJournal, name: str, at: datetime, expires_at: str | None) -> None:
    r = journal.begin(f"r-{at:%Y%m%dT%H%M%SZ}-{name:0<10}", name, "overlap", "cli", None, at)
    for prev, state, fields in (
            (State.STARTED, State.CREATING, {}),
            (State.CREATING, State.CREATED, {"secret_ref": "key-1", "expires_at": expires_at}),
            (State.CREATED, State.VERIFIED, {}),
            (State.VERIFIED, State.PROMOTED, {"retire_after": at.isoformat()}),
            (State.PROMOTED, State.COMPLETED, {})):
        r = journal.advance(r.id, state, at, expected=prev, **fields)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "state")
    yield j
    j.close()


class TestHeadlineUsesTheSharedRule:
    """A client due by ``schedule`` or ``rotate_before_expiry`` (not ``rotate_every``) is
    "due" in status's headline, in its daemon line and for ``rotate --due`` alike."""

    def test_headline_daemon_line_and_rotate_due_agree(self, tmp_path: Path,
                                                       journal: SqliteJournal) -> None:
        creds = tmp_path / "creds.env"
        creds.write_text("".join(f"{p}_CLIENT_ID={p.lower()}\n{p}_CLIENT_SECRET=s3cr3t-{p}\n"
                                 for p in ("CRON", "EXPIRY", "QUIET")))
        creds.chmod(0o600)
        (tmp_path / "rotator.toml").write_text("""
[stores.envfile]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "https://sso.example.com"
realm = "r"
admin_client_id = "admin"
admin_client_secret_env = "NOT_NEEDED_HERE"

[clients.cron]
idp = "kc"
client_id = "cron"
schedule = "0 3 * * *"
stores = [{store = "envfile", prefix = "CRON"}]

[clients.expiry]
idp = "kc"
client_id = "expiry"
rotate_before_expiry = "14d"
stores = [{store = "envfile", prefix = "EXPIRY"}]

[clients.quiet]
idp = "kc"
client_id = "quiet"
schedule = "0 3 1 1 *"
rotate_before_expiry = "14d"
stores = [{store = "envfile", prefix = "QUIET"}]
""")
        config = load_config(tmp_path / "rotator.toml", stores_only=True)
        _success(journal, "cron", NOW - timedelta(days=2), None)
        _success(journal, "expiry", NOW - timedelta(days=100),
                 (NOW + timedelta(days=10)).isoformat())
        _success(journal, "quiet", NOW - timedelta(days=2),
                 (NOW + timedelta(days=100)).isoformat())
        names = ["cron", "expiry", "quiet"]
        adapters = Adapters(config)
        try:
            headline = {n: client_status(config.clients[n], now=NOW, adapters=adapters,
                                         journal=journal, http_factory=_idp_answers)["state"]
                        for n in names}
        finally:
            adapters.close()
        daemon = {n: load_record(journal, config, config.clients[n],
                                 facts=lambda *_: None).state(NOW).condition.value
                  for n in names}
        assert headline == {"cron": "due", "expiry": "due", "quiet": "ok"}
        assert daemon == {"cron": "due", "expiry": "due", "quiet": "ready"}
        assert due_clients(config, journal, names, NOW,
                           facts=lambda *_: None) == ["cron", "expiry"]
