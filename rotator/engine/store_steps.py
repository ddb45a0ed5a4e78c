"""What the steps ask of every store of a client: stage, promote, read back."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from rotator.config import ClientConfig
from rotator.engine.audited import Audited, _ms
from rotator.interfaces import (
    Credentials,
    IdentityProvider,
    IdpCapabilities,
    Rotation,
    SecretStore,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.secrets import Secret

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


_T = TypeVar("_T")

#: Threads, one pool per process, that run a rotation's independent calls beside it: the store
#: read while the IdP is asked (StoreSteps._asked_and_read), the token request while the
#: stores stage the new secret (Steps._verify_ahead). A call the pool has not begun when the
#: rotation needs its answer is cancelled and made in the rotation's own thread, so a busy
#: pool (a daemon's many jobs) never holds a rotation up.
_HELPERS = 8


class StoreSteps(Audited):
    """Writes to and reads from a client's stores, each write audited."""

    #: IdP name -> its last answer to ``capabilities`` in this process (any client's)
    _caps_seen: dict[str, IdpCapabilities]
    _helpers: ThreadPoolExecutor | None = None
    _helpers_lock = threading.Lock()

    def _asked_and_read(
        self, client: ClientConfig, idp: IdentityProvider, primary: SecretStore,
        needs_facts: Callable[[IdpCapabilities], bool],
    ) -> tuple[IdpCapabilities, StoredCredentials | None, StoreFacts | None]:
        """The IdP's capabilities for ``client``, and the primary store's current credential
        with, where the capabilities call for them (``needs_facts``), the location's facts.

        Which read it is depends on the answer, and the two are independent otherwise: once
        this engine has had an answer from the same IdP that needed no facts (the IdP's
        previous rotation, any client), the current credential is read in another thread
        while the IdP is asked, and a rotation begins one store round trip sooner. An
        answer that turns out to need the facts after all (the IdP's policy changed) reads
        again, with them. Both are reads: what either raises is raised as it would be one
        after the other (the IdP's refusal first), once both are over. A read the helper
        pool has not begun by the time the IdP answers is made here instead.
        """
        location = client.primary.location
        seen = self._caps_seen.get(client.idp)
        current: Future[StoredCredentials | None] | None = None
        if seen is not None and not needs_facts(seen):
            current = self._beside(primary.read, location, Stage.CURRENT)
        try:
            caps = idp.capabilities(client.client_id)
        finally:
            if current is not None:
                if current.cancel():  # not begun (a busy pool): read below instead
                    current = None
                else:
                    current.exception()  # over before anything else happens
        self._caps_seen[client.idp] = caps
        if needs_facts(caps):
            read, facts = _read_with_facts(primary, location)
            return caps, read, facts
        if current is None:
            return caps, primary.read(location, Stage.CURRENT), None
        return caps, current.result(), None

    @staticmethod
    def _beside(call: Callable[..., _T], *args: object) -> Future[_T]:
        """``call(*args)`` in a helper thread, in a copy of this thread's context (the log
        context it binds goes along)."""
        return StoreSteps._helper_pool().submit(contextvars.copy_context().run, call, *args)

    @staticmethod
    def _helper_pool() -> ThreadPoolExecutor:
        """The process's helper threads (see :data:`_HELPERS`), shared by every engine: a
        daemon makes an engine per job, and a pool per engine would start threads per job."""
        with StoreSteps._helpers_lock:
            if StoreSteps._helpers is None:
                from concurrent.futures import ThreadPoolExecutor  # only where it is used

                StoreSteps._helpers = ThreadPoolExecutor(_HELPERS,
                                                         thread_name_prefix="rotator-helper")
            return StoreSteps._helpers

    def _stage_all(self, client: ClientConfig, rotation: Rotation, value: Secret,
                   abandon_pending: bool, *, issued: bool = False) -> None:
        """Write ``value`` as PENDING everywhere; once the IdP ``issued`` it in a
        single-secret rotation, as CURRENT where a store can (see ``write_current``)."""
        creds = Credentials(client.client_id, value)
        for target in client.targets:
            started = time.monotonic()
            store = self.adapters.store(target.store)
            if issued and rotation.family == "single" and _writes_current(store):
                store.write_current(  # type: ignore[attr-defined]
                    target.location, creds, rotation.id, fence=self._fence)
            else:
                store.stage_pending(target.location, creds, rotation.id,
                                    replace_foreign=abandon_pending, fence=self._fence)
            self.audit.event("secret_staged", step="stage", store=target.store,
                             outcome="success", duration_ms=_ms(started),
                             new_fingerprint=self.audit.fingerprint(value))
        self._staged[rotation.id] = value

    def _promote_all(self, client: ClientConfig, rotation: Rotation) -> None:
        for target in client.targets:
            started = time.monotonic()
            self.adapters.store(target.store).promote(target.location, rotation.id,
                                                      fence=self._fence)
            self.audit.event("secret_promoted", step="promote", store=target.store,
                             outcome="success", duration_ms=_ms(started),
                             new_fingerprint=rotation.new_fingerprint)

    def _read(self, client: ClientConfig, stage: Stage) -> StoredCredentials | None:
        return self.adapters.store(client.primary.store).read(client.primary.location, stage)

    def _pending_of(self, client: ClientConfig, rotation: Rotation) -> Secret | None:
        pending = self._read(client, Stage.PENDING)
        if pending is None or pending.rotation_id not in (None, rotation.id):
            return None
        return pending.credentials.client_secret


def _read_with_facts(store: SecretStore,
                     location: str) -> tuple[StoredCredentials | None, StoreFacts]:
    """The current credential at ``location`` and its facts, in one look where the store can."""
    both = getattr(store, "read_with_facts", None)
    if both is not None:
        answer: tuple[StoredCredentials | None, StoreFacts] = both(location)
        return answer
    return store.read(location, Stage.CURRENT), store.facts(location)


def _writes_current(store: SecretStore) -> bool:
    """Whether ``store`` can write a single-secret rotation's value as CURRENT at once."""
    return callable(getattr(store, "write_current", None))
