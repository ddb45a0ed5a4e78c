"""``rotator run`` end to end: its admin API and metrics against real Keycloak and OpenBao.

One daemon process serves every test in the class (started once, stopped by the last
test), called with a bearer token from a ``token_file``. Every API response (body and
headers), every daemon log line and the audit file are scanned for every secret value the
test has seen in OpenBao, the env file and Keycloak.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rotation_env import TESTS, KeycloakRealm, Scenario
from servers import OpenBao

from rotator.audit import flatten

CLIENT = "svc"
#: The file each rotation's gate hook waits for (see the daemon fixture)
GATE = "rotations.open"
FINISHED = ("promoted", "completed")


def _wait(predicate: Callable[[], bool], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@dataclass
class RunningDaemon:
    """A ``rotator run`` subprocess and what the tests saw of it."""

    scenario: Scenario
    proc: subprocess.Popen[str]
    log: Path
    token_file: Path
    port: int = 0
    #: Every response body and header the tests received.
    seen: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, token: str | None = None) -> httpx.Client:
        token = token if token is not None else self.token_file.read_text().strip()

        def note(response: httpx.Response) -> None:
            response.read()
            with self._lock:
                self.seen.append(response.text)
                self.seen += [f"{k}: {v}" for k, v in response.headers.items()]

        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"},
                            event_hooks={"response": [note]})

    def rotations(self) -> int:
        """Journal rows of the client: what the daemon began, however it was asked."""
        conn = sqlite3.connect(self.scenario.root / "state" / "journal.sqlite3")
        try:
            row = conn.execute("SELECT count(*) FROM rotations WHERE client = ?",
                               (CLIENT,)).fetchone()
        finally:
            conn.close()
        return int(row[0])

    def idle(self, api: httpx.Client) -> bool:
        """Wait until the client has no rotation running or awaiting retirement."""
        def settled() -> bool:
            state = api.get(f"/v1/clients/{CLIENT}").json()
            last = state["last_rotation"]
            return state["condition"] == "ready" and (last is None
                                                      or last["state"] == "completed")
        done = _wait(settled)
        self.remember()
        return done

    def finished(self, api: httpx.Client, location: str) -> dict[str, Any]:
        """Poll a rotation's URL until it is promoted or completed; its last answer."""
        answer: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal answer
            answer = api.get(location).json()
            return answer.get("state") in (*FINISHED, "failed", "rolled_back")
        _wait(reached)
        self.remember()
        return answer

    def remember(self) -> None:
        """Every secret OpenBao (each KV version), the env file and Keycloak hold now."""
        s = self.scenario
        s.remember()
        s.kc_current()
        s.kc_rotated()
        vault = s.vault()
        meta = vault.secrets.kv.v2.read_secret_metadata(path=s.vault_path,
                                                        mount_point="secret")
        for version in meta["data"]["versions"]:
            try:
                data = vault.secrets.kv.v2.read_secret_version(
                    path=s.vault_path, version=int(version), mount_point="secret",
                    raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:  # deleted: nothing to scan for
                continue
            value = data["data"]["data"].get("client_secret")
            if value:
                s.seen_secrets.add(str(value))


@pytest.fixture(scope="class")
def daemon(kc_realm: KeycloakRealm, bao_server: OpenBao,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    root = tmp_path_factory.mktemp("daemon-api")
    s = Scenario.create(kc_realm, bao_server, root, overlap=True, grace="0s",
                        extra_client='rotate_every = "30d"')
    token = secrets.token_urlsafe(32)
    token_file = root / "api.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    s.seen_secrets.add(token)
    # Each rotation's job ends only once this file exists (a promoted hook waits for it):
    # a test that removes it holds the job running, and so open to triggers that join it.
    gate = root / GATE
    gate.touch()
    with s.config.open("a") as config:
        config.write('\n[api]\nlisten = "127.0.0.1:0"\n\n[[api.tokens]]\nname = "ops"\n'
                     'role = "admin"\ntoken_file = "api.token"\n')
        config.write(f'\n[[clients.{CLIENT}.hooks]]\nkind = "command"\nname = "gate"\n'
                     f'argv = ["/bin/sh", "-c", \'while [ ! -e "$0" ]; do sleep 0.01; done\', '
                     f'"{gate}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
    log = root / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "run", "-c", str(s.config)],
                                stdout=out, stderr=out, text=True, env=env, cwd=TESTS.parent)
    running = RunningDaemon(s, proc, log, token_file)
    try:
        assert _wait(lambda: "api_listening" in log.read_text() or proc.poll() is not None)
        found = re.search(r"api_listening.*?port=(\d+)", log.read_text())
        assert found, log.read_text()[-3000:]
        running.port = int(found.group(1))
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@pytest.mark.server
@pytest.mark.slow
class TestRunServesTheApi:
    """rotator run serves its authenticated API and metrics, and no secret reaches a caller,
    a log line or the audit file."""

    def test_clients_show_the_client_and_its_condition(self, daemon: RunningDaemon) -> None:
        with daemon.client() as api, daemon.client(token="x" * 32) as stranger:
            page = api.get("/v1/clients")
            assert page.status_code == 200
            [item] = [c for c in page.json()["items"] if c["name"] == CLIENT]
            assert item["client_id"] == daemon.scenario.client_id
            assert item["condition"] == "ready"  # stored just now, due in 30 days
            assert item["next_run"] is not None
            assert item["stores"] == ["bao", "envfile"]
            assert api.get(f"/v1/clients/{CLIENT}").json()["condition"] == "ready"
            assert stranger.get("/v1/clients").status_code == 401
            assert api.get("/healthz").status_code == 200
            assert api.get("/readyz").json()["ready"] is True

    def test_a_triggered_rotation_is_accepted_then_reaches_promotion(
            self, daemon: RunningDaemon) -> None:
        s = daemon.scenario
        old = s.vault_current()
        with daemon.client() as api:
            assert daemon.idle(api)
            answer = api.post(f"/v1/clients/{CLIENT}/rotations")
            assert answer.status_code == 202
            location = answer.headers["Location"]
            assert location == f"/v1/rotations/{answer.json()['rotation_id']}"
            rotation = daemon.finished(api, location)
            assert rotation["state"] in FINISHED, rotation
            # the id the trigger answered with is the journal's id for the rotation
            assert rotation["id"] == answer.json()["rotation_id"]
            assert rotation["actor"] == "api:ops"
            assert [st["state"] for st in rotation["steps"]][:1] == ["started"]
        current = s.vault_current()
        assert current != old and s.works(current)

    def test_fifty_concurrent_triggers_make_one_rotation(self, daemon: RunningDaemon) -> None:
        with daemon.client() as api:
            assert daemon.idle(api)
            before = daemon.rotations()
            gate = daemon.scenario.root / GATE
            gate.unlink()  # the rotation they start runs until every trigger was answered
            barrier = threading.Barrier(50)

            def trigger() -> httpx.Response:
                barrier.wait()
                return api.post(f"/v1/clients/{CLIENT}/rotations")

            answers: list[httpx.Response] = []
            threads = [threading.Thread(target=lambda: answers.append(trigger()))
                       for _ in range(50)]
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                gate.touch()
            assert [a.status_code for a in answers] == [202] * 50
            ids = {a.json()["rotation_id"] for a in answers}
            assert len(ids) == 1
            assert sum(not a.json()["joined"] for a in answers) == 1
            assert daemon.finished(api, answers[0].headers["Location"])["state"] in FINISHED
            assert daemon.idle(api)
        assert daemon.rotations() == before + 1

    def test_the_same_idempotency_key_twice_makes_one_rotation(
            self, daemon: RunningDaemon) -> None:
        key = {"Idempotency-Key": f"deploy-{secrets.token_hex(4)}"}
        with daemon.client() as api:
            assert daemon.idle(api)
            before = daemon.rotations()
            first = api.post(f"/v1/clients/{CLIENT}/rotations", headers=key)
            assert daemon.finished(api, first.headers["Location"])["state"] in FINISHED
            assert daemon.idle(api)
            second = api.post(f"/v1/clients/{CLIENT}/rotations", headers=key)
            assert daemon.idle(api)
        assert (second.status_code, second.json()) == (first.status_code, first.json())
        assert second.headers["Location"] == first.headers["Location"]
        assert daemon.rotations() == before + 1

    def test_metrics_count_the_rotations_of_the_client(self, daemon: RunningDaemon) -> None:
        with daemon.client() as api:
            assert daemon.idle(api)
            text = api.get("/metrics")
        assert text.status_code == 200
        samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                   for family in text_string_to_metric_families(text.text)
                   for sample in family.samples}
        rotated = samples[("rotator_rotations_total",
                           (("client", CLIENT), ("outcome", "rotated")))]
        assert rotated >= 3  # one per test above that rotated
        assert samples[("rotator_client_condition",
                        (("client", CLIENT), ("condition", "ready")))] == 1.0
        assert samples[("rotator_idp_requests_total",
                        (("idp", "kc"), ("outcome", "success")))] >= 3

    def test_sighup_replaces_the_api_tokens(self, daemon: RunningDaemon) -> None:
        old = daemon.token_file.read_text().strip()
        new = secrets.token_urlsafe(32)
        daemon.scenario.seen_secrets.add(new)
        daemon.token_file.write_text(new + "\n")
        daemon.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: "api_callers_reloaded" in daemon.log.read_text())
        with daemon.client(token=old) as before, daemon.client(token=new) as after:
            assert before.get("/v1/clients").status_code == 401
            assert after.get("/v1/clients").status_code == 200

    def test_status_reports_what_the_daemon_reports(self, daemon: RunningDaemon) -> None:
        with daemon.client() as api:
            assert daemon.idle(api)
            served = api.get(f"/v1/clients/{CLIENT}").json()
        status = daemon.scenario.cli("status", "--json")
        assert status.code == 0, status.err
        [row] = json.loads(status.out)["clients"]
        assert row["condition"] == served["condition"] == "ready"
        assert datetime.fromisoformat(row["next_run"]) == datetime.fromisoformat(
            served["next_run"])
        assert row["state"] == "ok" and row["stores"]  # the fields it always had
        human = daemon.scenario.cli("status")
        assert f"  daemon: ready, next run {row['next_run']}" in human.out

    def test_sigterm_stops_the_api_first_and_nothing_leaked(
            self, daemon: RunningDaemon) -> None:
        daemon.remember()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0
        log = daemon.log.read_text()
        assert log.index("api_stopped") < log.index("daemon_stopped")
        audit = (daemon.scenario.root / "audit.jsonl").read_text()
        actions = {flatten(json.loads(line))["event"] for line in audit.splitlines()}
        assert "api_request" in actions
        s = daemon.scenario
        s.outputs += [*daemon.seen, *log.splitlines()]
        assert len(s.seen_secrets) >= 6  # admin, bao, audit key, tokens, four client secrets
        assert s.leaks() == []


