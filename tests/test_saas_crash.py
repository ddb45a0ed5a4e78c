"""Kill a real rotating process at every step against Okta and Auth0 (the fakes); the next
run must make the client whole.

The fakes run in this test process; the killed one is the ``rotator rotate`` subprocess
(tests/crash_runner.py). Both vendors take a value rotator chose, so a rotation stages it in
both env files before the IdP hears of it. Okta keeps two secrets with ids (overlap); Auth0
keeps one and a new one works only after a propagation delay (single-secret).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.auth0 import FakeAuth0
from fakes.okta import FakeOkta
from saas_env import SaasScenario

pytestmark = [pytest.mark.slow]

# Kill points in the order a caller-chosen rotation reaches them; ``event`` kills right after
# the step took effect (its audit event is written), ``advance`` just before the journal
# records a state.
OVERLAP_POINTS = [
    ("event", "rotation_started"),
    ("event", "secret_staged#1"),
    ("event", "secret_staged#2"),
    ("advance", "staged"),
    ("event", "secret_created"),
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
    ("event", "secret_staged#1"),
    ("event", "secret_staged#2"),
    ("advance", "staged"),
    ("event", "secret_created"),
    ("advance", "created"),
    ("event", "secret_promoted#1"),
    ("event", "secret_promoted#2"),
    ("advance", "promoted"),
    ("event", "secret_verified"),
    ("advance", "completed"),
]


def _ids(points: list[tuple[str, str]]) -> list[str]:
    return [f"{mode}:{target}" for mode, target in points]


@pytest.fixture(scope="module")
def okta() -> Iterator[FakeOkta]:
    with FakeOkta() as fake:
        yield fake


@pytest.fixture(scope="module")
def auth0() -> Iterator[FakeAuth0]:
    with FakeAuth0(propagation_delay=1.0) as fake:
        yield fake


def _assert_whole(s: SaasScenario, old: str) -> None:
    """Both stores agree, hold a secret that works, and nothing is pending."""
    current = s.stored()
    assert s.stored(file="b.env") == current, "stores disagree"
    assert s.works(current)
    assert current != old, "the rotation did not happen"
    assert s.pending() is None and s.pending(file="b.env") is None
    verify = s.cli("verify", "c0")
    assert verify.code == 0, verify.out + verify.err
    assert s.leaks() == []


class TestOktaCrash:
    """Okta (two secrets, ids): consumers hold a working secret at every kill, and the old
    secret is retired by the run that finishes."""

    @pytest.mark.parametrize(("mode", "target"), OVERLAP_POINTS, ids=_ids(OVERLAP_POINTS))
    def test_kill_and_resume(self, okta: FakeOkta, tmp_path: Path, mode: str,
                             target: str) -> None:
        s = SaasScenario.create("okta", okta, tmp_path)
        old = s.stored()
        crashed = s.subprocess("rotate", "c0", crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        assert s.works(s.stored()) and s.works(s.stored(file="b.env"))

        again = s.subprocess("rotate", "c0")
        assert again.code == 0, again.out + again.err
        _assert_whole(s, old)
        app = okta.apps[s.client_ids[0]]
        assert [x.value for x in app.secrets] == [s.stored()], "the old secret was not retired"
        assert not s.works(old)


class TestAuth0Crash:
    """Auth0 (one secret, propagation delay): the secret Auth0 holds is always one the
    stores hold, and the next run ends with it current everywhere."""

    @pytest.mark.parametrize(("mode", "target"), SINGLE_POINTS, ids=_ids(SINGLE_POINTS))
    def test_kill_and_resume(self, auth0: FakeAuth0, tmp_path: Path, mode: str,
                             target: str) -> None:
        s = SaasScenario.create("auth0", auth0, tmp_path, idp_extra='propagation_delay = "5s"')
        old = s.stored()
        crashed = s.subprocess("rotate", "c0", crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        accepted = auth0.clients[s.client_ids[0]].secret
        held = {s.stored(), s.pending(), s.stored(file="b.env"), s.pending(file="b.env")}
        assert accepted in held, "Auth0 holds a secret no store has"

        again = s.subprocess("rotate", "c0")
        assert again.code == 0, again.out + again.err
        _assert_whole(s, old)
        assert auth0.clients[s.client_ids[0]].secret == s.stored()
        assert "C0_CLIENT_SECRET_PREVIOUS" not in s.env("a.env")
