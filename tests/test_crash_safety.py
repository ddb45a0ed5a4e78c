"""Kill a real rotating process at every step boundary; the next run must make it whole.

Each case rotates a fresh Keycloak client whose secret lives in OpenBao (in the ``aws``
cases: AWS Secrets Manager on a moto server) and an env file, SIGKILLs the ``rotator
rotate`` subprocess at one point, checks what consumers have at that moment, runs ``rotator
rotate`` again, and proves that the client ends with a stored secret that obtains a token,
that every store agrees, and that the secret Keycloak holds is the one stored (no issued
secret lost).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fleet_env import Fleet
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao

# The primary store: OpenBao, or AWS Secrets Manager (moto server); the env file is second.
PRIMARY_STORES = ["vault", "aws"]

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Kill points, in the order a rotation reaches them. ``event`` kills right after the step
# took effect (its audit event is written) and before the journal records it; ``advance``
# kills just before the journal records a state.
OVERLAP_POINTS = [
    ("event", "rotation_started"),
    ("advance", "creating"),
    ("event", "secret_created"),
    ("event", "secret_staged#1"),
    ("event", "secret_staged#2"),
    ("advance", "created"),
    ("event", "secret_verified"),
    ("advance", "verified"),
    ("event", "secret_promoted#1"),
    ("event", "secret_promoted#2"),
    ("advance", "promoted"),
    ("event", "old_secret_retired"),
    ("advance", "completed"),
]
SINGLE_POINTS = [
    ("event", "rotation_started"),
    ("advance", "creating"),
    ("event", "secret_created"),
    ("event", "secret_staged#1"),
    ("event", "secret_staged#2"),
    ("advance", "created"),
    ("event", "secret_promoted#1"),
    ("event", "secret_promoted#2"),
    ("advance", "promoted"),
    ("event", "secret_verified"),
    ("advance", "completed"),
]


# Kill points of ``rotate --all --parallel 4`` over PARALLEL_CLIENTS clients: the N-th event
# of its kind across the workers, so other clients are mid-rotation at various steps.
PARALLEL_CLIENTS = 6
PARALLEL_POINTS = [
    ("event", "secret_created#3"),
    ("event", "secret_staged#5"),
    ("event", "secret_verified#4"),
    ("event", "secret_promoted#6"),
    ("event", "old_secret_retired#2"),
]


def _ids(points: list[tuple[str, str]]) -> list[str]:
    return [f"{mode}:{target}" for mode, target in points]


@pytest.fixture(params=PRIMARY_STORES)
def scenario_for(request: pytest.FixtureRequest, kc_realm: KeycloakRealm, bao_server: OpenBao,
                 tmp_path: Path) -> Callable[..., Scenario]:
    """Makes a Scenario whose primary store is the parametrized one."""
    moto = request.getfixturevalue("moto_server") if request.param == "aws" else None

    def make(**kwargs: Any) -> Scenario:
        return Scenario.create(kc_realm, bao_server, tmp_path, primary=request.param,
                               moto=moto, **kwargs)
    return make


def _assert_whole(s: Scenario, old: str) -> None:
    """The client's stores agree, hold what Keycloak holds, and that secret works."""
    current = s.primary_current()
    env = s.env_values()
    assert env["SVC_CLIENT_SECRET"] == current, "stores disagree"
    assert s.kc_current() == current, "Keycloak holds a secret no store has"
    assert s.works(current)
    assert current != old, "the rotation did not happen"
    assert s.primary_pending() is None
    assert "SVC_CLIENT_SECRET_PENDING" not in env
    verify = s.cli("verify", "svc")
    assert verify.code == 0, verify.out + verify.err
    assert s.leaks() == []


class TestOverlapCrash:
    """With Keycloak's secret-rotation policy, consumers hold a working secret at every kill."""

    @pytest.mark.parametrize(("mode", "target"), OVERLAP_POINTS, ids=_ids(OVERLAP_POINTS))
    def test_kill_and_resume(self, scenario_for: Callable[..., Scenario], mode: str,
                             target: str) -> None:
        s = scenario_for(overlap=True)
        old = s.primary_current()
        crashed = s.subprocess("rotate", "svc", crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        # At the moment of the crash, what consumers read still obtains a token.
        assert s.works(s.primary_current())
        assert s.works(s.env_values()["SVC_CLIENT_SECRET"])

        again = s.subprocess("rotate", "svc")
        assert again.code == 0, again.out + again.err
        _assert_whole(s, old)
        assert s.kc_rotated() is None, "the old secret was not retired"
        assert not s.works(old)


class TestSingleSecretCrash:
    """Without the policy the old secret dies at once; the new one is never lost."""

    @pytest.mark.parametrize(("mode", "target"), SINGLE_POINTS, ids=_ids(SINGLE_POINTS))
    def test_kill_and_resume(self, scenario_for: Callable[..., Scenario], mode: str,
                             target: str) -> None:
        s = scenario_for(overlap=False)
        old = s.primary_current()
        crashed = s.subprocess("rotate", "svc", crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        # Whatever Keycloak now accepts is either stored (current or pending) or readable
        # from Keycloak itself, so the next run can recover it.
        accepted = s.kc_current()
        stored = {s.primary_current(), s.primary_pending(),
                  s.env_values().get("SVC_CLIENT_SECRET")}
        assert accepted in stored or target in ("creating", "secret_created")

        again = s.subprocess("rotate", "svc")
        assert again.code == 0, again.out + again.err
        _assert_whole(s, old)
        assert "SVC_CLIENT_SECRET_PREVIOUS" not in s.env_values()


class TestParallelCrash:
    """A killed rotate --all --parallel leaves every client whole after the next run."""

    @pytest.mark.parametrize(("mode", "target"), PARALLEL_POINTS, ids=_ids(PARALLEL_POINTS))
    def test_kill_and_resume(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                             tmp_path: Path, mode: str, target: str) -> None:
        fleet = Fleet.create(kc_realm, bao_server, tmp_path, PARALLEL_CLIENTS)
        clients = range(PARALLEL_CLIENTS)
        old = [fleet.stored(i) for i in clients]
        crashed = fleet.subprocess("rotate", "--all", "--parallel", "4",
                                   crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        # At the moment of the crash, what consumers read still obtains a token.
        for i in clients:
            assert fleet.works(i, fleet.stored(i)), f"c{i}"
            assert fleet.works(i, fleet.env(i)), f"c{i}"

        again = fleet.subprocess("rotate", "--all", "--parallel", "4")
        assert again.code == 0, again.out + again.err
        assert [p for i in clients for p in fleet.whole(i)] == []
        assert all(fleet.stored(i) != old[i] for i in clients)
        assert fleet.leaks() == []
