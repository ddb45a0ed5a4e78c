"""The engine carries a daemon job's fencing token to every store write: a job woken after
another holder took its client over and wrote the store has its store write refused.

The engine runs on a journal fenced by a lease (as a daemon job with a shared journal does),
the in-memory IdP of ``test_engine`` and a real env store. The same, with real ``rotator run``
processes frozen by SIGSTOP, is ``test_ha_processes.py::TestStoppedHolder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_engine import CAPS, make_rig

from providers.stores.env import EnvStore
from rotator.errors import FencedOut
from rotator.interfaces import Credentials, Stage
from rotator.journal import State
from rotator.secrets import generate_secret


class TestWokenJobStoreWriteRefused:
    """A job whose lease was taken over, and whose store the new holder wrote, has its next
    store write refused (FencedOut) and its next journal write refused (LeaseLost): the
    store keeps what the new holder wrote."""

    def test_stage_refused(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            journal = rig.engine.journal
            lease_a = journal.acquire_lease("app", "daemon-a", 60)
            assert lease_a is not None
            rig.engine.journal = journal.fenced(lease_a)  # A's job
            store = rig.engine.adapters.store("env")
            original = EnvStore.stage_pending
            refused: list[BaseException] = []
            b_value = generate_secret()

            def stalled(self: EnvStore, location: str, creds: Credentials, rid: str,
                        **kwargs: Any) -> None:
                if kwargs.get("fence") == lease_a.token and not refused:
                    # A stalled here; its lease expired, B took the client over and staged
                    # this rotation with its own value before A woke up.
                    journal.release_lease(lease_a)
                    lease_b = journal.acquire_lease("app", "daemon-b", 60)
                    assert lease_b is not None and lease_b.token > lease_a.token
                    original(self, location, Credentials("app", b_value), rid,
                             fence=lease_b.token)
                    try:
                        original(self, location, creds, rid, **kwargs)
                    except FencedOut as exc:
                        refused.append(exc)
                        raise
                    return
                original(self, location, creds, rid, **kwargs)

            monkeypatch.setattr(EnvStore, "stage_pending", stalled)
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and "taken over" in outcome.message  # LeaseLost
            assert len(refused) == 1
            assert "fencing token 2" in str(refused[0])
            pending = store.read("APP", Stage.PENDING)
            assert pending is not None and pending.credentials.client_secret == b_value
            assert rig.env()["APP_ROTATION_FENCE"] == "2"
            assert rig.idp.created == 0  # A never reached the IdP
            rotation = journal.open_rotation("app")
            assert rotation is not None and rotation.state is State.STARTED

    def test_without_a_lease_no_fence(self, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """A CLI engine (no lease) passes no fence, and a recorded one does not stop it."""
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            rig.env_file.write_text(rig.env_file.read_text() + "APP_ROTATION_FENCE=7\n")
            fences: list[object] = []
            original = EnvStore.promote

            def seen(self: EnvStore, *args: Any, **kwargs: Any) -> None:
                fences.append(kwargs.get("fence"))
                original(self, *args, **kwargs)

            monkeypatch.setattr(EnvStore, "promote", seen)
            outcome = rig.engine.rotate("app")
            assert outcome.ok, outcome.message
            assert fences == [None]
            assert rig.env()["APP_ROTATION_FENCE"] == "7"
