"""Three real ``rotator run`` processes on one real PostgreSQL journal, each serving the admin
API: every daemon answers alike for every client and rotation, and triggers sent to each of
them rotate a client once (rotator.daemon.shared).

The fleet (Ory Hydra clients in env files) is the one of ``tests/test_ha_processes.py``.
Nothing waits on a clock for an assertion: the tests poll the journal, then compare answers.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Hydra
from test_ha_processes import Fleet, url, wait_for  # noqa: F401 - url is a fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]
DAEMONS = ("a", "b", "c")
#: Compared between daemons: everything but what moves with the clock of the answer.
MOVING = ("age_seconds",)
#: The client's lease taken by the test (when free), as a daemon's claim takes it.
HOLD = ("INSERT INTO leases AS l (client, holder, token, expires_at) VALUES (%s, 'test', 1, "
        "clock_timestamp() + interval '10 minutes') ON CONFLICT (client) DO UPDATE SET "
        "holder = 'test', token = l.token + 1, expires_at = excluded.expires_at "
        "WHERE l.expires_at <= clock_timestamp() RETURNING client")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiFleet(Fleet):
    """A :class:`Fleet` whose daemons each serve the admin API on a port of their own."""

    ports: dict[str, int]
    token: str

    def config(self, name: str, *, lease: str, workers: int) -> Path:
        path = super().config(name, lease=lease, workers=workers)
        port = self.ports.setdefault(name, free_port())
        token = self.root / "api.token"
        if not token.exists():
            token.write_text(self.token)
            token.chmod(0o600)
        with path.open("a") as out:
            out.write(f'\n[api]\nlisten = "127.0.0.1:{port}"\n\n[[api.tokens]]\n'
                      f'name = "ops"\nrole = "rotate"\ntoken_file = "{token}"\n')
        return path

    def call(self, daemon: str, method: str, path: str) -> tuple[int, Any]:
        answer = httpx.request(method, f"http://127.0.0.1:{self.ports[daemon]}{path}",
                               headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        text = answer.text
        return answer.status_code, json.loads(text) if text.startswith(("{", "[")) else text

    def serving(self) -> bool:
        try:
            return all(self.call(d, "GET", "/healthz")[0] == 200 for d in DAEMONS)
        except httpx.HTTPError:
            return False

    def gauges(self, daemon: str) -> list[str]:
        """The per-client gauges of ``daemon``'s /metrics, but the secret's age."""
        status, text = self.call(daemon, "GET", "/metrics")
        assert status == 200
        return sorted(line for line in str(text).splitlines()
                      if 'client="' in line and line.startswith((
                          "rotator_next_rotation", "rotator_last_success",
                          "rotator_client_condition")))


@pytest.fixture
def fleet(hydra: Hydra, tmp_path: Path, url: str) -> Iterator[ApiFleet]:  # noqa: F811
    made = ApiFleet.create(hydra, tmp_path, url, 6)
    assert isinstance(made, ApiFleet)
    made.ports, made.token = {}, secrets.token_urlsafe(24)
    try:
        for daemon in DAEMONS:
            made.start(daemon, lease="10s", workers=2)
        wait_for(made.serving, timeout=120, what="three APIs answer")
        wait_for(lambda: made.settled(list(made.clients)), timeout=600,
                 what="every client rotated once")
        yield made
    finally:
        made.stop_all()


def still(body: Any) -> Any:
    """``body`` without the MOVING fields, at any depth."""
    if isinstance(body, dict):
        return {k: still(v) for k, v in body.items() if k not in MOVING}
    if isinstance(body, list):
        return [still(v) for v in body]
    return body


def same_everywhere(fleet: ApiFleet, path: str) -> Any:
    """``path``'s answer, asserted the same (but for MOVING fields) on every daemon."""
    answers = {}
    for daemon in DAEMONS:
        status, body = fleet.call(daemon, "GET", path)
        assert status == 200, (daemon, path, status, body)
        answers[daemon] = still(body)
    assert answers["a"] == answers["b"] == answers["c"], answers
    return answers["a"]


