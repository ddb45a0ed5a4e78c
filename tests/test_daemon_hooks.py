"""The daemon and hooks/alerts: a held retirement is asked again later (not in a loop), and
the periodic sweep retries failed hooks and sends alerts, blocked clients included."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import test_daemon
from hook_receiver import receiver
from test_daemon import T0, Clock, RecordingWorker, World, load, make, write_config

from rotator.audit import AuditLog
from rotator.daemon.service import HELD_RETRY, Service
from rotator.engine import Outcome
from rotator.interfaces import HookRun, State
from rotator.secrets import Secret

PROBE = Path(__file__).parent / "hook_probe.py"


class TestHeldRetirement:
    """A retirement a gate held is queued again after HELD_RETRY, not at every tick."""

    def test_held_waits(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        held = {"on": True}
        plain_retire = RecordingWorker.retire

        def retire(self: RecordingWorker, name: str, *, now: bool = False) -> Outcome:
            if held["on"]:
                with self.world.lock:
                    self.world.calls.append(("retire", name, self.actor))
                rotation = self.journal.open_rotation(name)
                return Outcome(name, True, "held", "required hook(s) x", rotation.id
                               if rotation else None)
            return plain_retire(self, name, now=now)

        monkeypatch.setattr(test_daemon.RecordingWorker, "retire", retire)
        h = make(tmp_path, {"a": 'rotate_every = "1h"\ngrace_period = "10m"'})
        h.service.prepare()
        h.clock.advance(hours=1)
        h.service.tick()
        h.clock.advance(minutes=10)
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a"]
        for _ in range(5):
            h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a"]
        held["on"] = False
        h.clock.advance(seconds=HELD_RETRY)
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a", "retire:a"]
        assert [r[1] for r in h.rotations("a")] == ["completed"]


class TestSweep:
    """The sweep retries a hook whose retry time came and alerts on a blocked client."""

    def test_retry_and_alert(self, tmp_path: Path) -> None:
        out = tmp_path / "hook.out"
        with receiver() as rx:
            (tmp_path / "alerts.url").write_text(rx.url)
            (tmp_path / "alerts.url").chmod(0o600)
            argv = json.dumps([sys.executable, str(PROBE), str(out)])
            path = write_config(tmp_path, {
                "a": f'[[clients.a.hooks]]\nkind = "command"\nname = "probe"\nargv = {argv}\n',
                "b": ""})
            path.write_text(path.read_text() + '\n[alerts]\nurl_file = "alerts.url"\n')
            config = load(path)
            clock = Clock()
            world = World(clock)
            audit = AuditLog(Secret("k" * 32), file=tmp_path / "audit.jsonl")

            @contextlib.contextmanager
            def factory(cfg: Any, actor: str, journal: Any, wrap: Any) -> Iterator[Any]:
                yield RecordingWorker(world, journal, actor, wrap(None))

            service = Service(config, audit=audit, worker_factory=factory,
                              facts=lambda _c, _cl: T0, clock=clock, spawn=lambda fn: fn())
            try:
                service.prepare()
                journal = service._journal()
                journal.begin("r-a-1", "a", "overlap", "scheduler", "fp", T0)
                journal.advance("r-a-1", State.PROMOTED, T0, expected=State.STARTED,
                                retire_after=(T0 + timedelta(hours=1)).isoformat())
                journal.record_hook_run(HookRun("r-a-1", "a", "promoted", "probe", "failed",
                                                3, False, T0, T0 + timedelta(minutes=1),
                                                "exited with status 3"))
                service._records["b"].blocked = "store holds a pending secret"
                service.sweep(force=True)  # the hook's retry time has not come
                assert not out.exists()
                clock.advance(minutes=1)
                service.sweep(force=True)
                service.sweep()  # within check_every: nothing
                assert [json.loads(line)["ROTATOR_ROTATION_ID"]
                        for line in out.read_text().splitlines()] == ["r-a-1"]
                assert [r.status for r in journal.hook_runs("r-a-1")] == ["succeeded"]
                sent = [(r.json()["status"], r.json()["key"]) for r in rx.requests]
            finally:
                service.close()
                audit.close()
        assert sorted(sent[:2]) == [("firing", "client_blocked:b"),
                                    ("firing", "hook_failed:a:probe")]
        assert sent[2:] == [("resolved", "hook_failed:a:probe")]
