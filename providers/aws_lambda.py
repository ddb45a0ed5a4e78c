"""rotator as an AWS Secrets Manager rotation function (a Lambda handler).

Secrets Manager drives the rotation and calls :func:`handler` once per step with
``{"SecretId": arn, "ClientRequestToken": token, "Step": step}`` (newer events add
``RotationToken``, passed on to ``PutSecretValue``). The version labels are the journal:
every step first re-reads them, does nothing if its work is done, and refuses a token that
is neither ``AWSPENDING`` nor ``AWSCURRENT``. The version id of the new secret is ``token``.

Every step first refuses a ``token`` Secrets Manager did not register (a version labelled
``AWSPENDING`` or ``AWSCURRENT``), as AWS's templates do.

``createSecret``
    Does nothing if ``token`` already holds a value. Refuses while the last promotion's
    ``grace_period`` (tag ``rotator:promoted-at``) has not passed. Otherwise gets the new secret and
    stores it under ``AWSPENDING``, the other JSON keys copied from ``AWSCURRENT``. When the
    IdP generates values (Keycloak), the new value exists only once the IdP made it, so this
    step asks the IdP for it; a retry after a crash adopts the secret the IdP already holds
    (when it differs from ``AWSCURRENT``) instead of making a second one. Concurrent
    invocations for one token first claim it in Secrets Manager (:func:`_claim`), so only
    one asks the IdP. When rotator may
    choose the value, this step only generates it. Before making a new secret it retires the
    old secrets the last rotation kept valid (see below). With a single-secret IdP the old
    secret is dead at this point, so the new version is made ``AWSCURRENT`` at once.
``setSecret``
    Gives the IdP the new value when rotator chooses values; otherwise nothing to do.
``testSecret``
    The new credential must obtain a token (client-credentials grant), with the client's
    ``verify_attempts`` to ride out propagation delay. If it does not and the IdP keeps two
    secrets, the rotation is rolled back as the CLI engine does: the old secret becomes the
    IdP's current one again, the new one is discarded, and ``AWSPENDING`` is removed from
    the token's version; the step still fails.
``finishSecret``
    Verifies again if ``token`` is still ``AWSPENDING`` (a hand-made or out-of-order call
    must not make an unproven secret current), moves ``AWSCURRENT`` to ``token`` (AWS puts
    ``AWSPREVIOUS`` on the old version), removes ``AWSPENDING`` and tags the secret.

Retiring old secrets: Secrets Manager has no step after ``finishSecret``, so the old secret
stays valid (as ``AWSPREVIOUS``) until the next rotation's ``createSecret`` retires it, i.e.
for one rotation interval; with ``grace_period = 0`` ``finishSecret`` retires it at once.
With a single-secret IdP the old secret died in ``createSecret``: ``finishSecret`` removes
``AWSPREVIOUS`` from it, whatever the grace period.

Configuration: ``ROTATOR_SECRETS_ID`` may name a Secrets Manager secret holding a JSON
object of environment variables (e.g. the audit key and the IdP admin secret named by
``*_env`` settings), read once per cold start. ``ROTATOR_CONFIG`` names rotator's TOML
file; the client rotated is the one whose first store is an ``aws_secrets_manager`` store
holding this secret (``ROTATOR_CLIENT`` names it explicitly). Audit events go to stdout
(CloudWatch Logs). Nothing here logs a secret value; failures raise
:class:`~rotator.errors.RotatorError` and Secrets Manager marks the rotation failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from providers.stores.aws_secrets_manager import (
    CURRENT,
    PENDING,
    PREVIOUS,
    AwsSecretsManagerStore,
)
from rotator.audit import AuditLog, bound
from rotator.config import ClientConfig, Config, load_config
from rotator.engine import Adapters, verify_credentials
from rotator.errors import (
    RotationError,
    StoreConflict,
    StoreNotFound,
    VerificationError,
)
from rotator.interfaces import Credentials, IdentityProvider, IdpCapabilities, IssuedSecret
from rotator.logsafety import install_log_safety
from rotator.secrets import Secret, generate_secret

# Lambda's DEBUG log level would otherwise let botocore log PutSecretValue's SecretString.
install_log_safety()

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
CLAIM_LABEL = "ROTATOR_CLAIM"
_LAMBDA_MAX_MS = 15 * 60 * 1000  # Lambda's longest timeout
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass
class _Rotation:
    """One step's view: the client, its store and IdP, and the secret's labels."""

    config: ClientConfig
    store: AwsSecretsManagerStore
    idp: IdentityProvider
    caps: IdpCapabilities
    secret_id: str
    token: str
    labels: dict[str, list[str]]
    audit: AuditLog
    deadline: datetime = _NEVER  # when this invocation is killed

    def label_of(self, label: str) -> str | None:
        return next((v for v, stages in self.labels.items() if label in stages), None)

    def state(self) -> str:
        """``current``, ``pending``, ``absent`` or ``other`` for the version ``token``."""
        stages = self.labels.get(self.token)
        if stages is None:
            return "absent"
        return "current" if CURRENT in stages else "pending" if PENDING in stages else "other"

    def value(self, **where: str) -> tuple[dict[str, Any], Credentials | None]:
        with self.store.errors(self.secret_id):
            text = self.store.client.get_secret_value(SecretId=self.secret_id, **where)
        return self.store.parse(self.secret_id, text)

    def refresh(self) -> None:
        with self.store.errors(self.secret_id):
            meta = self.store.client.describe_secret(SecretId=self.secret_id)
        self.labels = {k: list(v) for k, v in meta.get("VersionIdsToStages", {}).items()}

    def move(self, label: str, *, to: str | None = None, away_from: str | None = None) -> None:
        kwargs = {k: v for k, v in (("MoveToVersionId", to), ("RemoveFromVersionId", away_from))
                  if v}
        with self.store.errors(self.secret_id):
            self.store.client.update_secret_version_stage(
                SecretId=self.secret_id, VersionStage=label, **kwargs)


def handler(event: Mapping[str, Any], context: object = None,
            environ: Mapping[str, str] | None = None) -> None:
    """Run one rotation step for the secret in ``event``; raises ``RotatorError`` on failure."""
    env = os.environ if environ is None else environ
    step, token = str(event.get("Step", "")), str(event.get("ClientRequestToken", ""))
    if step not in STEPS or not token:
        raise RotationError(f"not a Secrets Manager rotation event (Step {step!r})")
    env = _with_config_secrets(env)
    config = load_config(env.get("ROTATOR_CONFIG") or "rotator.toml", env)
    # CloudWatch keeps the function's stdout; its disk is not kept, so no file sink.
    audit = AuditLog.from_config(config, stream=sys.stdout, local_files=False)
    adapters = Adapters(config)
    try:
        rotation = _rotation(config, adapters, audit, str(event["SecretId"]), token,
                             env.get("ROTATOR_CLIENT"))
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        rotation.deadline = datetime.now(UTC) + timedelta(
            milliseconds=remaining() if callable(remaining) else _LAMBDA_MAX_MS)
        with bound(client=rotation.config.name, rotation_id=token, actor="aws-lambda"):
            started = time.monotonic()
            try:
                _STEP[step](rotation, event.get("RotationToken"))
            except Exception as exc:
                audit.event("rotation_step", step=step, outcome="failure", error=str(exc),
                            duration_ms=int((time.monotonic() - started) * 1000))
                raise
            audit.event("rotation_step", step=step, outcome="success",
                        duration_ms=int((time.monotonic() - started) * 1000))
    finally:
        adapters.close()
        audit.close()


_CONFIG_SECRETS: dict[str, dict[str, str]] = {}  # per secret id, for this execution env


def _with_config_secrets(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with the variables held in the secret ``ROTATOR_SECRETS_ID`` names, read
    once per cold start, so the audit key and the IdP admin secret need not sit in the
    function's environment (readable with ``lambda:GetFunctionConfiguration``)."""
    secret_id = env.get("ROTATOR_SECRETS_ID")
    if not secret_id:
        return env
    if secret_id not in _CONFIG_SECRETS:
        with AwsSecretsManagerStore("ROTATOR_SECRETS_ID", {}) as store:
            with store.errors(secret_id):
                answer = store.client.get_secret_value(SecretId=secret_id,
                                                       VersionStage=CURRENT)
            value = store.parse(secret_id, answer)[0]
        wrong = sorted(k for k, v in value.items() if not isinstance(v, str))
        if wrong:
            raise RotationError(f"ROTATOR_SECRETS_ID {secret_id}: values of {wrong} are not "
                                "strings")
        _CONFIG_SECRETS[secret_id] = value
    return {**env, **_CONFIG_SECRETS[secret_id]}