class TestEveryDaemonAnswersAlike:
    """Every daemon answers the same for any client (condition, last rotation, last success,
    failures, next run), for any rotation, and in its per-client gauges, whichever daemon
    rotated it."""

    def test_clients_rotations_and_gauges(self, fleet: ApiFleet) -> None:
        rotated_by: dict[str, str] = {}
        for name in fleet.clients:
            client = same_everywhere(fleet, f"/v1/clients/{name}")
            assert client["last_rotation"]["state"] == "completed"
            assert client["backoff"]["failures"] == 0 and client["condition"] == "ready"
            rotation = same_everywhere(fleet, f"/v1/rotations/{client['last_rotation']['id']}")
            assert rotation["state"] == "completed" and rotation["client"] == name
            assert [s["state"] for s in rotation["steps"]][-1] == "completed"
            rotated_by[name] = client["last_rotation"]["id"]
        listed = [same_everywhere(fleet, "/v1/clients?limit=100")]
        assert [c["name"] for c in listed[0]["items"]] == sorted(fleet.clients)
        assert fleet.gauges("a") == fleet.gauges("b") == fleet.gauges("c")
        assert len(set(rotated_by.values())) == len(fleet.clients)


class TestTriggerOnEveryDaemon:
    """A rotation triggered on each of three daemons, wherever it runs, is one rotation: the
    second and third triggers join the first, and every daemon answers for it."""

    def test_one_rotation(self, fleet: ApiFleet) -> None:
        name = "c000"
        before = fleet.rotations()[name]
        # The test holds the client's lease while it triggers, so that no daemon can begin
        # (and, Hydra being quick, finish) the rotation between the three calls: a trigger
        # after a finished rotation rightly asks for a new one.
        wait_for(lambda: bool(fleet.sql(HOLD, name)), timeout=60, what="the test holds c000")
        answers = [fleet.call(d, "POST", f"/v1/clients/{name}/rotations") for d in DAEMONS]
        assert all(status == 202 for status, _ in answers), answers
        ids = {body["rotation_id"] for _, body in answers}
        assert len(ids) == 1, answers
        assert [body["joined"] for _, body in answers][1:] == [True, True], answers
        [rotation_id] = ids
        for daemon in DAEMONS:  # known everywhere, queued or under way
            status, body = fleet.call(daemon, "GET", f"/v1/rotations/{rotation_id}")
            assert status == 200, (daemon, body)
        fleet.sql("UPDATE leases SET expires_at = clock_timestamp() WHERE client = %s "
                  "AND holder = 'test' RETURNING client", name)
        wait_for(lambda: len(fleet.rotations()[name]) > len(before)
                 and fleet.settled([name]), timeout=300, what="the triggered rotation ended")
        self.settle_jobs(fleet)
        assert fleet.rotations()[name] == [*before, "completed"]
        assert fleet.created()[name] == 2  # one secret at the start, one for the triggers
        done = same_everywhere(fleet, f"/v1/rotations/{rotation_id}")
        assert done["state"] == "completed"
        client = same_everywhere(fleet, f"/v1/clients/{name}")
        assert client["last_rotation"]["id"] == done["id"]
        again = fleet.call("b", "POST", f"/v1/clients/{name}/rotations")
        assert again[0] == 202 and again[1]["rotation_id"] != rotation_id, again  # a new one

    @staticmethod
    def settle_jobs(fleet: ApiFleet) -> None:
        """Wait until no daemon has a triggered job left: the lease rows are all free and no
        trigger is pending."""
        def idle() -> bool:
            pending = fleet.sql("SELECT count(*) FROM triggers WHERE rotation_id IS NULL")
            held = fleet.sql("SELECT count(*) FROM leases WHERE expires_at > clock_timestamp()")
            return pending[0][0] == 0 and held[0][0] == 0
        wait_for(idle, timeout=120, what="no trigger pending, no lease held")
