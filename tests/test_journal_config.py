"""``[journal] url_env``: which journal a configuration opens, and ``rotator journal migrate``."""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from test_config import Draft

from rotator.cli import run
from rotator.errors import ConfigError
from rotator.journal import SqliteJournal, State, open_journal
from rotator.journal.postgres import PostgresJournal

URL_VAR = "ROTATOR_TEST_JOURNAL_URL"
NOW_ISO = "2026-11-28T12:00:00+00:00"


def draft(tmp_path: Path, url: str | None, **journal: Any) -> Draft:
    d = Draft(tmp_path)
    if url is not None:
        d.data["journal"] = {"url_env": URL_VAR, **journal}
        d.env[URL_VAR] = url
    return d


def problems(d: Draft) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        d.load()
    return [f"{p.key}: {p.reason}" for p in caught.value.problems]


class TestJournalConfig:
    """Without [journal] the journal is SQLite in the state directory; with url_env it is that
    PostgreSQL database; a bad, unset or weakly protected URL is a clear error never quoting it."""

    def test_default_is_sqlite(self, tmp_path: Path) -> None:
        config = draft(tmp_path, None).load()
        assert config.journal.url is None
        journal = open_journal(config)
        try:
            assert isinstance(journal, SqliteJournal)
            assert journal.path.parent == config.state_dir
        finally:
            journal.close()

    def test_url_env_opens_postgres(self, tmp_path: Path, postgres_server: Any) -> None:
        url = postgres_server.create_schema(f"c_{secrets.token_hex(6)}")
        config = draft(tmp_path, url).load()
        assert config.journal.url is not None and config.journal.url.reveal() == url
        assert postgres_server.password not in repr(config.journal)
        journal = open_journal(config)
        try:
            assert isinstance(journal, PostgresJournal)
        finally:
            journal.close()

    def test_unset_variable_is_an_error_not_sqlite(self, tmp_path: Path) -> None:
        """Falling back to SQLite would let two hosts rotate the same client."""
        d = draft(tmp_path, "x")
        del d.env[URL_VAR]
        assert problems(d) == [f"journal.url_env: environment variable {URL_VAR} is not set"]

    @pytest.mark.parametrize(("url", "reason"), [
        ("https://u:hunter22@db.internal/r", "must be a postgresql:// URL"),
        ("postgresql://u:hunter22@db.internal/r?sslmode=require",
         "sslmode=require to db.internal does not check the server's certificate"),
    ])
    def test_bad_url(self, tmp_path: Path, url: str, reason: str) -> None:
        found = problems(draft(tmp_path, url))
        assert len(found) == 1 and found[0].startswith(f"journal.url_env: {reason}")
        assert "hunter22" not in found[0]

    def test_weak_tls_allowed_by_name(self, tmp_path: Path) -> None:
        url = "postgresql://u:hunter22@db.internal/r?sslmode=require"
        config = draft(tmp_path, url, allow_weak_tls=True).load()
        assert config.journal.allow_weak_tls

    def test_inline_url_refused(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["journal"] = {"url": "postgresql://u:hunter22@127.0.0.1/r"}
        found = problems(d)
        assert len(found) == 1 and found[0].startswith("journal.url: unknown key")


class TestMigrate:
    """journal migrate copies every rotation and step into an empty PostgreSQL journal, where
    the same history reads the same; it refuses a target that already holds rotations."""

    def cli(self, d: Draft, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        old = dict(os.environ)
        os.environ.update(d.env)
        try:
            code = run(["journal", "migrate", "-c", str(d.save()), *argv], out, err)
        finally:
            os.environ.clear()
            os.environ.update(old)
        return code, out.getvalue(), err.getvalue()

    def test_copies_history(self, tmp_path: Path, postgres_server: Any) -> None:
        d = draft(tmp_path, None)
        config = d.load()
        source = SqliteJournal(config.state_dir)
        from datetime import datetime

        now = datetime.fromisoformat(NOW_ISO)
        done = source.begin("r-1", "app", "overlap", "cli", "fp-old", now)
        for state in (State.CREATING, State.CREATED, State.VERIFIED):
            done = source.advance(done.id, state, now, expected=done.state)
        done = source.advance(done.id, State.PROMOTED, now, expected=done.state,
                              retire_after=NOW_ISO, new_fingerprint="fp-new")
        source.begin("r-2", "other", "single", "scheduler", None, now)
        source.close()
        url = postgres_server.create_schema(f"g_{secrets.token_hex(6)}")
        d.env[URL_VAR] = url
        code, out, err = self.cli(d, "--to-env", URL_VAR, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert (report["rotations"], report["steps"], report["open_rotations"]) == (2, 6, 2)
        assert postgres_server.password not in out + err
        source, target = SqliteJournal(config.state_dir), PostgresJournal(url)
        try:
            for client in ("app", "other"):
                assert target.latest(client) == source.latest(client)
                assert target.last_success(client) == source.last_success(client)
                assert target.open_rotation(client) == source.open_rotation(client)
            assert target.steps("r-1") == source.steps("r-1")
            # the copy goes on where the source stopped
            target.advance("r-1", State.COMPLETED, now, expected=State.PROMOTED)
        finally:
            source.close()
            target.close()
        code, out, err = self.cli(d, "--to-env", URL_VAR)
        assert code == 1 and "already holds 2 rotation(s)" in err
        assert postgres_server.password not in out + err

    def test_unset_variable(self, tmp_path: Path) -> None:
        code, _out, err = self.cli(draft(tmp_path, None), "--to-env", "ROTATOR_TEST_NOPE")
        assert code == 2 and "ROTATOR_TEST_NOPE is not set" in err
