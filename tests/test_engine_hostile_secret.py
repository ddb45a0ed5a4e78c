"""The engine refuses an IdP-issued secret (or a client id) that cannot be stored safely.

Uses the in-memory IdP and the real env store of tests/test_engine.py; the IdP is made
hostile by having it issue a value with a Unicode line break and a planted variable.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest
import test_engine
from test_engine import make_rig

from rotator.interfaces import IdpCapabilities
from rotator.secrets import Secret

OVERLAP = IdpCapabilities(10, caller_sets_value=False, can_revoke_old=True,
                          can_read_current=False)
SINGLE = IdpCapabilities(1, caller_sets_value=False, can_revoke_old=False,
                         can_read_current=False)


def _hostile() -> str:
    return f"{secrets.token_urlsafe(16)}\x85LD_PRELOAD=/tmp/evil.so"


class TestHostileIssuedSecret:
    """A secret the IdP issues that is not printable ASCII without spaces reaches no store:
    an overlap rotation discards it at the IdP and rolls back, a single-secret one fails."""

    @pytest.fixture
    def hostile(self, monkeypatch: pytest.MonkeyPatch) -> str:
        value = _hostile()
        monkeypatch.setattr(test_engine, "generate_secret", lambda: Secret(value))
        return value

    def test_overlap_rolls_back(self, tmp_path: Path, hostile: str) -> None:
        with make_rig(tmp_path, OVERLAP) as rig:
            before = rig.env_file.read_bytes()
            old = rig.env()["APP_CLIENT_SECRET"]
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and outcome.action == "rolled_back"
            assert "client app" in outcome.message
            assert "cannot be stored safely" in outcome.message
            assert "discarded at the IdP" in outcome.message
            assert list(rig.idp.active.values()) == [old]
            assert rig.env_file.read_bytes() == before
            assert rig.engine.journal.open_rotation("app") is None
            audit = (tmp_path / "audit.jsonl").read_text()
            assert '"secret_staged"' not in audit
            assert hostile not in audit and "LD_PRELOAD" not in audit + outcome.message

    def test_single_secret_fails(self, tmp_path: Path, hostile: str) -> None:
        with make_rig(tmp_path, SINGLE) as rig:
            before = rig.env_file.read_bytes()
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and outcome.action == "failed"
            assert outcome.state == "failed"
            assert "client app" in outcome.message
            assert "cannot be stored safely" in outcome.message
            assert rig.env_file.read_bytes() == before
            assert rig.engine.journal.open_rotation("app") is None
            audit = (tmp_path / "audit.jsonl").read_text()
            assert hostile not in audit and "LD_PRELOAD" not in audit + outcome.message


class TestUnsafeClientId:
    """A client id that is not printable ASCII without spaces stops a rotation before the IdP
    is asked for anything."""

    def test_refused_before_the_idp(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, OVERLAP) as rig:
            clients = rig.engine.config.clients
            clients["app"] = dataclasses.replace(clients["app"], client_id="app\u2028X=1")
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and outcome.action == "failed"
            assert "client app" in outcome.message and "printable ASCII" in outcome.message
            assert rig.idp.created == 0
            assert rig.engine.journal.latest("app") is None