def _run_briefly(tmp_path: Path, api: str) -> tuple[int, str]:
    """Start ``rotator run`` on a one-client env-file configuration plus ``api``; stop it."""
    from test_daemon import UNUSED_ADMIN_SECRET, write_config

    path = write_config(tmp_path, {"a": ""})
    path.write_text(path.read_text() + api)
    env = {**os.environ, "UNUSED_ADMIN_SECRET": UNUSED_ADMIN_SECRET}
    code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "run", "-c", str(path)],
                                stdout=out, stderr=out, env=env, cwd=TESTS.parent)
    try:
        _wait(lambda: "daemon_started" in log.read_text() or proc.poll() is not None)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return proc.returncode, log.read_text()


class TestApiNeedsACaller:
    """Without [[api.tokens]] or [api.jwt] the daemon schedules without serving the API, and
    an API that cannot listen stops the daemon with one line naming [api] (exit 2)."""

    def test_no_caller_no_api(self, tmp_path: Path) -> None:
        code, log = _run_briefly(tmp_path, "")
        assert code == 0
        assert "api_disabled" in log and "api_listening" not in log
        assert "daemon_started" in log

    def test_address_in_use(self, tmp_path: Path) -> None:
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            (tmp_path / "api.token").write_text(secrets.token_urlsafe(32))
            (tmp_path / "api.token").chmod(0o600)
            code, log = _run_briefly(tmp_path, f'\n[api]\nlisten = "127.0.0.1:{port}"\n'
                                               '[[api.tokens]]\nname = "ops"\nrole = "read"\n'
                                               'token_file = "api.token"\n')
        assert code == 2
        assert f"rotator: api.listen: cannot listen on 127.0.0.1:{port}" in log
        assert "Traceback" not in log
