"""Every file a run leaves behind, and every byte it printed, holds no secret value.

A realistic configuration: OpenBao and an env file as stores, the shared Keycloak, a file
audit log plus an HEC sink to a local collector, a command hook and a signed http hook, and
an alert webhook whose URL (a credential, as Slack's are) carries a token in its path. It
rotates through the CLI (a child process), then through ``rotator run`` and its API. Then
every file under the scenario's directory (state directory, journal, spool, alert state, lock
files, audit log, the hook's output, the child's temporary directory) and everything the
processes printed are searched for every secret value in every form the redactor knows:
raw, percent-encoded, JSON- and repr-escaped (nested), base64, and the ``client_id:secret``
pair of an HTTP Basic header. Only the files the test wrote as inputs and the env store's file
may hold one. Every file rotator created is private: 0600, in directories of 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hook_receiver import receiver
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao
from test_audit_remote import Collector

from rotator.secrets import _encodings

TESTS = Path(__file__).parent
PROBE = TESTS / "hook_probe.py"
#: What the test wrote for rotator to read; they hold a secret on purpose.
INPUTS = {"audit.key", "admin.secret", "bao.token", "hec.token", "hook.key", "alerts.url",
          "api.token", "rotator.toml"}
#: Store files: they hold the client secret on purpose (and must be private).
HOLDERS = {"creds.env"}
#: Written by the test itself, not by rotator: scanned, modes not rotator's.
OURS = {"hook.out", "cli.out", "cli.err", "daemon.out", "daemon.err"}


def _forms(values: set[str], client_id: str) -> dict[str, str]:
    """Each form of each value (8 characters or more) -> a short name of its value."""
    found: dict[str, str] = {}
    for value in values:
        for source in (value, f"{client_id}:{value}"):
            for form in _encodings(source):
                if len(form) >= 8:
                    found[form] = value[:4] + "…"
    return found


def _wait(predicate: object, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(secrets.token_urlsafe(24)).start()
    try:
        yield server
    finally:
        server.stop()


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    (root / "tmp").mkdir(mode=0o700, exist_ok=True)
    return env | {"TMPDIR": str(root / "tmp")}


@pytest.mark.server
@pytest.mark.slow
class TestNoSecretInAnyFile:
    """After a CLI rotation and a daemon rotation through the API, with every new sink,
    hook and alert configured, no file and no output holds a secret but the store's file,
    and every file rotator made is 0600 in a 0700 directory."""

    def test_cli_then_daemon(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                             collector: Collector, tmp_path: Path) -> None:
        root = tmp_path / "run"
        hook_key = "hk-" + secrets.token_urlsafe(32)
        api_token = secrets.token_urlsafe(32)
        alert_path = secrets.token_urlsafe(24)
        with receiver(statuses=[500], key=hook_key.encode()) as hooks, \
                receiver() as alerts:
            s = Scenario.create(kc_realm, bao_server, root, overlap=True,
                                extra_client='rotate_every = "30d"')
            alert_url = f"{alerts.url}/services/{alert_path}"
            for name, value in (("hec.token", collector.token), ("hook.key", hook_key),
                                ("alerts.url", alert_url), ("api.token", api_token)):
                (root / name).write_text(value + "\n")
                (root / name).chmod(0o600)
            s.seen_secrets |= {collector.token, hook_key, alert_url, alert_path, api_token}
            s.config.write_text(s.config.read_text() + f"""
[[clients.svc.hooks]]
kind = "command"
name = "probe"
argv = {json.dumps([sys.executable, str(PROBE), str(root / "hook.out")])}
on = ["promoted", "retired"]

[[clients.svc.hooks]]
kind = "http"
name = "rollout"
url = "{hooks.url}"
key_file = "hook.key"
attempts = 1

[[audit.sinks]]
type = "http"
name = "splunk"
url = "{collector.url}"
token_file = "hec.token"