def _rotation(config: Config, adapters: Adapters, audit: AuditLog, secret_id: str, token: str,
              wanted: str | None) -> _Rotation:
    """Find the configured client whose first store holds ``secret_id``; check rotation."""
    for client in config.clients.values():
        store_config = config.stores[client.primary.store]
        if (wanted and client.name != wanted) or store_config.type != "aws_secrets_manager":
            continue
        store = adapters.store(client.primary.store)
        if not isinstance(store, AwsSecretsManagerStore):  # pragma: no cover - a given adapter
            continue
        with store.errors(secret_id):
            meta = store.client.describe_secret(SecretId=secret_id)
        location = client.primary.location
        if location not in (meta["ARN"], meta["Name"], secret_id) and not meta[
                "ARN"].startswith(location + "-"):
            continue
        if not meta.get("RotationEnabled"):
            raise RotationError(f"secret {meta['Name']} is not enabled for rotation")
        labels = {k: list(v) for k, v in meta.get("VersionIdsToStages", {}).items()}
        if not {CURRENT, PENDING} & set(labels.get(token, [])):
            # As in AWS's templates: only a token Secrets Manager registered (RotateSecret
            # labels its version AWSPENDING) may rotate; an invocation cannot force one.
            raise RotationError(f"version {token} of {meta['Name']} is neither AWSPENDING nor "
                                "AWSCURRENT: Secrets Manager did not register this token")
        idp = adapters.idp(client.idp)
        return _Rotation(client, store, idp, idp.capabilities(client.client_id), meta["ARN"],
                         token, labels, audit)
    raise RotationError(f"no configured client has {secret_id} as its first store"
                        + (f" (ROTATOR_CLIENT={wanted})" if wanted else ""))


