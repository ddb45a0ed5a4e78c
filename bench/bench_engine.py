"""Benchmark ``rotator rotate --all`` against a bare replay of the calls a rotation needs.

    python bench/bench_engine.py --clients 100 --rounds 5

Starts OpenBao and Keycloak with the test launchers (``tests/servers.py``; with
``ROTATOR_TEST_KEYCLOAK=<port>:<password>`` it attaches to a running Keycloak instead), makes
a realm whose secret-rotation policy covers 2 x N fresh clients, and stores each client's
secret in OpenBao. Half the clients are rotated by rotator (``rotate --all`` in this process,
through ``rotator.cli.run``, as a user runs it), the other half by the replay; the two sides
alternate round by round on the same servers. Between rounds, untimed, ``retire --all
--now`` ends rotator's grace periods so that the next ``rotate --all`` may start.

The bare replay is what an overlap rotation cannot do without, one client after another
with one ``httpx.Client`` for Keycloak and one ``requests.Session`` for OpenBao (the
libraries rotator itself uses), after one admin sign-in:

1. ``GET  /admin/realms/R/clients?clientId=C``     the client's id and its rotation policy
2. ``GET  /v1/secret/data/P``                      the stored secret and its version
3. ``POST /admin/realms/R/clients/ID/client-secret``  the new secret (Keycloak makes it)
4. ``POST /v1/secret/data/P.pending``  (cas=0)     stage it before anything depends on it
5. ``POST /realms/R/protocol/openid-connect/token``  prove it obtains a token
6. ``POST /v1/secret/data/P``  (cas=version)       make it current
7. ``POST /v1/secret/metadata/P``                  record which rotation wrote it
8. ``DELETE /v1/secret/metadata/P.pending``        remove the staged copy

Each is needed: without 1 the client cannot be addressed, without 2 the write of 6 cannot
be checked-and-set and nothing proves the store holds the client; 4 keeps an issued secret
from being lost if the process dies before 6; 5 is the verification; 7 is how a later
run (or ``status``) tells what rotator wrote; 8 leaves no second copy of the secret. The
replay keeps no journal and writes no audit log: the ratio is what rotator's safety (a
journal step and audit events per state, lock, fingerprints) and its code cost on top.

Printed per side: min and median wall time of a round, their ratio (target ≤ 1.25), and
the ratio of each round's two sides, which ran back to back, with its median,
HTTP requests per client counted at the transports (target ≤ 8; rotator's sign-ins
included), and CPU time of this process per rotation; for rotator also the audit log's
syncs, the journal's transactions (and how many of them were synced) and its SQL statements
per rotation. Not
a test: it prints, and never fails. ``--profile FILE`` writes a cProfile of rotator's (or,
with ``--profile-side bare``, the replay's) last round, timed by wall clock or, with
``--profile-clock cpu``, by this process's CPU time.
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import (
    ADMIN_CLIENT_ROLES,
    ROTATION_ATTRIBUTES,
    Keycloak,
    OpenBao,
    keycloak_for_session,
)

from rotator.audit import sinks
from rotator.cli import run
from rotator.journal.sqlite import SqliteJournal

RATIO_TARGET = 1.25
REQUESTS_TARGET = 8


class Counter:
    """Counts every HTTP request sent through httpx and requests while installed, and
    rotator's audit syncs, journal transactions (and how many went without a sync) and SQL
    statements."""

    def __init__(self) -> None:
        self.count = 0
        self.syncs = 0
        self.commits = 0
        self.unsynced = 0  # commits made inside SqliteJournal.unsynced(): no fsync
        self.statements = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        real_httpx = httpx.HTTPTransport.handle_request
        real_requests = requests.adapters.HTTPAdapter.send

        def counted_httpx(transport: httpx.HTTPTransport,
                          request: httpx.Request) -> httpx.Response:
            self.count += 1
            return real_httpx(transport, request)

        def counted_requests(adapter: requests.adapters.HTTPAdapter,
                             request: requests.PreparedRequest, *args: Any,
                             **kwargs: Any) -> requests.Response:
            self.count += 1
            return real_requests(adapter, request, *args, **kwargs)

        real_sync, real_tx = sinks._sync, SqliteJournal._tx
        real_init = SqliteJournal.__init__

        def traced_init(journal: SqliteJournal, *args: Any, **kwargs: Any) -> None:
            real_init(journal, *args, **kwargs)
            journal._db.set_trace_callback(counted_statement)

        def counted_statement(sql: str) -> None:
            self.statements += 1
            if sql == "PRAGMA synchronous=NORMAL":
                self.unsynced += 1

        def counted_sync(fd: int) -> None:
            self.syncs += 1
            real_sync(fd)

        def counted_tx(journal: SqliteJournal) -> Any:
            self.commits += 1
            return real_tx(journal)

        httpx.HTTPTransport.handle_request = counted_httpx  # type: ignore[method-assign]
        requests.adapters.HTTPAdapter.send = counted_requests  # type: ignore[method-assign]
        sinks._sync = counted_sync
        SqliteJournal._tx = counted_tx  # type: ignore[method-assign]
        SqliteJournal.__init__ = traced_init  # type: ignore[method-assign]
        try:
            yield
        finally:
            httpx.HTTPTransport.handle_request = real_httpx  # type: ignore[method-assign]
            requests.adapters.HTTPAdapter.send = real_requests  # type: ignore[method-assign]
            sinks._sync = real_sync
            SqliteJournal._tx = real_tx  # type: ignore[method-assign]
            SqliteJournal.__init__ = real_init  # type: ignore[method-assign]


class Bare:
    """The replay: the eight calls of an overlap rotation, nothing else."""

    def __init__(self, kc: Keycloak, realm: str, admin_id: str, admin_secret: str,
                 bao: OpenBao) -> None:
        self.realm = realm
        self.kc = httpx.Client(base_url=kc.url, timeout=10.0, trust_env=False)
        self.bao = requests.Session()
        self.bao.trust_env = False  # as rotator's own session: no environment scan per request
        self.bao.headers["X-Vault-Token"] = bao.root_token
        self.bao_url = bao.url
        self.admin = (admin_id, admin_secret)

    def close(self) -> None:
        self.kc.close()
        self.bao.close()

    def rotate_all(self, clients: list[tuple[str, str]]) -> None:
        token = self.kc.post(f"/realms/{self.realm}/protocol/openid-connect/token", data={
            "grant_type": "client_credentials", "client_id": self.admin[0],
            "client_secret": self.admin[1]}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        admin = f"/admin/realms/{self.realm}"
        kv = f"{self.bao_url}/v1/secret"
        for client_id, path in clients:
            rep = self.kc.get(f"{admin}/clients", params={"clientId": client_id},
                              headers=auth).json()[0]
            assert "client.secret.expiration.time" in rep["attributes"]
            meta = self.bao.get(f"{kv}/data/{path}").json()["data"]["metadata"]
            new = self.kc.post(f"{admin}/clients/{rep['id']}/client-secret",
                               headers=auth).json()["value"]
            creds = {"client_id": client_id, "client_secret": new}
            rid = f"r-bench-{secrets.token_hex(5)}"
            self.bao.post(f"{kv}/data/{path}.pending", json={
                "data": {**creds, "rotator_rotation_id": rid},
                "options": {"cas": 0}}).raise_for_status()
            self.kc.post(f"/realms/{self.realm}/protocol/openid-connect/token", data={
                "grant_type": "client_credentials", **creds}).raise_for_status()
            written = self.bao.post(f"{kv}/data/{path}", json={
                "data": creds, "options": {"cas": meta["version"]}})
            version = written.json()["data"]["version"]
            self.bao.post(f"{kv}/metadata/{path}", json={"custom_metadata": {
                "rotator_rotation_id": rid, "rotator_current_version": str(version),
                "rotator_previous_version": str(meta["version"])}}).raise_for_status()
            self.bao.delete(f"{kv}/metadata/{path}.pending").raise_for_status()


def _config(root: Path, kc: Keycloak, realm: str, bao: OpenBao,
            clients: list[tuple[str, str]]) -> Path:
    for name, value in (("audit.key", secrets.token_urlsafe(32)), ("bao.token", bao.root_token)):
        (root / name).write_text(value)
        (root / name).chmod(0o600)
    lines = [f"""
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.bao]
type = "vault"
url = "{bao.url}"
token_file = "bao.token"