[alerts]
url_file = "alerts.url"
key_file = "hook.key"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "ops"
role = "admin"
token_file = "api.token"
""")
            env = _env(root)
            cli = subprocess.run(
                [sys.executable, "-c", "from rotator.cli import main; main()", "rotate", "svc",
                 "-c", str(s.config)], capture_output=True, env=env, cwd=TESTS.parent,
                timeout=180, check=False)
            (root / "cli.out").write_bytes(cli.stdout)
            (root / "cli.err").write_bytes(cli.stderr)
            assert cli.returncode in (0, 1), cli.stderr[-2000:]
            s.remember()
            s.kc_current()
            s.kc_rotated()

            out, err = (root / "daemon.out").open("wb"), (root / "daemon.err").open("wb")
            code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
            proc = subprocess.Popen([sys.executable, "-c", code, "run", "-c", str(s.config)],
                                    stdout=out, stderr=err, env=env, cwd=TESTS.parent)
            try:
                log = root / "daemon.err"
                assert _wait(lambda: b"api_listening" in log.read_bytes()
                             or proc.poll() is not None)
                found = re.search(rb"api_listening.*?port=(\d+)", log.read_bytes())
                assert found, log.read_bytes()[-3000:]
                port = int(found.group(1))
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                  headers={"Authorization": f"Bearer {api_token}"}) as api:
                    answer = api.post("/v1/clients/svc/rotations")
                    assert answer.status_code in (202, 409), answer.text
                    location = answer.headers.get("Location")
                    if location:
                        assert _wait(lambda: api.get(location).json().get("state") in (
                            "promoted", "completed", "failed", "rolled_back"))
                    s.seen_secrets.add(api_token)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                out.close()
                err.close()
            s.remember()
            s.kc_current()
            s.kc_rotated()
            received = [r.body for r in hooks.requests + alerts.requests]
            received += [json.dumps(r.headers).encode() for r in hooks.requests]
        # what the scan covered: both rotations, both hooks, an alert, the HEC sink
        with contextlib.closing(sqlite3.connect(root / "state" / "journal.sqlite3")) as db:
            states = [row[0] for row in db.execute("SELECT state FROM rotations")]
        print("journal:", states, "cli:", cli.returncode, "hooks:", len(hooks.requests),
              "alerts:", len(alerts.requests), "hec:", len(collector.events))
        assert len(states) == 2 and all(st in ("promoted", "completed") for st in states)
        assert len({v for v in s.seen_secrets if v.startswith("**") is False}) >= 8
        assert collector.events, "the HEC sink delivered nothing"
        assert len(hooks.requests) >= 2 and (root / "hook.out").exists()
        assert alerts.requests, "no alert was sent"

        forms = _forms({v for v in s.seen_secrets if len(v) >= 8}, s.client_id)
        leaks, modes = [], []
        texts = {"hec bodies": b"\n".join(collector.bodies), "hook/alert bodies":
                 b"\n".join(received)}
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_dir():
                if stat.S_IMODE(path.stat().st_mode) != 0o700:
                    modes.append(f"{rel}/ {oct(stat.S_IMODE(path.stat().st_mode))}")
                continue
            if path.name not in INPUTS | OURS and stat.S_IMODE(path.stat().st_mode) != 0o600:
                modes.append(f"{rel} {oct(stat.S_IMODE(path.stat().st_mode))}")
            if path.name not in INPUTS | HOLDERS:
                texts[rel] = path.read_bytes()
        for name, data in texts.items():
            text = data.decode("utf-8", "replace")
            leaks += [f"{name}: a form of {short}" for form, short in forms.items()
                      if form in text]
        assert sorted(set(leaks)) == []
        assert modes == []


class TestPrivateParents:
    """ensure_private_dir makes every directory it creates 0700, parents included."""

    def test_parents(self, tmp_path: Path) -> None:
        from rotator._files import ensure_private_dir

        ensure_private_dir(tmp_path / "state" / "audit-spool")
        for part in (tmp_path / "state", tmp_path / "state" / "audit-spool"):
            assert stat.S_IMODE(part.stat().st_mode) == 0o700