def _current(r: _Rotation) -> tuple[dict[str, Any], Credentials]:
    base, current = r.value(VersionStage=CURRENT)
    if current is None or current.client_id != r.config.client_id:
        raise RotationError(f"AWSCURRENT of {r.secret_id} holds no credential of client "
                            f"{r.config.client_id!r}")
    return base, current


def _drop_previous(r: _Rotation) -> None:
    previous = r.label_of(PREVIOUS)
    if previous and previous != r.label_of(CURRENT):
        r.move(PREVIOUS, away_from=previous)
        r.refresh()


def _retire(r: _Rotation, keep: Secret) -> None:
    """Revoke the old secrets the IdP still accepts, and stop offering AWSPREVIOUS."""
    if not r.caps.can_revoke_old:
        return
    count = r.idp.retire_old_secrets(r.config.client_id, IssuedSecret(keep))
    _drop_previous(r)
    r.audit.event("old_secret_retired", step="retire", outcome="success", count=count)


def _check_grace(r: _Rotation) -> None:
    """Refuse to end the previous secret's validity before its grace period is over."""
    if not r.caps.can_revoke_old or not r.label_of(PREVIOUS):
        return
    with r.store.errors(r.secret_id):
        tags = r.store.client.describe_secret(SecretId=r.secret_id).get("Tags", [])
    promoted = next((t["Value"] for t in tags if t["Key"] == "rotator:promoted-at"), None)
    try:
        ends = datetime.fromisoformat(promoted or "") + timedelta(seconds=r.config.grace_period)
    except ValueError:
        return  # never promoted by rotator: no grace period of ours to keep
    if datetime.now(UTC) < ends:
        if r.state() == "pending":  # the registered version is still empty: not in progress
            r.move(PENDING, away_from=r.token)
        raise RotationError(
            f"{r.secret_id}: the previous secret's grace period lasts until "
            f"{ends.isoformat(timespec='seconds')}; rotating now would end it early")


