"""Rotations through the engine against a real Glewlwyd 2.7 (admin API), OpenBao and an env
file.

Glewlwyd is single-secret and rotator chooses the value, so these rotations take the engine's
STAGED path: the new value is PENDING in every store before Glewlwyd hears of it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from server_glewlwyd import GLEWLWYD_SCOPE, Glewlwyd
from servers import OpenBao
from staged_env import StagedCrashCases, StagedRotationCases, StagedScenario

pytestmark = pytest.mark.server


@pytest.fixture
def scenario(glewlwyd: Glewlwyd, bao_server: OpenBao, tmp_path: Path) -> StagedScenario:
    return StagedScenario.create(
        glewlwyd, bao_server, tmp_path / secrets.token_hex(4), vault_prefix="glewlwyd",
        idp_name="glw", idp_table=f"""\
type = "glewlwyd"
url = "{glewlwyd.url}"
api_key_file = "glewlwyd.key"
timeout = "10s"
""", client_extra=f'scopes = ["{GLEWLWYD_SCOPE}"]\n',
        secret_files={"glewlwyd.key": glewlwyd.admin_api_key})


class TestGlewlwydRotation(StagedRotationCases):
    """A rotation at Glewlwyd stages rotator's value first, sets it through the admin API, and
    leaves every store holding the one secret Glewlwyd accepts."""

    def test_two_rotations_in_a_row(self, scenario: StagedScenario) -> None:
        s = scenario
        assert s.cli("rotate", "svc")[0] == 0
        first = s.vault_value()
        code, output = s.cli("rotate", "svc")
        assert code == 0, output
        second = s.vault_value()
        assert second != first and s.works(second) and not s.works(first)
        assert s.leaks() == []


class TestGlewlwydCrash(StagedCrashCases):
    """A run killed at any step is finished by the next one, and a stored secret works."""
