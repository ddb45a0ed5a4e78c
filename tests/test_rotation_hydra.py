"""Rotations through the engine against a real Ory Hydra v2.3.0, OpenBao and an env file.

Hydra is single-secret and rotator chooses the value, so these rotations take the engine's
STAGED path: the new value is PENDING in every store before Hydra hears of it.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from servers import Hydra, OpenBao
from staged_env import StagedCrashCases, StagedRotationCases, StagedScenario

pytestmark = pytest.mark.server


@pytest.fixture
def scenario(hydra: Hydra, bao_server: OpenBao, tmp_path: Path) -> StagedScenario:
    return StagedScenario.create(hydra, bao_server, tmp_path / secrets.token_hex(4),
                                 vault_prefix="hydra", idp_name="hydra", idp_table=f"""\
type = "hydra"
admin_url = "{hydra.admin_url}"
public_url = "{hydra.url}"
timeout = "10s"
""")


class TestHydraRotation(StagedRotationCases):
    """A rotation at Hydra stages rotator's value first, sets it with PATCH, and leaves every
    store holding the one secret Hydra accepts."""

    def test_dry_run_plans_a_caller_chosen_single_secret(self, scenario: StagedScenario) -> None:
        code, output = scenario.cli("rotate", "svc", "--dry-run", "--json")
        assert code == 0, output
        details = json.loads(output)
        detail: Any = details[0] if isinstance(details, list) else details
        assert "generate a secret" in json.dumps(detail)
        assert scenario.works(scenario.old)


class TestHydraCrash(StagedCrashCases):
    """A run killed at any step is finished by the next one, and a stored secret works."""
