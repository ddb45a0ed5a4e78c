"""Retire when unused, end to end: a real ``rotator run`` daemon, Keycloak and OpenBao, and
three consumer processes through ``rotator.client`` reporting which secret they use.

One consumer is slow to refresh: the old secret stays valid at Keycloak until it moved, then
it is retired; no consumer call fails; no secret reaches a report, an API answer, the
daemon's log or the audit file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rotation_env import TESTS, KeycloakRealm, Scenario
from servers import OpenBao
from test_daemon_api import CLIENT, RunningDaemon, _wait

from rotator.consumers import consumer_key

PROBE = Path(__file__).parent / "consumer_probe.py"
CLI = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"


class Consumer:
    """One consumer process; every answer it gave is kept."""

    def __init__(self, name: str, config: Path, env: dict[str, str]) -> None:
        self.name = name
        self.answers: list[dict[str, Any]] = []
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(PROBE), str(config), CLIENT, "bao"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**env, "ROTATOR_REPORT_INSTANCE": name}, cwd=TESTS.parent)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            assert line, "\n".join(self.output)
            self.output.append(line)
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                self.answers.append(answer)
                return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.output += self.proc.stdout.readlines()
            self.proc.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def daemon(kc_realm: KeycloakRealm, bao_server: OpenBao,
           tmp_path: Path) -> Iterator[tuple[RunningDaemon, str]]:
    s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1h",
                        extra_client='retire = "when_unused"\nmin_grace = "0s"\n'
                                     'consumers_seen_within = "1h"')
    admin, consumer = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    for name, value in (("api.token", admin), ("consumer.token", consumer)):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
        s.seen_secrets.add(value)
    with s.config.open("a") as config:
        config.write('\n[api]\nlisten = "127.0.0.1:0"\n\n[[api.tokens]]\nname = "ops"\n'
                     'role = "admin"\ntoken_file = "api.token"\n\n[[api.tokens]]\n'
                     'name = "consumers"\nrole = "consumer"\ntoken_file = "consumer.token"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "run", "-c", str(s.config)],
                                stdout=out, stderr=out, text=True, env=env, cwd=TESTS.parent)
    running = RunningDaemon(s, proc, log, tmp_path / "api.token")
    try:
        assert _wait(lambda: "api_listening" in log.read_text() or proc.poll() is not None)
        found = re.search(r"api_listening.*?port=(\d+)", log.read_text())
        assert found, log.read_text()[-3000:]
        running.port = int(found.group(1))
        yield running, consumer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _consumers(api: Any) -> dict[str, dict[str, Any]]:
    answer = api.get(f"/v1/clients/{CLIENT}").json()
    return {c["instance"]: c for c in answer["consumers"]}


@pytest.mark.server
@pytest.mark.slow
class TestRetireWhenUnused:
    """The old secret is retired only after the slowest consumer reported the new one, and
    no consumer call fails meanwhile."""

    def test_three_consumers_one_slow(self, daemon: tuple[RunningDaemon, str],
                                      tmp_path: Path) -> None:
        running, consumer_token = daemon
        s = running.scenario
        key = consumer_key(s.root / "state", CLIENT).hex()
        s.seen_secrets.add(key)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update({"ROTATOR_REPORT_URL": f"http://127.0.0.1:{running.port}",
                    "ROTATOR_REPORT_TOKEN": consumer_token, "ROTATOR_REPORT_KEY": key})
        fleet = [Consumer(name, s.config, env) for name in ("fast-1", "fast-2", "slow")]
        fast, slow = fleet[:2], fleet[2]
        try:
            with running.client() as api:
                for c in fleet:
                    assert c.ask("refresh")["sent"] == 1
                before = _consumers(api)
                assert set(before) == {"fast-1", "fast-2", "slow"}
                old_fp = before["slow"]["fingerprint"]
                assert {c["fingerprint"] for c in before.values()} == {old_fp}

                location = api.post(f"/v1/clients/{CLIENT}/rotations").headers["location"]
                assert _wait(lambda: api.get(location).json()["state"] == "promoted")
                old = s.kc_rotated()
                assert old is not None  # the old secret is still valid at Keycloak

                for c in fast:
                    assert c.ask("refresh") == {"ok": True, "error": None, "sent": 2,
                                                "failed": 0}

                def fast_moved_slow_not() -> bool:
                    seen = _consumers(api)
                    return (seen["fast-1"]["current"] is True and seen["fast-2"]["current"]
                            is True and seen["slow"]["current"] is False)
                # The gate ran after both fast consumers reported, and still holds.
                assert _wait(fast_moved_slow_not), _consumers(api)
                # (a retirement the daemon queued shows as "queued": not completed is what counts)
                assert api.get(location).json()["state"] != "completed"
                assert s.kc_rotated() == old
                assert slow.ask("call")["ok"]  # its cached token, from the old secret

                assert slow.ask("refresh") == {"ok": True, "error": None, "sent": 2,
                                               "failed": 0}
                assert _wait(lambda: api.get(location).json()["state"] == "completed")
                rotation = api.get(location).json()
                completed = datetime.fromisoformat(
                    next(st for st in rotation["steps"] if st["state"] == "completed")["at"])
                after = _consumers(api)
                assert datetime.fromisoformat(after["slow"]["seen_at"]) <= completed
                assert s.kc_rotated() is None  # retired at Keycloak
                assert {c["fingerprint"] for c in after.values()} != {old_fp}
                assert all(c["current"] for c in after.values())
                for c in fleet:
                    assert c.ask("refresh")["ok"] and c.ask("call")["ok"]
                running.remember()
                status = subprocess.run(
                    [sys.executable, "-c", CLI, "status", "--json", "-c", str(s.config), CLIENT],
                    capture_output=True, text=True, env=env, cwd=TESTS.parent)
                assert status.returncode == 0, status.stderr
                shown = json.loads(status.stdout)["clients"][0]["consumers"]
                assert {c["instance"]: c["current"] for c in shown} == {
                    "fast-1": True, "fast-2": True, "slow": True}
        finally:
            for c in fleet:
                c.stop()
        assert all(a["ok"] for c in fleet for a in c.answers)  # no consumer call failed
        # Reports: at most one per refresh (3 refreshes each, the last one included).
        assert [c.answers[-1]["sent"] for c in fleet] == [3, 3, 3]
        texts = [running.log.read_text(), *running.seen, status.stdout, status.stderr,
                 *(line for c in fleet for line in c.output)]
        audit = s.root / "audit.jsonl"
        if audit.exists():
            texts.append(audit.read_text())
        state_files = [(s.root / "state" / "consumers.json").read_text()]
        for secret in s.seen_secrets:
            for text in [*texts, *state_files]:
                assert secret not in text
