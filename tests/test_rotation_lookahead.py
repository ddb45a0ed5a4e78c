"""What a rotation checks before Keycloak is asked, and what a refused write then costs.

An overlap rotation (Keycloak generates the value) asks no store anything but the current
credential before Keycloak issues the new secret: a store that refuses the stage takes it
back. A single-secret rotation must find a read-only store first, and writes the new secret
as CURRENT at once.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao
from test_store_contract import token_with_policy

pytestmark = pytest.mark.server

READ_ONLY = 'path "secret/*" { capabilities = ["read", "list"] }\n' \
            'path "auth/token/lookup-self" { capabilities = ["read"] }'


def _read_only(s: Scenario, bao: OpenBao) -> None:
    token = token_with_policy(bao, "rotator-lookahead-ro", READ_ONLY)
    s.seen_secrets.add(token)
    (s.root / "bao.token").write_text(token)


class TestOverlapRefusedStage:
    """With an overlap IdP, a store that refuses the new secret gets it taken back at the IdP."""

    def test_read_only_store(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                             tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        _read_only(s, bao_server)
        refused = s.cli("rotate", "svc")
        assert refused.code == 1 and "permission denied" in refused.out, refused.out
        assert s.kc_current() == old and s.works(old)
        assert s.kc_rotated() in (None, old), "the new secret is still valid at Keycloak"
        assert s.vault_current() == old and s.vault_pending() is None
        assert s.leaks() == []

    def test_foreign_pending_in_second_store(self, kc_realm: KeycloakRealm,
                                             bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        foreign = secrets.token_urlsafe(24)
        s.seen_secrets.add(foreign)
        env = s.root / "creds.env"
        env.write_text(env.read_text() + f"SVC_CLIENT_SECRET_PENDING={foreign}\n")
        refused = s.cli("rotate", "svc")
        assert refused.code == 1 and "--abandon-pending" in refused.out, refused.out
        # OpenBao took the new secret before the env file refused it: removed again.
        assert s.vault_pending() is None and s.vault_current() == old
        assert s.kc_current() == old and s.works(old)
        assert s.env_values()["SVC_CLIENT_SECRET_PENDING"] == foreign
        done = s.cli("rotate", "svc", "--abandon-pending")
        assert done.code == 0, done.out + done.err
        assert s.works(s.vault_current()) and s.vault_current() != old
        assert s.leaks() == []


class TestSingleSecretLookahead:
    """A single-secret rotation finds a read-only store before Keycloak invalidates the old
    secret, and stores the new one as CURRENT without a pending copy or PREVIOUS."""

    def test_read_only_store_found_first(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                         tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)
        old = s.vault_current()
        _read_only(s, bao_server)
        refused = s.cli("rotate", "svc")
        assert refused.code == 1 and "lacks" in refused.out, refused.out
        assert s.kc_current() == old and s.works(old)

    def test_written_current_without_previous(self, kc_realm: KeycloakRealm,
                                              bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)
        old = s.vault_current()
        done = s.cli("rotate", "svc")
        assert done.code == 0, done.out + done.err
        new = s.vault_current()
        assert new != old and s.works(new) and s.kc_current() == new
        meta = s.vault().secrets.kv.v2.read_secret_metadata(path=s.vault_path,
                                                           mount_point="secret")["data"]
        custom = meta["custom_metadata"]
        assert custom["rotator_current_version"] == str(meta["current_version"]) == "2"
        assert "rotator_previous_version" not in custom
        assert s.vault_pending() is None
        assert s.leaks() == []
