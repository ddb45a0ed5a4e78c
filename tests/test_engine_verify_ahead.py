"""The verifying token request sent while the stores stage the new secret.

Once an overlap IdP has issued a secret, the engine sends the token request that verifies it
from a helper thread and stages the secret meanwhile (``Steps._verify_ahead``); the answer
is taken where the verify step always took it. Proved with events (no timing): the store's
write waits until the token request has arrived, which can only happen if both are in
flight. The journal and the audit log record the same steps in the same order as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_engine import CAPS, Rig, make_rig

from providers.stores.env import EnvStore
from rotator.audit import flatten
from rotator.errors import StoreUnavailable
from rotator.interfaces import Credentials, IdpCapabilities

#: a bound for a hang, not a measured time
WAIT = 10.0


class Watched:
    """The token endpoint and the env store's staging, each recording what the other was
    doing when it ran; ``hold`` keeps the token endpoint's answer until released."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        self.token_arrived = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.log: list[str] = []  # what happened, in order
        self.token_threads: list[str] = []
        self.staged_while_token_in_flight: list[bool] = []
        self.fail_stage: BaseException | None = None
        real_endpoint = rig.idp.token_endpoint
        real_stage = EnvStore.stage_pending
        real_discard = rig.idp.discard_secret
        watched = self

        def token_endpoint(refuse: bool = False) -> httpx.MockTransport:
            answer: Callable[[httpx.Request], Any] = real_endpoint(refuse).handler

            def handle(request: httpx.Request) -> httpx.Response:
                watched.token_threads.append(threading.current_thread().name)
                watched.log.append("token sent")
                watched.token_arrived.set()
                assert watched.release.wait(WAIT)
                response: httpx.Response = answer(request)
                watched.log.append("token answered")
                return response
            return httpx.MockTransport(handle)

        def stage_pending(store: EnvStore, location: str, creds: Credentials,
                          *args: Any, **kwargs: Any) -> Any:
            watched.staged_while_token_in_flight.append(watched.token_arrived.wait(WAIT))
            watched.log.append("staged")
            if watched.fail_stage is not None:
                raise watched.fail_stage
            return real_stage(store, location, creds, *args, **kwargs)

        def discard_secret(*args: Any) -> None:
            watched.log.append("discarded")
            real_discard(*args)

        monkeypatch.setattr(rig.idp, "token_endpoint", token_endpoint)
        monkeypatch.setattr(rig.idp, "discard_secret", discard_secret)
        monkeypatch.setattr(EnvStore, "stage_pending", stage_pending)


def _events(rig: Rig) -> list[str]:
    audit = rig.env_file.parent / "audit.jsonl"
    return [flatten(json.loads(line))["event"] for line in audit.read_text().splitlines()]


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Rig, Watched]]:
    """An overlap IdP that makes the value, watched."""
    with make_rig(tmp_path, CAPS["generated-many"]) as rig:
        watched = Watched(rig, monkeypatch)
        try:
            yield rig, watched
        finally:
            watched.release.set()  # no held request outlives the test


class TestTokenRequestWhileStaging:
    """At an overlap IdP that makes the value, the verifying token request is in flight while
    the stores stage the secret, and the rotation records and ends as it did before."""

    def test_the_token_request_is_in_flight_while_the_store_stages(
            self, generated: tuple[Rig, Watched]) -> None:
        """An overlap IdP that makes the value: staging waits for the token request to
        arrive, which it does from a helper thread; the rotation ends as ever."""
        rig, watched = generated
        outcome = rig.engine.rotate("app")
        assert outcome.ok and outcome.state == "promoted", outcome.message
        assert watched.staged_while_token_in_flight == [True]
        assert [name.startswith("rotator-helper") for name in watched.token_threads] \
            == [True]
        new = rig.env()["APP_CLIENT_SECRET"]
        assert new in rig.idp.active.values()

    def test_journal_and_audit_record_the_steps_in_their_order(
            self, generated: tuple[Rig, Watched], monkeypatch: pytest.MonkeyPatch) -> None:
        """The token answer arrives only after the secret is staged (held until then), and
        the records read as one step after the other: staged, created, then verified."""
        rig, watched = generated
        watched.release.clear()
        real_stage = EnvStore.stage_pending

        def stage_then_release(*args: Any, **kwargs: Any) -> Any:
            try:
                return real_stage(*args, **kwargs)
            finally:
                watched.release.set()

        monkeypatch.setattr(EnvStore, "stage_pending", stage_then_release)
        outcome = rig.engine.rotate("app")
        assert outcome.ok and outcome.rotation_id is not None, outcome.message
        assert watched.log == ["token sent", "staged", "token answered"]
        actions = _events(rig)
        assert actions.index("secret_created") < actions.index("secret_staged") \
            < actions.index("secret_verified") < actions.index("secret_promoted")
        steps = [s.state.value for s in rig.engine.journal.steps(outcome.rotation_id)]
        assert steps == ["started", "creating", "created", "verified", "promoted"]

    def test_a_refused_token_rolls_back_as_before(
            self, generated: tuple[Rig, Watched]) -> None:
        rig, watched = generated
        old = rig.env()["APP_CLIENT_SECRET"]
        rig.refuse["token"] = True
        outcome = rig.engine.rotate("app")
        assert not outcome.ok and outcome.action == "rolled_back"
        assert watched.staged_while_token_in_flight == [True]
        assert rig.env()["APP_CLIENT_SECRET"] == old
        assert list(rig.idp.active.values()) == [old]
        assert "secret_verification_failed" in _events(rig)

    def test_a_store_refusal_waits_for_the_token_request_before_taking_back(
            self, generated: tuple[Rig, Watched]) -> None:
        """The store refuses while the token request is held: the secret is discarded at
        the IdP only once that request is over, and its answer is dropped."""
        rig, watched = generated
        old = rig.env()["APP_CLIENT_SECRET"]
        watched.release.clear()
        watched.fail_stage = StoreUnavailable("env store 'env': the disk is full")
        releaser = threading.Timer(0.2, watched.release.set)  # lets the take-back wait
        releaser.start()
        try:
            outcome = rig.engine.rotate("app")
        finally:
            releaser.cancel()
            watched.release.set()
        assert not outcome.ok and outcome.action == "rolled_back", outcome.message
        assert watched.log == ["token sent", "staged", "token answered", "discarded"]
        assert list(rig.idp.active.values()) == [old]
        assert "secret_verified" not in _events(rig)

    def test_an_interrupt_does_not_wait_for_the_token_request(
            self, generated: tuple[Rig, Watched]) -> None:
        """Ctrl-C while staging: the rotation stops at once, the held token request still
        in flight; the next run resumes the rotation and completes it."""
        rig, watched = generated
        watched.release.clear()
        watched.fail_stage = KeyboardInterrupt()
        with pytest.raises(KeyboardInterrupt):
            rig.engine.rotate("app")
        assert "token answered" not in watched.log  # still held: not waited for
        watched.release.set()
        watched.fail_stage = None
        outcome = rig.engine.rotate("app")
        assert outcome.ok, outcome.message
        assert rig.env()["APP_CLIENT_SECRET"] in rig.idp.active.values()


