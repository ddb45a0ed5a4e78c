"""What the steps ask of every store of a client: stage, promote, read back."""

from __future__ import annotations

import time

from rotator.config import ClientConfig
from rotator.engine.audited import Audited, _ms
from rotator.interfaces import (
    Credentials,
    Rotation,
    SecretStore,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.secrets import Secret


class StoreSteps(Audited):
    """Writes to and reads from a client's stores, each write audited."""

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
