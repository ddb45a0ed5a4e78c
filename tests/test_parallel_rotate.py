"""``rotate --parallel N``: many clients at once, with the guarantees of one at a time.

Worker threads share one engine: its adapters (started once), Keycloak's admin sign-in, the
token-endpoint httpx clients, the audit log and the journal. These tests count, never time.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
from fleet_env import Fleet
from rotation_env import KeycloakRealm
from servers import OpenBao
from test_request_count import CountingTransport, Requests

from providers.idps.keycloak import KeycloakIdp
from rotator.audit import flatten
from rotator.cli import _each_parallel, run
from rotator.config import load_config
from rotator.engine import Adapters, Outcome
from rotator.errors import IdpNotFound


class TestParallelLimits:
    """At most N clients run at once and at most the per-IdP limit against one IdP; the
    outcomes come back in the given order and a failing client stops no other."""

    def test_limits_order_and_isolation(self) -> None:
        names = [f"a{i}" for i in range(6)] + ["b0", "b1"]
        group = {n: n[0] for n in names}
        lock = threading.Condition()
        running: Counter[str] = Counter()
        peak: Counter[str] = Counter()
        total_peak = [0]
        full = threading.Event()

        def run(name: str) -> Outcome:
            with lock:
                running[group[name]] += 1
                peak[group[name]] = max(peak[group[name]], running[group[name]])
                total_peak[0] = max(total_peak[0], sum(running.values()))
                if sum(running.values()) == 4:
                    full.set()
            # Hold the first clients until four run at once (a bound, not a measurement:
            # a serial run would stop at one and fail the count below).
            full.wait(timeout=10)
            with lock:
                running[group[name]] -= 1
            if name == "a2":
                raise IdpNotFound("no client a2")
            return Outcome(name, True, "rotated", "ok")

        outcomes = _each_parallel(names, run, workers=4, group=group.__getitem__, per_group=2)
        assert [o.client for o in outcomes] == names
        assert [o.ok for o in outcomes] == [n != "a2" for n in names]
        assert peak == Counter({"a": 2, "b": 2})
        assert total_peak[0] == 4

    def test_closed_pipe_is_raised_after_the_running_ones_finish(self) -> None:
        finished: list[str] = []

        def run(name: str) -> Outcome:
            if name == "x1":
                raise BrokenPipeError
            finished.append(name)
            return Outcome(name, True, "rotated", "ok")

        with pytest.raises(BrokenPipeError):
            _each_parallel(["x0", "x1", "x2", "x3"], run, workers=1, group=str, per_group=1)
        assert finished == ["x0"]


class _SlowStore:
    """A store whose start is counted and lets other threads in while it runs."""

    starts = 0

    def start(self) -> None:
        type(self).starts += 1
        threading.Event().wait(0.05)  # widen the window a racing second start would use

    def close(self) -> None:
        pass


class TestSharedAdapters:
    """Threads sharing one Adapters start each store once and all get that one store."""

    def test_one_start_for_many_threads(self) -> None:
        gate = threading.Barrier(12)
        store = _SlowStore()
        adapters = Adapters(cast(Any, None), stores={"s": cast(Any, store)})
        got: list[object] = []

        def use() -> None:
            gate.wait()
            got.append(adapters.store("s"))

        threads = [threading.Thread(target=use) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _SlowStore.starts == 1
        assert len(got) == 12 and all(g is store for g in got)


@pytest.mark.server
class TestSharedKeycloakSignIn:
    """Threads sharing one Keycloak adapter sign in once between them."""

    def test_one_sign_in(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                         tmp_path: Path) -> None:
        fleet = Fleet.create(kc_realm, bao_server, tmp_path, 3)
        seen = Requests()
        seen.counting = True
        config = load_config(fleet.config)
        idp = KeycloakIdp("kc", config.idps["kc"].settings,
                          transport=CountingTransport(seen, "kc"))
        idp.start()
        gate = threading.Barrier(8)
        errors: list[BaseException] = []

        def ask(i: int) -> None:
            gate.wait()
            try:
                idp.capabilities(fleet.client_ids[i % 3])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        idp.close()
        assert errors == []
        sign_ins = [r for r in seen.seen if r.endswith("/openid-connect/token")]
        assert len(sign_ins) == 1, seen.report()


@pytest.mark.server
class TestParallelRotateAll:
    """rotate --all --parallel leaves every client rotated, whole and in configured order,
    and one client's failure stops no other."""

    def test_many_clients(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                          tmp_path: Path) -> None:
        fleet = Fleet.create(kc_realm, bao_server, tmp_path, 10, missing=[3])
        old = [fleet.stored(i) for i in range(10)]
        result = fleet.cli("rotate", "--all", "--parallel", "4", "--json")
        assert result.code == 1, result.out + result.err
        answer = json.loads(result.out)
        assert [r["client"] for r in answer["results"]] == fleet.names
        assert [r["ok"] for r in answer["results"]] == [i != 3 for i in range(10)]
        assert answer["failed"] == 1
        for i in range(10):
            if i == 3:
                assert fleet.stored(3) == old[3]
                continue
            assert fleet.whole(i) == []
            assert fleet.stored(i) != old[i]
        audit = [flatten(json.loads(line)) for line in
                 (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert Counter(e["client"] for e in audit if e["event"] == "secret_promoted") == \
            Counter({f"c{i}": 2 for i in range(10) if i != 3})
        assert fleet.leaks() == []



class TestParallelUsage:
    """--parallel takes a whole number of at least 1; anything else is a usage error."""

    def test_parallel_must_be_positive(self, tmp_path: Path) -> None:
        err = io.StringIO()
        code = run(["rotate", "--all", "--parallel", "0", "-c", str(tmp_path / "x.toml")],
                   io.StringIO(), err)
        assert code == 2
        assert "--parallel" in err.getvalue() and "at least 1" in err.getvalue()