def _staged(r: _Rotation) -> bool:
    """Whether the token's version holds a credential already."""
    try:
        return r.value(VersionId=r.token, VersionStage=PENDING)[1] is not None
    except StoreNotFound:
        return False  # Secrets Manager registered the version; it has no value yet


def _claim(r: _Rotation) -> None:
    """Make this invocation the only one creating the IdP secret of ``token``.

    The claim is a version of the secret whose id derives from the token; Secrets Manager
    refuses a second ``PutSecretValue`` with that id and another value, so of concurrent
    invocations (separate processes) exactly one succeeds. A claim lasts until its holder's
    Lambda timeout; an expired one is superseded by the next generation.
    """
    digest = hashlib.sha256(r.token.encode()).hexdigest()[:40]
    text = json.dumps({"rotator_claim": r.token, "by": secrets.token_hex(8),
                       "until": r.deadline.isoformat()})
    for generation in range(100):
        claim = f"rotator-claim.{generation:02d}.{digest}"
        try:
            with r.store.errors(r.secret_id):
                r.store.client.put_secret_value(SecretId=r.secret_id, ClientRequestToken=claim,
                                                SecretString=text, VersionStages=[CLAIM_LABEL])
            return
        except StoreConflict:
            held = r.value(VersionId=claim)[0]
            try:
                until = datetime.fromisoformat(str(held.get("until")))
            except ValueError:
                until = _NEVER
            if datetime.now(UTC) < until:
                raise RotationError(
                    f"{r.secret_id}: another invocation is creating the secret of version "
                    f"{r.token} (claim {claim}, until {until.isoformat(timespec='seconds')})"
                ) from None
    raise RotationError(f"{r.secret_id}: too many expired claims for version {r.token}")


def create_secret(r: _Rotation, rotation_token: str | None) -> None:
    state = r.state()
    if state == "current":
        return
    if state == "other":
        raise RotationError(f"version {r.token} of {r.secret_id} is not AWSPENDING")
    pending = r.label_of(PENDING)
    if pending not in (None, r.token, r.label_of(CURRENT)):
        raise RotationError(f"{r.secret_id}: version {pending} is AWSPENDING: another "
                            "rotation is in progress")
    if state == "pending" and _staged(r):
        if not r.caps.overlap:  # an earlier attempt died before promoting it
            _promote(r)
        return
    if not r.caps.caller_sets_value:
        _claim(r)  # only one invocation per token may ask the IdP for a secret
        if _staged(r):  # a holder of an expired claim finished after all
            if not r.caps.overlap:
                _promote(r)
            return
    base, current = _current(r)
    value: Secret | None = None
    if not r.caps.caller_sets_value and r.caps.can_read_current:
        held = r.idp.current_secret(r.config.client_id)
        if held is not None and held != current.client_secret:
            value = held  # an earlier attempt made it, then died before storing it
            r.audit.event("secret_recovered", step="create", outcome="success",
                          new_fingerprint=r.audit.fingerprint(held))
    if value is None:
        _check_grace(r)
        _retire(r, current.client_secret)
        if r.caps.caller_sets_value:
            value = generate_secret()
        else:
            value = r.idp.create_secret(r.config.client_id, r.token, None).value
            r.audit.event("secret_created", step="create", outcome="success",
                          new_fingerprint=r.audit.fingerprint(value))
    text = r.store.encode(base, Credentials(r.config.client_id, value))
    extra = {"RotationToken": rotation_token} if rotation_token else {}
    with r.store.errors(r.secret_id):
        r.store.client.put_secret_value(SecretId=r.secret_id, ClientRequestToken=r.token,
                                        SecretString=text, VersionStages=[PENDING], **extra)
    r.audit.event("secret_staged", step="create", outcome="success",
                  new_fingerprint=r.audit.fingerprint(value))
    if not r.caps.overlap:  # the old secret no longer works: consumers need the new one now
        _promote(r)


