"""Several real ``rotator run`` processes on one real PostgreSQL journal, rotating clients of
a real Ory Hydra into per-client env files (and OpenBao).

Hydra rather than the shared Keycloak: it is one local Go binary (cached), so a test that
makes hundreds of clients and rotations loads neither the Keycloak every helper shares nor
the two cores; and it is the harder case for takeovers, a single-secret IdP where rotator
chooses the value (the STAGED path: PENDING in the stores before Hydra hears of it).

The daemons run ``tests/ha_runner.py``: ``rotator run`` with an optional kill point
(``ROTATOR_TEST_HA_POINT=kill:STATE`` or ``stop:STATE``: SIGKILL or SIGSTOP itself just
before its job records STATE in the journal). Nothing waits on a clock for an assertion:
the tests poll the journal until a condition holds, then count.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import pytest
from servers import Hydra, OpenBao

from providers.stores.env import parse_env

pytestmark = [pytest.mark.server, pytest.mark.slow]
TESTS = Path(__file__).parent
URL_VAR = "ROTATOR_JOURNAL_URL"
#: Clients due at once in the three-daemon test (``ROTATOR_TEST_HA_CLIENTS`` overrides).
CLIENTS = int(os.environ.get("ROTATOR_TEST_HA_CLIENTS", "200"))


def wait_for(predicate: Callable[[], bool], timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s: {what}")


@dataclass
class Fleet:
    """Clients of one Hydra, their env files, a journal schema, and the daemons' configs."""

    hydra: Hydra
    root: Path
    url: str
    bao: OpenBao | None = None
    clients: dict[str, str] = field(default_factory=dict)  # name -> Hydra client id
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, hydra: Hydra, root: Path, url: str, count: int, *,
               bao: OpenBao | None = None) -> Fleet:
        fleet = cls(hydra, root, url, bao)
        tables = [f'''
[idps.hydra]
type = "hydra"
admin_url = "{hydra.admin_url}"
public_url = "{hydra.url}"
timeout = "30s"
''']
        if bao is not None:
            (root / "bao.token").write_text(bao.root_token)
            (root / "bao.token").chmod(0o600)
            tables.append(f'\n[stores.bao]\ntype = "vault"\nurl = "{bao.url}"\n'
                          f'token_file = "{root / "bao.token"}"\ntimeout = "10s"\n')
        for i in range(count):
            name = f"c{i:03}"
            old = secrets.token_urlsafe(24)
            client_id = hydra.create_client(old)
            fleet.clients[name] = client_id
            env = root / f"{name}.env"
            env.write_text(f"SVC_CLIENT_ID={client_id}\nSVC_CLIENT_SECRET={old}\n")
            env.chmod(0o600)
            stores = f'{{store = "e{name}", prefix = "SVC"}}'
            if bao is not None:
                # The session's OpenBao outlives this journal: start the path afresh (its
                # fencing record belongs to another journal's leases).
                for path in (f"ha/{name}", f"ha/{name}.pending"):
                    fleet.vault().secrets.kv.v2.delete_metadata_and_all_versions(
                        path=path, mount_point="secret")
                fleet.vault().secrets.kv.v2.create_or_update_secret(
                    path=f"ha/{name}", secret={"client_id": client_id, "client_secret": old},
                    mount_point="secret")
                # the env file first: its facts carry no promotion time, so the client is due
                stores += f', {{store = "bao", path = "ha/{name}"}}'
            tables.append(f'\n[stores.e{name}]\ntype = "env"\nfile = "{env}"\n'
                          f'read_environ = false\n'
                          f'\n[clients.{name}]\nidp = "hydra"\nclient_id = "{client_id}"\n'
                          f'rotate_every = "30d"\ngrace_period = "0s"\nverify_attempts = 5\n'
                          f'stores = [{stores}]\n')
        fleet.tables = "".join(tables)
        return fleet

    tables: str = ""

    def vault(self) -> hvac.Client:
        assert self.bao is not None
        return hvac.Client(url=self.bao.url, token=self.bao.root_token)

    def config(self, name: str, *, lease: str, workers: int) -> Path:
        home = self.root / name
        home.mkdir(exist_ok=True)
        # One audit key for all: a rotation's fingerprints are keyed by it, and a daemon
        # refuses to finish a rotation begun under another key (docs/ha.md).
        key = self.root / "audit.key"
        if not key.exists():
            key.write_text(secrets.token_urlsafe(32))
            key.chmod(0o600)
        path = home / "rotator.toml"
        path.write_text(f"""
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "{key}"

[daemon]
workers = {workers}
idp_concurrency = {workers}
lease = "{lease}"
catch_up = "0s"

[journal]
url_env = "{URL_VAR}"
""" + self.tables)
        return path

    def start(self, name: str, *, lease: str = "3s", workers: int = 4,
              point: str | None = None, count: Path | None = None
              ) -> subprocess.Popen[bytes]:
        path = self.config(name, lease=lease, workers=workers)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_", "ROTATOR_"))}
        env[URL_VAR] = self.url
        if point is not None:
            env["ROTATOR_TEST_HA_POINT"] = point
        if count is not None:
            env["ROTATOR_TEST_HA_COUNT"] = str(count)
        with (self.root / name / "daemon.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, str(TESTS / "ha_runner.py"), "run", "-c",
                                     str(path)], stdout=out, stderr=out, env=env,
                                    cwd=TESTS.parent)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str) -> str:
        return (self.root / name / "daemon.log").read_text(errors="replace")

    # -- what the journal, the stores and Hydra hold -----------------------------------------

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            try:
                return list(conn.execute(query, args).fetchall())
            except psycopg.errors.UndefinedTable:  # no daemon has migrated the schema yet
                return []

    def rotations(self) -> dict[str, list[str]]:
        """Each client's rotations' states, oldest first."""
        found: dict[str, list[str]] = {}
        for client, state in self.sql("SELECT client, state FROM rotations ORDER BY seq"):
            found.setdefault(client, []).append(state)
        return found

    def steps(self, client: str) -> list[str]:
        return [s for (s,) in self.sql(
            "SELECT s.state FROM steps s JOIN rotations r ON r.id = s.rotation_id "
            "WHERE r.client = %s ORDER BY s.seq", client)]

    def settled(self, names: list[str]) -> bool:
        dead = [p.args for p in self.procs if p.poll() not in (None, -signal.SIGKILL)]
        assert not dead, f"a daemon exited: {dead}"
        rows = self.rotations()
        return all(rows.get(n) and rows[n][-1] in ("completed", "rolled_back") for n in names)

    def lease_expired(self, client: str) -> bool:
        rows = self.sql("SELECT expires_at <= clock_timestamp() FROM leases WHERE client = %s",
                        client)
        return not rows or bool(rows[0][0])

    def env_secret(self, name: str) -> str:
        values = parse_env((self.root / f"{name}.env").read_text())
        assert "SVC_CLIENT_SECRET_PENDING" not in values, values.keys()
        return values["SVC_CLIENT_SECRET"]

    def works(self, name: str, secret: str) -> bool:
        return self.hydra.token_status(self.clients[name], secret) == 200

    def created(self) -> dict[str, int]:
        """``secret_created`` audit events per client, over every daemon's audit log: the
        secrets each client's IdP was given."""
        counts: dict[str, int] = {}
        for audit in self.root.glob("*/audit.jsonl"):
            for line in audit.read_text().splitlines():
                event = json.loads(line)  # ECS: event.action, rotator.client
                if event["event"]["action"] == "secret_created":
                    client = str(event["rotator"]["client"])
                    counts[client] = counts.get(client, 0) + 1
        return counts

    def rotated_by(self) -> dict[str, int]:
        """How many rotations each daemon began and drove to their end (its log)."""
        done: dict[str, int] = {}
        for home in sorted(p for p in self.root.iterdir() if (p / "daemon.log").exists()):
            done[home.name] = self.log(home.name).count("action=rotated ")
        return done


