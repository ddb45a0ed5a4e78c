"""The steps of a rotation that act: create, verify, retire, roll back, take back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from threading import Event
from typing import TYPE_CHECKING, NamedTuple

import structlog

from rotator.config import ClientConfig
from rotator.engine.audited import _expiry, _ms
from rotator.engine.outcome import Abort
from rotator.engine.store_steps import StoreSteps
from rotator.engine.verification import verify_credentials
from rotator.errors import (
    RotationError,
    StoreConflict,
    StoreError,
    VerificationError,
)
from rotator.interfaces import (
    Credentials,
    IdentityProvider,
    IdpCapabilities,
    IssuedSecret,
    Rotation,
    RotationId,
    Stage,
    State,
)
from rotator.secrets import Secret, check_secret_value
from rotator.token import Token

if TYPE_CHECKING:
    from concurrent.futures import Future

log = structlog.get_logger("rotator.engine")


class _Ahead(NamedTuple):
    """A verifying token request sent while the stores stage (see Steps._verify_ahead)."""

    token: Future[Token]
    started: float
    #: set when the rotation no longer wants the answer: the request retries no more
    dropped: Event


def _until(dropped: Event, sleep: Callable[[float], None]) -> Callable[[float], None]:
    """``sleep`` between a verification's attempts, ending them once ``dropped`` is set
    (real time waits on the event itself, so a dropped request stops at once)."""
    def pause(seconds: float) -> None:
        if sleep is time.sleep:
            stop = dropped.wait(seconds)
        else:
            stop = dropped.is_set()
            if not stop:
                sleep(seconds)
        if stop:
            raise VerificationError("the rotation no longer waits for this verification")
    return pause


class Steps(StoreSteps):
    """Each step that acts at the IdP or the stores, and records what it did."""

    #: rotation id -> its verifying token request sent ahead (see _verify_ahead)
    _verifying: dict[RotationId, _Ahead]

    def _create_generated(self, client: ClientConfig, idp: IdentityProvider,
                          caps: IdpCapabilities, rotation: Rotation, *, resumed: bool,
                          abandon_pending: bool) -> Rotation:
        issued: IssuedSecret | None = None
        if resumed and caps.can_read_current:
            # A run died after asking the IdP; if the IdP holds a secret that is not the old
            # one, that is the secret it issued for us: keep it rather than create another.
            value = idp.current_secret(client.client_id)
            if value is not None and self.audit.fingerprint(value) != rotation.old_fingerprint:
                issued = IssuedSecret(value, rotation.secret_ref)
                self.audit.event("secret_recovered", step="create", outcome="success",
                                 new_fingerprint=self.audit.fingerprint(value))
        if issued is None:
            issued = self._timed("secret_created", lambda: idp.create_secret(
                client.client_id, rotation.id, None), rotation, abort_if_denied=True,
                client=client)
        fingerprint = self.audit.fingerprint(issued.value)
        problem = check_secret_value(issued.value.reveal())
        if problem:  # a hostile value must reach no store
            reason = (f"the IdP issued a secret for client {client.name} that {problem}, so it "
                      "cannot be stored safely")
            self.audit.event("secret_refused", step="stage", outcome="failure", error=reason,
                             new_fingerprint=fingerprint)
            if rotation.family == "overlap":
                self._take_back(client, idp, rotation, issued, fingerprint,
                                f"{reason}; it was discarded at the IdP")
            else:
                self._fail(rotation, f"{reason}; the IdP no longer accepts the old secret, so "
                                     "reset the client's secret at the IdP and store it")
            raise Abort
        if rotation.family == "overlap":
            self._verify_ahead(client, caps, rotation, issued.value)
        try:
            self._stage_all(client, rotation, issued.value, abandon_pending, issued=True)
        except StoreError as exc:
            if rotation.family == "overlap":
                # The old secret still works: take the new one back rather than risk it.
                hint = (" (if it holds a pending secret rotator's journal does not know, pass "
                        "--abandon-pending to discard it)"
                        if isinstance(exc, StoreConflict) else "")
                self._take_back(client, idp, rotation, issued, fingerprint,
                                f"a store refused the new secret: {exc}{hint}; it was "
                                "discarded at the IdP and the old secret kept")
                raise Abort from None
            raise
        return self._advance_unsynced(rotation, State.CREATED, new_fingerprint=fingerprint,
                                      secret_ref=issued.secret_ref, expires_at=_expiry(issued))

    def _take_back(self, client: ClientConfig, idp: IdentityProvider, rotation: Rotation,
                   issued: IssuedSecret, fingerprint: str, reason: str) -> None:
        """Discard a just-issued secret at an overlap IdP and end the rotation rolled back."""
        self._drop_verification(rotation.id, wait=True)  # its answer no longer matters
        rotation = self._advance(rotation, State.CREATING, new_fingerprint=fingerprint,
                                 secret_ref=issued.secret_ref)
        self._discard_at_idp(client, idp, rotation, issued)
        for target in client.targets:  # stores that took it before one refused
            with contextlib.suppress(StoreError):
                self.adapters.store(target.store).discard_pending(target.location,
                                                                  rotation.id, fence=self._fence)
        self._advance(rotation, State.ROLLED_BACK, error=reason)

    def _verify_step(self, client: ClientConfig, caps: IdpCapabilities, rotation: Rotation, *,
                     next_state: State, single: bool = False) -> Rotation:
        staged = self._staged.get(rotation.id)
        if staged is not None:
            creds = Credentials(client.client_id, staged)
        else:
            stage = Stage.CURRENT if single else Stage.PENDING
            stored = self._read(client, stage)
            if stored is None or (not single and stored.rotation_id not in (None, rotation.id)):
                raise RotationError(f"no {stage} credential of rotation {rotation.id} to verify")
            creds = stored.credentials
        ahead = self._verifying.pop(rotation.id, None)
        try:
            if ahead is not None and not ahead.token.cancel():
                started = ahead.started
                token = ahead.token.result()
            else:  # none sent ahead, or its helper had not begun: send it here
                started = time.monotonic()
                token = self._verify_with_retries(client, caps, creds)
        except VerificationError as exc:
            self.audit.event("secret_verification_failed", step="verify", outcome="failure",
                             error=str(exc), duration_ms=_ms(started),
                             new_fingerprint=rotation.new_fingerprint)
            if single:
                return self._fail(
                    rotation, f"the new secret is current (the IdP invalidated the old one) "
                              f"but did not obtain a token: {exc}")
            return self._advance(rotation, State.ROLLING_BACK,
                                 error=f"the new secret failed verification: {exc}")
        self.audit.event("secret_verified", step="verify", outcome="success",
                         duration_ms=_ms(started), scopes=sorted(token.scopes),
                         scopes_assumed=token.scopes_assumed,
                         new_fingerprint=rotation.new_fingerprint)
        if single:
            # The IdP invalidated the old secret when it issued this one: stop offering it.
            for target in client.targets:
                self.adapters.store(target.store).drop_previous(target.location, rotation.id,
                                                               fence=self._fence)
            return self._advance(rotation, State.COMPLETED)
        return self._advance(rotation, next_state)

    def _verify_ahead(self, client: ClientConfig, caps: IdpCapabilities, rotation: Rotation,
                      value: Secret) -> None:
        """Send the token request that verifies the secret an overlap IdP just issued in a
        helper thread, while the stores stage it; :meth:`_verify_step` takes its answer.

        The two are independent: the request is a read at the IdP, and the value it sends
        is the one being staged. Nothing depends on the answer before it is taken, and the
        journal and audit log record the steps in the same order as one after the other
        (``secret_verified`` after the staging and CREATED). The old secret is current and
        valid throughout, so a crash meanwhile leaves what it left before (a rotation in
        CREATING or CREATED, resumed as ever). A rotation that ends before taking the answer
        waits for it (:meth:`_drop_verification`).
        """
        creds = Credentials(client.client_id, value)
        dropped = Event()
        token = self._beside(self._verify_with_retries, client, caps, creds,
                             _until(dropped, self.sleep))
        self._verifying[rotation.id] = _Ahead(token, time.monotonic(), dropped)

    def _drop_verification(self, rotation_id: RotationId, *, wait: bool) -> None:
        """Forget a token request sent ahead for ``rotation_id`` (see :meth:`_verify_ahead`):
        not begun yet (a busy pool), it never is; begun, it retries no more, and it is
        waited for if ``wait`` (not when the process is being interrupted), its answer and
        any error dropped."""
        ahead = self._verifying.pop(rotation_id, None)
        if ahead is None or ahead.token.cancel():
            return
        ahead.dropped.set()
        if wait:
            ahead.token.exception()

    def _verify_with_retries(self, client: ClientConfig, caps: IdpCapabilities,
                             creds: Credentials,
                             sleep: Callable[[float], None] | None = None) -> Token:
        return verify_credentials(client, creds, self.adapters.idp(client.idp),
                                  attempts=client.verify_attempts,
                                  patience=caps.propagation_delay, sleep=sleep or self.sleep,
                                  http=self.adapters.http(client, self.http_factory))

    def _request_token(self, client: ClientConfig, creds: Credentials) -> Token:
        return verify_credentials(client, creds, self.adapters.idp(client.idp), attempts=1,
                                  sleep=self.sleep,
                                  http=self.adapters.http(client, self.http_factory))

    def _retire(self, client: ClientConfig, idp: IdentityProvider, caps: IdpCapabilities,
                rotation: Rotation) -> Rotation:
        sync = getattr(self.journal, "sync", None)
        if sync is not None:  # a PROMOTED committed unsynced is durable before the IdP acts
            sync()
        current = self._read(client, Stage.CURRENT)
        if current is None:
            raise RotationError("no current credential to keep while retiring")
        keep = IssuedSecret(current.credentials.client_secret, rotation.secret_ref)
        count = 0
        if caps.can_revoke_old:
            count = self._timed("old_secret_retired",
                                lambda: idp.retire_old_secrets(client.client_id, keep), rotation,
                                client=client)
        for target in client.targets:
            self.adapters.store(target.store).drop_previous(target.location, rotation.id,
                                                           fence=self._fence)
        log.debug("old_secrets_retired", count=count)
        return self._advance(rotation, State.COMPLETED)

    def _rollback(self, client: ClientConfig, idp: IdentityProvider,
                  rotation: Rotation) -> Rotation:
        pending = self._pending_of(client, rotation)
        if pending is not None:
            self._discard_at_idp(client, idp, rotation, IssuedSecret(pending,
                                                                      rotation.secret_ref))
        for target in client.targets:
            self.adapters.store(target.store).discard_pending(target.location, rotation.id,
                                                             fence=self._fence)
        return self._advance(rotation, State.ROLLED_BACK)

    def _discard_at_idp(self, client: ClientConfig, idp: IdentityProvider, rotation: Rotation,
                        issued: IssuedSecret) -> None:
        current = self._read(client, Stage.CURRENT)
        if current is None:
            raise RotationError("no current credential to fall back to")
        self._timed("new_secret_discarded", lambda: idp.discard_secret(
            client.client_id, issued, current.credentials.client_secret), rotation,
            client=client)

    def _retirement_held(self, client: ClientConfig, rotation: Rotation) -> str | None:
        """Why a gate (a required hook, ...) keeps ``rotation``'s old secret now, or None."""
        with self.audit.immediate():  # a gate may alert and audit on its own
            for gate in self.retirement_gates:
                reason = gate.holds(client, rotation)
                if reason is not None:
                    return reason
        return None

    def _retirement_due(self, rotation: Rotation) -> bool:
        return rotation.retire_after is None or self.clock() >= rotation.retire_after