[idps.kc]
type = "keycloak"
url = "{kc.url}"
realm = "{realm}"
admin_client_id = "rotator-admin"
admin_client_secret_file = "admin.secret"
"""]
    for i, (client_id, path) in enumerate(clients):
        lines.append(f"""
[clients.c{i}]
idp = "kc"
client_id = "{client_id}"
grace_period = "1d"
stores = [{{store = "bao", path = "{path}"}}]
""")
    config = root / "rotator.toml"
    config.write_text("".join(lines))
    return config


def _cli(config: Path, *argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run([*argv, "--config", str(config)], out, err)
    if code != 0:
        raise SystemExit(f"rotator {' '.join(argv)} exited {code}:\n{out.getvalue()}"
                         f"{err.getvalue()}")


Measured = tuple[float, float, int, int, int, int, int]


def _measure(action: Callable[[], None], counter: Counter) -> Measured:
    """Wall seconds, CPU seconds of this process, HTTP requests, audit syncs, journal
    transactions, journal SQL statements, journal transactions committed without a sync."""
    counter.count = counter.syncs = counter.commits = counter.statements = 0
    counter.unsynced = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with counter.installed():
        action()
    return (time.perf_counter() - wall, time.process_time() - cpu, counter.count,
            counter.syncs, counter.commits, counter.statements, counter.unsynced)


def _profiled(action: Callable[[], None], file: Path, clock: str) -> Callable[[], None]:
    def run_profiled() -> None:
        import cProfile

        profile = (cProfile.Profile(time.process_time) if clock == "cpu"
                   else cProfile.Profile())
        profile.runcall(action)
        profile.dump_stats(file)

    return run_profiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="N clients per side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also write a cProfile of rotator's last round to FILE "
                             "(its wall time is then not comparable)")
    parser.add_argument("--profile-side", choices=("rotator", "bare"), default="rotator",
                        help="which side's last round --profile profiles")
    parser.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                        help="what the profile times: wall time (waits included) or this "
                             "process's CPU time")
    args = parser.parse_args()
    n = args.clients
    with OpenBao() as bao, keycloak_for_session() as kc, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        realm = f"rotator-bench-{secrets.token_hex(4)}"
        kc.create_realm(realm)
        admin_secret = kc.create_admin_client(realm, "rotator-admin", roles=ADMIN_CLIENT_ROLES)
        (root / "admin.secret").write_text(admin_secret)
        (root / "admin.secret").chmod(0o600)
        kc.enable_secret_rotation(realm, rotated_expiration=3600, expiration=86400 * 30,
                                  remaining=600, client_ids=[])
        sides: dict[str, list[tuple[str, str]]] = {"rotator": [], "bare": []}
        seed = requests.Session()
        seed.headers["X-Vault-Token"] = bao.root_token
        print(f"creating 2 x {n} Keycloak clients ...", flush=True)
        for side, clients in sides.items():
            for i in range(n):
                client_id = f"{side}-{i}-{secrets.token_hex(3)}"
                _, secret = kc.create_client(realm, client_id,
                                             attributes=dict(ROTATION_ATTRIBUTES))
                path = f"bench/{client_id}"
                seed.post(f"{bao.url}/v1/secret/data/{path}", json={"data": {
                    "client_id": client_id, "client_secret": secret}}).raise_for_status()
                clients.append((client_id, path))
        seed.close()
        config = _config(root, kc, realm, bao, sides["rotator"])
        bare = Bare(kc, realm, "rotator-admin", admin_secret, bao)
        counter = Counter()
        results: dict[str, list[Measured]] = {"rotator": [], "bare": []}
        try:
            for round_ in range(args.rounds):
                if round_:
                    _cli(config, "retire", "--all", "--now")  # untimed
                order = ["rotator", "bare"] if round_ % 2 == 0 else ["bare", "rotator"]
                for side in order:
                    action: Callable[[], None] = (
                        (lambda: _cli(config, "rotate", "--all")) if side == "rotator"
                        else (lambda: bare.rotate_all(sides["bare"])))
                    if side == args.profile_side and args.profile \
                            and round_ == args.rounds - 1:
                        action = _profiled(action, args.profile, args.profile_clock)
                    results[side].append(_measure(action, counter))
                print(f"round {round_ + 1}: rotator {results['rotator'][-1][0]:.2f} s, "
                      f"bare {results['bare'][-1][0]:.2f} s", flush=True)
        finally:
            bare.close()
        _report(n, results)


def _report(n: int, results: dict[str, list[Measured]]) -> None:
    walls = {side: [r[0] for r in rs] for side, rs in results.items()}
    print(f"\nrotate --all over N = {n} overlap clients (Keycloak with the secret-rotation "
          f"policy -> OpenBao), {len(walls['bare'])} rounds")
    print(f"{'':10}{'min s':>9}{'median s':>10}{'req/client':>12}{'CPU ms/rotation':>17}")
    for side, rs in results.items():
        reqs = statistics.median(r[2] for r in rs) / n
        cpu = statistics.median(r[1] for r in rs) / n * 1000
        print(f"{side:10}{min(walls[side]):9.2f}{statistics.median(walls[side]):10.2f}"
              f"{reqs:12.2f}{cpu:17.2f}")
    for what, pick in (("min", min), ("median", statistics.median)):
        ratio = pick(walls["rotator"]) / pick(walls["bare"])
        print(f"ratio rotator/bare ({what}): {ratio:.2f}  (target <= {RATIO_TARGET})")
    # Each round's two sides ran back to back: their ratio leaves out how the servers drift
    # from round to round (Keycloak's JIT and collections move a round by 20 % here).
    paired = [r / b for r, b in zip(walls["rotator"], walls["bare"], strict=True)]
    print(f"ratio rotator/bare per round: {' '.join(f'{p:.2f}' for p in paired)}; median "
          f"{statistics.median(paired):.2f}  (target <= {RATIO_TARGET})")
    reqs = statistics.median(r[2] for r in results["rotator"]) / n
    print(f"requests per client, rotator: {reqs:.2f}  (target <= {REQUESTS_TARGET}, "
          "sign-ins included)")
    syncs = statistics.median(r[3] for r in results["rotator"]) / n
    commits = statistics.median(r[4] for r in results["rotator"]) / n
    statements = statistics.median(r[5] for r in results["rotator"]) / n
    unsynced = statistics.median(r[6] for r in results["rotator"]) / n
    print(f"per rotation, rotator: {syncs:.2f} audit syncs, {commits:.2f} journal "
          f"transactions ({commits - unsynced:.2f} synced: an overlap rotation's CREATED is "
          f"synced with VERIFIED, its PROMOTED with the next rotation's beginning), "
          f"{statements:.2f} journal SQL statements (BEGIN and COMMIT included; opening the "
          "journal too)")


if __name__ == "__main__":
    main()