@pytest.fixture
def url(postgres_server: Any) -> str:
    return str(postgres_server.create_schema(f"hap_{secrets.token_hex(6)}"))


@pytest.fixture
def fleet_factory(hydra: Hydra, tmp_path: Path, url: str) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(count: int, **kwargs: Any) -> Fleet:
        fleet = Fleet.create(hydra, tmp_path, url, count, **kwargs)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop_all()


class TestThreeDaemonsManyClients:
    """Three daemons that find every client due at once rotate each exactly once, and share
    the work."""

    def test_each_rotated_once(self, fleet_factory: Callable[..., Fleet]) -> None:
        fleet = fleet_factory(CLIENTS)
        names = list(fleet.clients)
        old = {n: fleet.env_secret(n) for n in names}
        for daemon in ("a", "b", "c"):
            fleet.start(daemon, lease="10s")
        wait_for(lambda: fleet.settled(names), timeout=900,
                 what=f"{CLIENTS} clients rotated")
        fleet.stop_all()
        rows = fleet.rotations()
        assert {n: rows[n] for n in names} == {n: ["completed"] for n in names}
        assert fleet.created() == dict.fromkeys(names, 1)  # one secret given to Hydra each
        for name in names:
            new = fleet.env_secret(name)
            assert new != old[name]
        sample = names[:: max(1, len(names) // 20)]
        assert all(fleet.works(n, fleet.env_secret(n)) for n in sample)
        assert not any(fleet.works(n, old[n]) for n in sample)
        shares = fleet.rotated_by()
        assert sum(shares.values()) == len(names), shares
        assert sum(1 for v in shares.values() if v > 0) >= 2, shares  # work shared


#: Where a daemon dies: just before its job records each state of Hydra's (STAGED) path.
KILL_POINTS = ["started", "staged", "created", "promoted", "completed"]


class TestKillTheHolder:
    """A daemon killed (SIGKILL) while holding a client, at any step boundary: once its lease
    expires another daemon finishes or rolls back the rotation, the stored secret obtains a
    token, and no secret Hydra accepts is lost."""

    @pytest.mark.parametrize("point", KILL_POINTS)
    def test_another_daemon_finishes(self, fleet_factory: Callable[..., Fleet],
                                     point: str) -> None:
        fleet = fleet_factory(1)
        [name] = fleet.clients
        old = fleet.env_secret(name)
        a = fleet.start("a", lease="2s", point=f"kill:{point}")
        assert a.wait(timeout=300) == -signal.SIGKILL, fleet.log("a")[-3000:]
        wait_for(lambda: fleet.lease_expired(name), what="A's lease expired")
        fleet.start("b", lease="2s")
        wait_for(lambda: fleet.settled([name]), timeout=120, what="B finished the rotation")
        fleet.stop_all()
        states = fleet.rotations()[name]
        assert states[-1] in ("completed", "rolled_back")
        assert len(states) <= 2, states  # A's, finished by B (and at most one of B's own)
        stored = fleet.env_secret(name)
        assert fleet.works(name, stored)  # the one secret Hydra accepts is the stored one
        assert stored != old or states[-1] == "rolled_back" or point == "started"
        assert "leased to" not in fleet.log("b")


class TestStoppedHolder:
    """A daemon frozen (SIGSTOP) past its lease and taken over: once woken (SIGCONT) its
    next journal write, or its next store write (frozen between a journal step and the store
    write that follows it), is refused by fencing, and nothing it does reaches a store or
    Hydra."""

    @pytest.mark.parametrize("point", ["staged", "created", "promoted",
                                       "store.stage_pending", "store.promote"])
    def test_woken_daemon_is_fenced(self, fleet_factory: Callable[..., Fleet],
                                    bao_server: OpenBao, point: str) -> None:
        fleet = fleet_factory(1, bao=bao_server)
        [name] = fleet.clients
        a = fleet.start("a", lease="2s", point=f"stop:{point}")
        wait_for(lambda: f"stop before {point}" in fleet.log("a"), timeout=60, what="A froze")
        wait_for(lambda: fleet.lease_expired(name), what="A's lease expired")
        fleet.start("b", lease="2s")
        wait_for(lambda: fleet.settled([name]), timeout=120, what="B finished the rotation")
        time.sleep(0.5)
        fleet.procs[1].send_signal(signal.SIGTERM)
        fleet.procs[1].wait(timeout=60)
        env_before = (fleet.root / f"{name}.env").read_bytes()
        versions_before = self.versions(fleet, name)
        stored = fleet.env_secret(name)
        assert fleet.works(name, stored)
        steps_before = fleet.steps(name)
        audit_before = self.store_events(fleet)
        a.send_signal(signal.SIGCONT)
        wait_for(lambda: "job_finished" in fleet.log("a"), what="A's job ended")
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=60)
        [finished] = [line for line in fleet.log("a").splitlines() if "job_finished" in line]
        assert "ok=False" in finished and "action=rotated" not in finished, finished
        assert "lease_lost" in fleet.log("a")  # its renewal, then its write, were refused
        assert fleet.steps(name) == steps_before
        assert (fleet.root / f"{name}.env").read_bytes() == env_before
        assert self.versions(fleet, name) == versions_before
        assert self.store_events(fleet) == audit_before  # A wrote no store after waking
        assert fleet.works(name, stored)  # Hydra still holds B's secret

    @staticmethod
    def versions(fleet: Fleet, name: str) -> tuple[object, ...]:
        """The OpenBao path's and its pending sibling's versions and custom metadata."""
        found: list[object] = []
        for path in (f"ha/{name}", f"ha/{name}.pending"):
            try:
                meta = fleet.vault().secrets.kv.v2.read_secret_metadata(
                    path=path, mount_point="secret")["data"]
            except hvac.exceptions.InvalidPath:
                found.append(None)
                continue
            found.append((meta["current_version"], meta["custom_metadata"]))
        return tuple(found)

    @staticmethod
    def store_events(fleet: Fleet) -> list[str]:
        """The store writes daemon A's audit log records (staged, promoted)."""
        audit = fleet.root / "a" / "audit.jsonl"
        return [event for line in audit.read_text().splitlines()
                if (event := json.loads(line)["event"]["action"]) in (
                    "secret_staged", "secret_promoted")]
