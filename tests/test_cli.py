"""Tests for the command line (rotator.cli) that need no server: nothing listens at the IdP
or store addresses used here, which is how an unreachable system looks."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

import rotator
from rotator.cli import open_engine, run
from rotator.config import load_config
from rotator.engine import utcnow
from rotator.journal import Journal, State

AUDIT_VAR = "ROTATOR_CLI_TEST_AUDIT_KEY"
IDP_VAR = "ROTATOR_CLI_TEST_IDP_SECRET"
VAULT_VAR = "ROTATOR_CLI_TEST_VAULT_TOKEN"


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    """A configuration with two env-store clients, an unreachable IdP, and its secrets."""

    dir: Path
    secret: str
    env: dict[str, str]

    @property
    def config(self) -> Path:
        return self.dir / "rotator.toml"

    def write(self, *, rotator: str = "", audit: str = 'file = "audit.jsonl"',
              extra: str = "", app_stores: str = '[{store = "local", prefix = "APP"}]') -> None:
        self.config.write_text(f"""
[rotator]
{rotator}

[audit]
key_env = "{AUDIT_VAR}"
{audit}

[stores.local]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "http://127.0.0.1:{closed_port()}"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "{IDP_VAR}"
{extra}

[clients.app]
idp = "kc"
client_id = "app-client"
grace_period = "1h"
stores = {app_stores}