def set_secret(r: _Rotation, rotation_token: str | None) -> None:
    creds = _token_credentials(r)
    if r.caps.caller_sets_value and r.state() == "pending":
        r.idp.create_secret(r.config.client_id, r.token, creds.client_secret)


def test_secret(r: _Rotation, rotation_token: str | None) -> None:
    creds = _token_credentials(r)
    try:
        verify_credentials(r.config, creds, r.idp, attempts=r.config.verify_attempts)
    except VerificationError:
        if r.caps.overlap and r.state() == "pending":
            _roll_back(r, creds.client_secret)
        raise
    r.audit.event("secret_verified", step="test", outcome="success",
                  new_fingerprint=r.audit.fingerprint(creds.client_secret))


def _roll_back(r: _Rotation, new: Secret) -> None:
    """Make the old secret the IdP's current again, discard ``new``, and unlabel its version,
    so that AWSCURRENT keeps working with no deadline and the next rotation may start."""
    old = _current(r)[1].client_secret
    r.idp.discard_secret(r.config.client_id, IssuedSecret(new), old)
    r.move(PENDING, away_from=r.token)
    r.refresh()
    r.audit.event("new_secret_discarded", step="test", outcome="success",
                  new_fingerprint=r.audit.fingerprint(new))


def finish_secret(r: _Rotation, rotation_token: str | None) -> None:
    if r.state() == "pending":
        # Secrets Manager calls this only after testSecret passed; a hand-made or
        # out-of-order call must not make an unproven secret current either.
        test_secret(r, rotation_token)
    elif r.state() != "current":
        raise RotationError(f"version {r.token} of {r.secret_id} is neither AWSPENDING nor "
                            "AWSCURRENT")
    _promote(r)
    if not r.caps.overlap:
        _drop_previous(r)  # the IdP invalidated it when it issued the new secret
    elif r.config.grace_period == 0:
        _retire(r, _current(r)[1].client_secret)


def _promote(r: _Rotation) -> None:
    current = r.label_of(CURRENT)
    if current != r.token:
        r.move(CURRENT, to=r.token, away_from=current)
        r.audit.event("secret_promoted", step="finish", outcome="success")
        r.refresh()
    if PENDING in r.labels.get(r.token, []):
        r.move(PENDING, away_from=r.token)
        r.refresh()
    with r.store.errors(r.secret_id):
        r.store.client.tag_resource(SecretId=r.secret_id, Tags=[
            {"Key": "rotator:rotation-id", "Value": r.token},
            {"Key": "rotator:promoted-at", "Value": datetime.now(UTC).isoformat()}])


def _token_credentials(r: _Rotation) -> Credentials:
    """The credential in version ``token``, which must be AWSPENDING or AWSCURRENT."""
    if r.state() not in ("current", "pending"):
        raise RotationError(f"version {r.token} of {r.secret_id} is neither AWSPENDING nor "
                            "AWSCURRENT; run createSecret first")
    creds = r.value(VersionId=r.token)[1]
    if creds is None:
        raise RotationError(f"version {r.token} of {r.secret_id} holds no credential")
    return creds


_STEP = {"createSecret": create_secret, "setSecret": set_secret, "testSecret": test_secret,
         "finishSecret": finish_secret}
