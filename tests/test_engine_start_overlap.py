"""A rotation's first two reads at once: the IdP's capabilities and the stored credential.

Once the engine has had an answer from an IdP that needed no look at the store's facts, the
next rotation of any client of that IdP reads the current credential in another thread while
the IdP is asked (``StoreSteps._asked_and_read``). Proved with events (no timing): the IdP's
answer waits until the store read has begun, which can only happen if both are in flight.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_engine import CAPS, Rig, make_rig

from providers.stores.env import EnvStore
from rotator.errors import IdpAccessDenied, StoreUnavailable
from rotator.interfaces import ClientId, IdpCapabilities, Stage

#: a bound for a hang, not a measured time: how long the IdP's answer waits for the read
WAIT = 10.0


class Watched:
    """Records, for each ``capabilities`` call, whether a store read of the current
    credential was in flight (begun in another thread) while the IdP was asked."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch, *, wait: bool) -> None:
        self.read_begun = threading.Event()
        self.reads: list[str] = []  # "current"/"facts", in order, with the thread's name
        self.overlapped: list[bool] = []
        self.fail_read = False
        self.read_over = threading.Event()
        real_read, real_facts = EnvStore.read, EnvStore.facts
        real_caps = rig.idp.capabilities
        watched = self

        def read(store: EnvStore, location: str, stage: Stage = Stage.CURRENT) -> Any:
            if stage is Stage.CURRENT:
                watched.reads.append(threading.current_thread().name)
                watched.read_begun.set()
            try:
                if watched.fail_read and stage is Stage.CURRENT:
                    raise StoreUnavailable("env store 'env': the file is gone")
                return real_read(store, location, stage)
            finally:
                watched.read_over.set()

        def facts(store: EnvStore, location: str) -> Any:
            watched.reads.append("facts")
            return real_facts(store, location)

        def capabilities(client_id: ClientId) -> IdpCapabilities:
            if wait:
                self.overlapped.append(self.read_begun.wait(WAIT))
            else:
                self.overlapped.append(self.read_begun.is_set())
            self.read_begun.clear()  # for the next rotation's question
            return real_caps(client_id)

        monkeypatch.setattr(EnvStore, "read", read)
        monkeypatch.setattr(EnvStore, "facts", facts)
        monkeypatch.setattr(rig.idp, "capabilities", capabilities)


def _rotate_twice(rig: Rig) -> None:
    first = rig.engine.rotate("app")
    assert first.ok, first.message
    retired = rig.engine.retire("app", now=True)
    assert retired.ok, retired.message
    second = rig.engine.rotate("app")
    assert second.ok, second.message


class TestReadWhileTheIdpIsAsked:
    def test_second_rotation_reads_in_another_thread(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An overlap IdP that makes the value: the first rotation asks, then reads; the
        second reads while the IdP is asked."""
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            first = Watched(rig, monkeypatch, wait=False)
            assert rig.engine.rotate("app").ok
            assert first.overlapped == [False]  # asked first, then read
            assert rig.engine.retire("app", now=True).ok
            watched = Watched(rig, monkeypatch, wait=True)
            outcome = rig.engine.rotate("app")
            assert outcome.ok, outcome.message
            assert watched.overlapped[0] is True  # the read began while the IdP was asked
            assert watched.reads[0].startswith("rotator-helper")
            assert "facts" not in watched.reads  # the answer needed none: one read

    def test_facts_needed_no_read_ahead(self, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """An IdP whose answer needs the store's facts (the caller chooses the value) is
        asked first every time, and the store is read once, with its facts."""
        with make_rig(tmp_path, CAPS["chosen-single"]) as rig:
            watched = Watched(rig, monkeypatch, wait=False)
            _rotate_twice(rig)
            assert len(watched.overlapped) >= 2  # asked in both rotations
            assert watched.reads and all(not name.startswith("rotator-helper")
                                         for name in watched.reads)

    def test_changed_answer_reads_again_with_facts(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The IdP's answer changed since (now the facts matter): read again, with them."""
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            assert rig.engine.rotate("app").ok
            assert rig.engine.retire("app", now=True).ok
            rig.idp.caps = CAPS["chosen-single"]
            watched = Watched(rig, monkeypatch, wait=True)
            outcome = rig.engine.rotate("app")
            assert outcome.ok, outcome.message
            assert watched.overlapped == [True]
            assert watched.reads[0].startswith("rotator-helper") and "facts" in watched.reads

    def test_idp_refusal_heard_first_and_the_read_over(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Both fail: the IdP's refusal is what the caller hears, as one after the other,
        and the read has ended before the rotation returns."""
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            assert rig.engine.rotate("app").ok
            assert rig.engine.retire("app", now=True).ok
            watched = Watched(rig, monkeypatch, wait=True)
            watched.fail_read = True
            real = rig.idp.capabilities

            def refused(client_id: ClientId) -> IdpCapabilities:
                real(client_id)
                raise IdpAccessDenied("missing permission view-clients")

            monkeypatch.setattr(rig.idp, "capabilities", refused)
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and "view-clients" in outcome.message, outcome.message
            assert watched.read_over.is_set()
            assert rig.engine.journal.open_rotation("app") is None  # nothing begun

    def test_read_failure_alone_is_heard(self, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            assert rig.engine.rotate("app").ok
            assert rig.engine.retire("app", now=True).ok
            watched = Watched(rig, monkeypatch, wait=True)
            watched.fail_read = True
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and "the file is gone" in outcome.message, outcome.message
            assert rig.engine.journal.open_rotation("app") is None