[clients.other]
idp = "kc"
client_id = "other-client"
stores = [{{store = "local", prefix = "OTHER"}}]
""")

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run([*argv, "-c", str(self.config)], out, err)
        assert self.secret not in out.getvalue() + err.getvalue()
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    env = {AUDIT_VAR: secrets.token_urlsafe(32), IDP_VAR: secrets.token_urlsafe(32),
           VAULT_VAR: secrets.token_urlsafe(16)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    secret = secrets.token_urlsafe(32)
    creds = tmp_path / "creds.env"
    creds.write_text(f"APP_CLIENT_ID=app-client\nAPP_CLIENT_SECRET={secret}\n"
                     f"OTHER_CLIENT_ID=other-client\nOTHER_CLIENT_SECRET={secret[::-1]}\n")
    creds.chmod(0o600)
    s = Setup(tmp_path, secret, env)
    s.write()
    yield s
    structlog.reset_defaults()


class TestVersionAndHelp:
    """--version prints the version; every option of verify has help text."""

    def test_version(self, setup: Setup) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert run(["--version"], out, err) == 0
        assert out.getvalue() == f"rotator {rotator.__version__}\n"

    def test_verify_stage_has_help(self) -> None:
        out = io.StringIO()
        assert run(["verify", "--help"], out, io.StringIO()) == 0
        assert "which stored secret to try" in out.getvalue()


class TestStatusSelection:
    """status without a client name reports every client."""

    def test_no_name_means_all(self, setup: Setup) -> None:
        code, out, err = setup.cli("status", "--json")
        assert code != 2, err
        assert [c["client"] for c in json.loads(out)["clients"]] == ["app", "other"]


class TestStatusNeedsNoAdminSecrets:
    """status runs without the audit key and without the IdP's admin secret."""

    def test_without_audit_key_and_idp_secret(self, setup: Setup,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(AUDIT_VAR)
        monkeypatch.delenv(IDP_VAR)
        code, out, err = setup.cli("status", "app", "--json")
        assert "configuration problem" not in err
        assert code == 1  # the IdP is unreachable here
        assert json.loads(out)["clients"][0]["stores"]["local:APP"]["has_current"] is True
        assert not (setup.dir / "audit.jsonl").exists()
        # The other commands still need them.
        code, _, err = setup.cli("verify", "app")
        assert code == 2 and f"audit.key_env: environment variable {AUDIT_VAR}" in err


class TestStatusExitCode:
    """status exits 1 when any client is in an error state and reports the IdP's reachability."""

    def test_unreachable_idp(self, setup: Setup) -> None:
        code, out, _ = setup.cli("status", "--json")
        assert code == 1
        for row in json.loads(out)["clients"]:
            assert row["state"] == "idp_error" and row["error"] is True
            assert row["idp_status"]["reachable"] is False
            assert "token endpoint http://127.0.0.1:" in row["idp_status"]["error"]
        code, out, _ = setup.cli("status", "app")
        assert code == 1 and "idp kc: error: token endpoint" in out

    def test_unreachable_store(self, setup: Setup) -> None:
        setup.write(extra=f"""
[stores.bao]
type = "vault"
url = "http://127.0.0.1:{closed_port()}"
token_env = "{VAULT_VAR}"
timeout = "2s"
""", app_stores='[{store = "bao", path = "apps/app"}]')
        code, out, _ = setup.cli("status", "app", "--json")
        assert code == 1
        row = json.loads(out)["clients"][0]
        assert row["state"] == "store_error"
        assert "error" in row["stores"]["bao:apps/app"]


class TestUnopenableFiles:
    """A state directory or audit file that cannot be opened exits 2 naming the setting."""

    def test_state_dir_is_a_file(self, setup: Setup) -> None:
        (setup.dir / "state-file").write_text("")
        setup.write(rotator='state_dir = "state-file"')
        for argv in (["verify", "app"], ["status"], ["rotate", "app"]):
            code, out, err = setup.cli(*argv)
            assert code == 2, (argv, out, err)
            assert f"rotator.state_dir: {setup.dir / 'state-file'} is not a directory" in err
            assert "Errno" not in err and "unexpected" not in err

    def test_state_dir_below_a_file(self, setup: Setup) -> None:
        (setup.dir / "state-file").write_text("")
        setup.write(rotator='state_dir = "state-file/state"')
        code, _, err = setup.cli("verify", "app")
        assert code == 2
        assert f"rotator.state_dir: {setup.dir / 'state-file'} is not a directory" in err

    def test_audit_file_cannot_be_opened(self, setup: Setup) -> None:
        (setup.dir / "audit-dir").mkdir()  # root may open any file; nobody writes a directory
        setup.write(audit='file = "audit-dir"')
        code, _, err = setup.cli("verify", "app")
        assert code == 2
        assert f"audit.file: {setup.dir / 'audit-dir'} is not a regular file" in err
        assert "unexpected" not in err


class TestJsonWithAuditOnStdout:
    """With [audit] stdout = true, --json output is still one JSON document; audit lines
    go to stderr then, and to stdout otherwise."""

    def test_json_parses(self, setup: Setup) -> None:
        setup.write(audit="stdout = true")
        code, out, err = setup.cli("verify", "app", "--json")
        assert code == 1
        assert json.loads(out)["results"][0]["client"] == "app"
        assert '"action":"credential_verified"' in err

    def test_without_json_audit_lines_are_on_stdout(self, setup: Setup) -> None:
        setup.write(audit="stdout = true")
        code, out, _ = setup.cli("verify", "app")
        assert code == 1
        assert '"action":"credential_verified"' in out


class TestVerboseFailures:
    """-v prints the debug log with the traceback for an ordinary failure, secrets redacted."""

    @pytest.mark.parametrize("argv", [["verify", "app"], ["rotate", "app"]])
    def test_traceback_in_debug_log(self, setup: Setup, argv: list[str]) -> None:
        code, _, err = setup.cli(*argv, "-v")
        assert code == 1
        assert "Traceback" in err and "Connection refused" in err
        assert "client_outcome" in err
        code, _, err = setup.cli(*argv)
        assert code == 1 and "Traceback" not in err


class TestBrokenPipe:
    """A closed output pipe ends the command quietly (exit 141, nothing on stderr)."""

    def test_status_into_a_closed_pipe(self, setup: Setup) -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run(
                [str(Path(sys.executable).parent / "rotator"), "status", "-c",
                 str(setup.config)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                timeout=60, check=False)
        finally:
            os.close(write_end)
        assert (proc.returncode, proc.stderr) == (141, "")


def _journal_rotation(setup: Setup, *, started_ago: float, state: State,
                      retire_in: float | None = None) -> str:
    """Record a rotation of ``app`` as another process would have."""
    journal = Journal(load_config(setup.config).state_dir)
    started = utcnow() - timedelta(seconds=started_ago)
    rid = f"r-test-{secrets.token_hex(4)}"
    journal.begin(rid, "app", "overlap", "other-process", None, started)
    fields = {} if retire_in is None else {
        "retire_after": (utcnow() + timedelta(seconds=retire_in)).isoformat()}
    journal.advance(rid, state, started, expected=State.STARTED, **fields)
    journal.close()
    return rid


class TestGracePeriodWithAll:
    """rotate --all does not fail a client whose grace period is still running; naming it does."""

    def test_all_exits_0(self, setup: Setup) -> None:
        _journal_rotation(setup, started_ago=60, state=State.PROMOTED, retire_in=3600)
        setup.write(extra="", app_stores='[{store = "local", prefix = "APP"}]')
        code, out, _ = setup.cli("rotate", "--all", "--json")
        results = {r["client"]: r for r in json.loads(out)["results"]}
        assert results["app"]["action"] == "waiting" and results["app"]["ok"] is True
        assert "grace period" in results["app"]["message"]
        assert results["other"]["ok"] is False  # the IdP is unreachable: a real failure
        code, out, _ = setup.cli("rotate", "app")
        assert code == 1 and "waiting" in out


class TestTriggerAnsweredByLaterRotation:
    """A rotation of the client that began after the request answers it, unless forced."""

    def test_later_rotation_answers(self, setup: Setup) -> None:
        requested = utcnow() - timedelta(seconds=30)
        rid = _journal_rotation(setup, started_ago=10, state=State.COMPLETED)
        with open_engine(load_config(setup.config)) as engine:
            outcome = engine.rotate("app", requested_at=requested)
            assert (outcome.ok, outcome.action, outcome.rotation_id) == (
                True, "rotated_by_other", rid)
            assert outcome.message.startswith("rotated by another process at ")
            forced = engine.rotate("app", requested_at=requested, force=True)
            assert forced.action == "failed"  # it tried: the IdP is unreachable here
            earlier = engine.rotate("app", requested_at=utcnow())
            assert earlier.action == "failed"  # the journal's rotation predates this request

    def test_later_failed_rotation_is_reported(self, setup: Setup) -> None:
        requested = utcnow() - timedelta(seconds=30)
        _journal_rotation(setup, started_ago=10, state=State.ROLLED_BACK)
        with open_engine(load_config(setup.config)) as engine:
            outcome = engine.rotate("app", requested_at=requested)
        assert not outcome.ok and "by another process after this request ended rolled_back" \
            in outcome.message
