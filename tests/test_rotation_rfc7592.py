"""Rotations through RFC 7592 on real servers, with the registration access token (RAT) kept
in OpenBao, and SIGKILL at every step.

Glewlwyd issues a new secret on update (the rotation succeeds); Hydra v2.3.0 and
oidc-provider 9 issue none and replace the RAT on every update (the rotation fails with a
clear message, the new RAT is kept and the stored secret keeps working).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rfc7592_env import DcrScenario, DcrServer, glewlwyd_dcr, hydra_dcr, oidc_provider_dcr
from servers import OpenBao

from rotator.config import load_config
from rotator.errors import ConfigError
from rotator.interfaces import State

pytestmark = pytest.mark.server

DOES_NOT_ROTATE = "does not rotate secrets through RFC 7592"
RAT_REFUSED = "the registration access token was refused"
SAVE = "rotator.engine.client_state:StoreClientState.save"


def _server(request: pytest.FixtureRequest, name: str) -> DcrServer:
    if name == "hydra":
        return hydra_dcr(request.getfixturevalue("hydra"))
    if name == "oidc-provider":
        return oidc_provider_dcr(request.getfixturevalue("oidc_provider"))
    return glewlwyd_dcr(request.getfixturevalue("glewlwyd_dcr"))


@pytest.fixture
def make(request: pytest.FixtureRequest, bao_server: OpenBao,
         tmp_path: Path) -> Callable[[str], DcrScenario]:
    def scenario(name: str) -> DcrScenario:
        return DcrScenario.create(_server(request, name), bao_server, tmp_path / "c")
    return scenario


class TestNewSecretOnUpdate:
    """Where the server issues a new secret on update (Glewlwyd), the rotation stores it,
    the old secret dies and the new one obtains a token."""

    def test_rotate(self, make: Callable[[str], DcrScenario]) -> None:
        s = make("glewlwyd")
        code, output = s.cli("rotate", "svc")
        assert code == 0, output
        new = s.stored()
        assert new and new != s.old and s.env_secret() == new
        assert s.works(new) and not s.works(s.old)
        rotation, states = s.latest()
        assert states[-1] is State.COMPLETED and rotation.family == "single"
        assert s.rat() == s.first_rat  # Glewlwyd keeps the token
        code, output = s.cli("verify", "svc")
        assert code == 0, output
        assert s.leaks() == []


@pytest.mark.parametrize("server", ["hydra", "oidc-provider"])
class TestNoNewSecretOnUpdate:
    """A server that answers the update without a new secret fails the rotation with a
    message saying so, after the RAT it replaced was stored; the stored secret still works."""

    def test_fails_clearly_and_keeps_the_new_rat(self, make: Callable[[str], DcrScenario],
                                                 server: str) -> None:
        s = make(server)
        code, output = s.cli("rotate", "svc")
        assert code == 1 and DOES_NOT_ROTATE in output, output
        rat = s.rat()
        assert rat and rat != s.first_rat
        assert s.rat_status(s.first_rat) == 401  # the server replaced it ...
        assert s.rat_status(rat) == 200  # ... and the stored one is the new one
        assert s.stored() == s.old and s.env_secret() == s.old and s.works(s.old)
        rotation, states = s.latest()
        assert states == [State.STARTED, State.CREATING, State.FAILED]
        assert DOES_NOT_ROTATE in (rotation.error or "")
        # Not stuck: the next run asks again (with the stored token) and fails the same way.
        code, output = s.cli("rotate", "svc")
        assert code == 1 and DOES_NOT_ROTATE in output, output
        assert s.rat_status(s.rat() or "") == 200
        code, output = s.cli("verify", "svc")
        assert code == 0, output
        assert s.leaks() == []

    def test_status_names_the_reason(self, make: Callable[[str], DcrScenario],
                                     server: str) -> None:
        s = make(server)
        s.cli("rotate", "svc")
        code, output = s.cli("status", "svc", "--json")
        assert code == 1, output
        assert DOES_NOT_ROTATE in output and "last_rotation_failed" in output
        assert s.leaks() == []


# Kill points of an RFC 7592 rotation, in order. ``call``/``returned`` of SAVE: before and
# after the new RAT is stored (the first is the window between the server's answer and
# that write).
POINTS = [
    ("event", "rotation_started"),
    ("advance", "creating"),
    ("call", SAVE),
    ("returned", SAVE),
    ("event", "secret_created"),
    ("event", "secret_staged#1"),
    ("event", "secret_staged#2"),
    ("advance", "created"),
    ("event", "secret_promoted#1"),
    ("event", "secret_promoted#2"),
    ("advance", "promoted"),
    ("event", "secret_verified"),
    ("advance", "completed"),
    ("advance", "failed"),
]


#: Glewlwyd keeps the RAT (no save) and its rotation does not fail.
SECRET_POINTS = [p for p in POINTS if p[1] not in (SAVE, "failed")]
#: Hydra and oidc-provider: the rotation ends FAILED at create.
FAILING_POINTS = [p for p in POINTS if p[1] in (
    "rotation_started", "creating", SAVE, "secret_created", "failed")]


def _ids(points: list[tuple[str, str]]) -> list[str]:
    return [f"{mode}:{target.rpartition('.')[2]}" for mode, target in points]


class TestCrashNewSecret:
    """Glewlwyd (new secret on update, RAT kept, secret readable): a run killed anywhere is
    finished by the next one; the secret Glewlwyd accepts is the one stored."""

    @pytest.mark.parametrize(("mode", "target"), SECRET_POINTS, ids=_ids(SECRET_POINTS))
    def test_kill_and_resume(self, make: Callable[[str], DcrScenario], mode: str,
                             target: str) -> None:
        s = make("glewlwyd")
        assert s.crashing(mode, target, "rotate", "svc") == -9
        code, output = s.cli("rotate", "svc")
        assert code == 0, output
        if target == "secret_created":
            # Killed after Glewlwyd issued the secret, before any store held it: the next
            # run read it back with GET instead of asking for another.
            assert "secret_recovered" in (s.root / "audit.jsonl").read_text()
        current = s.stored()
        assert current and current != s.old and s.env_secret() == current
        assert s.works(current) and not s.works(s.old)
        assert s.pending() is None
        _, states = s.latest()
        assert states[-1] is State.COMPLETED
        assert s.leaks() == []


@pytest.mark.parametrize("server", ["hydra", "oidc-provider"])
class TestCrashRatRotates:
    """Hydra and oidc-provider (RAT replaced on every update, no new secret): at every kill
    point the stored secret obtains a token and nothing issued is lost; killed between the
    server's answer and storing the new RAT, the next run says the stored RAT was refused
    and what to do."""

    @pytest.mark.parametrize(("mode", "target"), FAILING_POINTS, ids=_ids(FAILING_POINTS))
    def test_kill_and_resume(self, make: Callable[[str], DcrScenario], server: str,
                             mode: str, target: str) -> None:
        s = make(server)
        assert s.crashing(mode, target, "rotate", "svc") == -9
        assert s.works(s.stored()) and s.works(s.env_secret())
        code, output = s.cli("rotate", "svc")
        assert code == 1, output
        assert s.stored() == s.old and s.works(s.old), "the stored secret must keep working"
        if (mode, target) == ("call", SAVE):
            # The new RAT died with the process; the server refuses the stored one.
            assert RAT_REFUSED in output, output
            assert s.rat() == s.first_rat and s.rat_status(s.first_rat) == 401
            # The rotation stays open (a server that also issued a secret lets the next run
            # read it back once a new RAT is stored); status says it is blocked, and why.
            rotation, _ = s.latest()
            assert rotation.state is State.CREATING and RAT_REFUSED in (rotation.error or "")
            code, status = s.cli("status", "svc", "--json")
            view = json.loads(status)["clients"][0]
            assert code == 1 and view["error"] is True, status
            assert view["condition"] == "blocked" and RAT_REFUSED in view["reason"]
        else:
            assert DOES_NOT_ROTATE in output, output
            assert s.rat_status(s.rat() or "") == 200
        assert s.leaks() == []



class TestConfig:
    """An rfc7592 client's settings are checked with the rest: every problem, file and key."""

    def test_missing_and_bad_client_settings(self, tmp_path: Path) -> None:
        (tmp_path / "audit.key").write_text("k" * 32)
        (tmp_path / "audit.key").chmod(0o600)
        path = tmp_path / "rotator.toml"
        path.write_text("""
[rotator]
state_dir = "state"
[audit]
file = "audit.jsonl"
key_file = "audit.key"
[stores.envfile]
type = "env"
file = "creds.env"
[idps.dcr]
type = "rfc7592"
token_endpoint = "https://idp.example/token"
[clients.a]
idp = "dcr"
client_id = "a"
registration_client_uri = "http://idp.example/register/a"
stores = [{store = "envfile", prefix = "A"}]
""")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        text = str(info.value)
        assert f"{path}: clients.a.registration_token_store: required" in text
        assert f"{path}: clients.a.registration_token_location: required" in text
        assert f"{path}: clients.a.registration_client_uri: must be an https:// URL" in text

    def test_token_store_must_exist(self, tmp_path: Path) -> None:
        (tmp_path / "audit.key").write_text("k" * 32)
        (tmp_path / "audit.key").chmod(0o600)
        path = tmp_path / "rotator.toml"
        path.write_text("""
[rotator]
state_dir = "state"
[audit]
file = "audit.jsonl"
key_file = "audit.key"
[stores.envfile]
type = "env"
file = "creds.env"
[idps.dcr]
type = "rfc7592"
[clients.a]
idp = "dcr"
client_id = "a"
registration_client_uri = "https://idp.example/register/a"
registration_token_store = "vualt"
registration_token_location = "RAT_A"
stores = [{store = "envfile", prefix = "A"}]
""")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (f"{path}: clients.a.registration_token_store: no store named 'vualt' in "
                "[stores]") in str(info.value)
        path.write_text(path.read_text().replace('"vualt"', '"envfile"'))
        assert load_config(path).clients["a"].idp_settings["registration_token_store"] == \
            "envfile"