class TestNotSentAheadElsewhere:
    """A value the engine chose (staged before the IdP sees it) and a single-secret IdP
    (verified after the promotion) verify in the rotation's own thread, after staging."""

    @pytest.mark.parametrize("caps", ["chosen-overlap", "chosen-single", "generated-single"])
    def test_verified_after_staging_in_the_rotations_thread(
            self, caps: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        chosen = CAPS.get(caps) or IdpCapabilities(1, caller_sets_value=False,
                                                   can_revoke_old=False,
                                                   can_read_current=False)
        with make_rig(tmp_path, chosen) as rig:
            watched = Watched(rig, monkeypatch)
            watched.token_arrived.set()  # staging does not wait here
            outcome = rig.engine.rotate("app")
            assert outcome.ok, outcome.message
            assert watched.token_threads
            assert not any(name.startswith("rotator-helper")
                           for name in watched.token_threads)
            assert watched.log.index("staged") < watched.log.index("token sent")


class TestBusyOrDroppedHelpers:
    """A helper call not begun is made in the rotation's thread; a dropped one retries no
    more."""

    def test_a_busy_pool_holds_no_rotation_up(
            self, generated: tuple[Rig, Watched], monkeypatch: pytest.MonkeyPatch) -> None:
        """Every helper thread busy elsewhere: the token request and the store read the pool
        has not begun are made in the rotation's own thread, and both rotations complete."""
        from concurrent.futures import ThreadPoolExecutor

        from rotator.engine.store_steps import StoreSteps

        rig, watched = generated
        watched.token_arrived.set()  # staging cannot wait for a request that waits in line
        busy = ThreadPoolExecutor(1, thread_name_prefix="rotator-helper")
        hold = threading.Event()
        busy.submit(hold.wait, WAIT)
        monkeypatch.setattr(StoreSteps, "_helpers", busy)
        reads: list[str] = []
        real_read = EnvStore.read

        def read(store: EnvStore, *args: Any, **kwargs: Any) -> Any:
            reads.append(threading.current_thread().name)
            return real_read(store, *args, **kwargs)

        monkeypatch.setattr(EnvStore, "read", read)
        try:
            first = rig.engine.rotate("app")
            assert first.ok, first.message
            assert rig.engine.retire("app", now=True).ok
            second = rig.engine.rotate("app")
            assert second.ok, second.message
        finally:
            hold.set()
            busy.shutdown()
        assert watched.token_threads == [threading.current_thread().name] * 2
        assert reads and all(name == threading.current_thread().name for name in reads)

    def test_a_dropped_verification_retries_no_more(
            self, generated: tuple[Rig, Watched], monkeypatch: pytest.MonkeyPatch) -> None:
        """A store refuses while the token request, refused too, is held: once the rotation
        drops it, the request is answered and not tried again (verify_attempts is 2)."""
        import rotator.engine.steps as steps

        rig, watched = generated
        watched.release.clear()
        watched.fail_stage = StoreUnavailable("env store 'env': the disk is full")
        rig.refuse["token"] = True

        class Dropped(threading.Event):
            def set(self) -> None:  # the rotation drops the request: let it be answered
                super().set()
                watched.release.set()

        monkeypatch.setattr(steps, "Event", Dropped)
        outcome = rig.engine.rotate("app")
        assert outcome.action == "rolled_back", outcome.message
        assert watched.log.count("token sent") == 1
        assert watched.log[-1] == "discarded"
