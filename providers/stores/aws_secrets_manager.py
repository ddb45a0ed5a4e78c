"""AWS Secrets Manager as a secret store, with AWS's own staging labels (through boto3).

A client's location is a secret id (name or ARN). Its value is a JSON object: the keys
``client_id_key`` and ``client_secret_key`` hold the credential, every other key is copied
into each new version. CURRENT, PENDING and PREVIOUS are the versions labelled
``AWSCURRENT``, ``AWSPENDING`` (unless also ``AWSCURRENT``) and ``AWSPREVIOUS``; every read
names its label. ``promote`` moves ``AWSCURRENT`` (AWS moves ``AWSPREVIOUS`` itself), tags
the secret (``rotator:rotation-id``, ``rotator:promoted-at``), then removes ``AWSPENDING``;
repeated after a crash between any two, it finishes the job. It never undoes a write made
after staging: when ``AWSCURRENT``'s other keys changed meanwhile, it first restages them
with the staged credential (next generation) and promotes that.

A version's id is its ``ClientRequestToken``, which AWS wants 32-64 characters long; rotation
ids have 29, so versions are written as ``rotator.NN.<rotation id>`` (``NN`` a generation,
dot-padded to 32). The id says atomically which rotation wrote a version, so a retried stage
finds its own and any other ``AWSPENDING`` is foreign. AWS versions never change, so a
restage with another value writes the next generation. A secret created here first gets an
``AWSCURRENT`` placeholder ``{}`` (``rotator.empty.<hex>``): AWS labels a first version so.

A write carrying a fencing token (a daemon job holding the client's lease, see docs/ha.md)
compares it with the secret's tag ``rotator:fence``, from the ``DescribeSecret`` the write
starts from: an older token raises ``FencedOut`` and nothing is written; a newer one is
tagged before anything else is written. Tagging has no condition, so the check and the
write are separate requests; the label moves that follow name the version they take a
label from (``RemoveFromVersionId``), so a newer holder's promotion in between makes them
fail.

Requests, once signed, go through a bounded httpx client (:mod:`rotator._bounded_boto`):
each attempt has ``timeout`` seconds in all, not per read, and an answer of at most 1 MiB,
through the proxy the environment names (``HTTPS_PROXY``, ``NO_PROXY``).

Retries are botocore's ``standard`` mode (throttling, 5xx, connection errors; exponential
backoff with full jitter; ``max_attempts`` in all); none are added here. Errors: refusals
→ ``StoreAccessDenied`` naming ``secretsmanager:<Operation>``; unreachable, or throttled past
the retries → ``StoreUnavailable``; no such secret → ``None``/``StoreNotFound``. No botocore
exception leaves this module. docs/aws.md has the details and the IAM policy.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions as bex
import httpx
from botocore.config import Config

from rotator import _bounded
from rotator._bounded_boto import detail, send_through
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.interfaces import (
    Credentials,
    Location,
    RotationId,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.journal.fencing import recorded_fence, refuse_stale
from rotator.secrets import Secret, redact
from rotator.settings import Setting

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
_LABEL = {Stage.CURRENT: CURRENT, Stage.PENDING: PENDING, Stage.PREVIOUS: PREVIOUS}
_TAG_RID, _TAG_AT = "rotator:rotation-id", "rotator:promoted-at"
_TAG_FENCE = "rotator:fence"
_TOKEN = re.compile(r"^rotator\.(\d\d)\.\.*([^.].*)$")
_RID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,52}$")
_PLACEHOLDER = "rotator.empty."
_DENIED = {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
           "InvalidClientTokenId", "InvalidSignatureException", "ExpiredTokenException",
           "DecryptionFailure"}
_UNAVAILABLE = {"InternalServiceError", "ThrottlingException", "TooManyRequestsException",
                "ServiceUnavailable", "RequestTimeout"}


def version_token(rotation_id: RotationId, generation: int = 0) -> str:
    """The ``ClientRequestToken`` (and VersionId) of ``rotation_id``'s version."""
    if not _RID.match(rotation_id) or not 0 <= generation <= 99:
        raise StoreError(f"rotation id {rotation_id!r} cannot be part of an AWS version id")
    head = f"rotator.{generation:02d}."
    return head + "." * (32 - len(head) - len(rotation_id)) + rotation_id


def rotation_of(version_id: str | None) -> tuple[RotationId | None, int]:
    """The rotation id and generation a version id names, or (None, -1) if not rotator's."""
    match = _TOKEN.match(version_id or "")
    return (match.group(2), int(match.group(1))) if match else (None, -1)


def _placeholder(version_id: str | None) -> bool:
    return bool(version_id and version_id.startswith(_PLACEHOLDER))


def _error_of(exc: bex.ClientError) -> tuple[str, str]:
    """The error code and the redacted message; moto answers IAM refusals in XML."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    if message.lstrip().startswith("<"):
        xml = {k: re.search(f"<{k}>(.*?)</{k}>", message, re.S) for k in ("Code", "Message")}
        code = xml["Code"].group(1) if xml["Code"] else code
        message = xml["Message"].group(1) if xml["Message"] else ""
    return code, redact(message or code)


def _time(value: str | None) -> datetime | None:
    with suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(value))
    return None


@dataclass(frozen=True)
class _Meta:
    """What ``DescribeSecret`` says: labels per version and the secret's tags."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def holder(self, label: str) -> str | None:
        return next((v for v, stages in self.labels.items() if label in stages), None)

    def pending(self) -> str | None:
        """The version labelled AWSPENDING that is not also AWSCURRENT."""
        pending = self.holder(PENDING)
        return pending if pending and CURRENT not in self.labels[pending] else None


class AwsSecretsManagerStore:
    """Credentials as JSON in AWS Secrets Manager secrets, staged with AWS's labels."""

    LOCATION_KEY = "secret_id"
    SETTINGS: tuple[Setting, ...] = (
        Setting("region", help="AWS region; default from the environment or profile"),
        Setting("endpoint_url", help="e.g. a VPC endpoint; default: AWS's public endpoint"),
        Setting("profile", help="named profile from ~/.aws/config; default chain if unset"),
        Setting("kms_key_id", help="KMS key for secrets this store creates"),
        Setting("client_id_key", default="client_id", help="JSON key of the client id"),
        Setting("client_secret_key", default="client_secret", help="JSON key of the secret"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path", help="CA bundle for the endpoint's TLS certificate"),
        Setting("timeout", "duration", default=10.0),
        Setting("max_attempts", "int", default=5, help="attempts per call, retries included"),
    )

    def __init__(self, name: str, settings: dict[str, Any],
                 session: boto3.Session | None = None) -> None:
        self.name = name
        self._settings = settings
        self._session = session  # tests inject one with explicit credentials
        self.id_key = str(settings.get("client_id_key") or "client_id")
        self.secret_key = str(settings.get("client_secret_key") or "client_secret")
        self._client: SecretsManagerClient | None = None
        self._http: httpx.Client | None = None

    def __enter__(self) -> AwsSecretsManagerStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        s, where = self._settings, f"aws store {self.name!r}"
        timeout = float(s.get("timeout") or 10.0)
        config = Config(connect_timeout=timeout, read_timeout=timeout, retries={
            "mode": "standard", "total_max_attempts": int(s.get("max_attempts") or 5)})
        try:
            session = self._session or boto3.Session(profile_name=s.get("profile"))
            if session.get_credentials() is None:
                raise StoreAccessDenied(f"{where}: no AWS credentials found (environment, "
                                        "profile, container or instance role)")
            verify: str | bool = s.get("ca_file") or bool(s.get("tls_verify", True))
            self._client = session.client(
                "secretsmanager", region_name=s.get("region"), endpoint_url=s.get("endpoint_url"),
                verify=verify, config=config)
            self._http = _bounded.client(timeout=timeout, verify=verify)
        except bex.BotoCoreError as exc:  # ProfileNotFound, NoRegionError, ...
            raise StoreAccessDenied(f"{where}: {redact(str(exc))}") from exc
        except _bounded.ProxyRefused as exc:  # the environment's to fix: not retried
            raise StoreError(f"{where}: {exc}") from None
        send_through(self._client, "secrets-manager", self._http)

    def close(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.close()
            self._client = None
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def client(self) -> SecretsManagerClient:
        if self._client is None:
            raise StoreUnavailable(f"aws store {self.name!r} is not started")
        return self._client

    @contextmanager
    def errors(self, secret_id: str) -> Iterator[None]:
        """Translate every botocore error raised inside into a ``StoreError``."""
        where = f"aws store {self.name!r}: {secret_id}"
        try:
            yield
        except bex.ClientError as exc:
            code, remote = _error_of(exc)
            action = f"secretsmanager:{exc.operation_name}"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "ResourceNotFoundException":
                raise StoreNotFound(f"{where}: not found ({remote})") from exc
            if code in _DENIED or status in (401, 403):
                need = "kms:Decrypt on its KMS key" if code == "DecryptionFailure" else action
                raise StoreAccessDenied(f"{where}: access denied: the AWS identity needs "
                                        f"{need} ({code}: {remote})") from exc
            if code in _UNAVAILABLE or status >= 500:
                raise StoreUnavailable(f"{where}: {action} failed after retries: {remote}") \
                    from exc
            if code in ("ResourceExistsException", "InvalidRequestException"):
                raise StoreConflict(f"{where}: {action} refused: {remote}") from exc
            raise StoreError(f"{where}: {action} failed ({code}): {remote}") from exc
        except bex.NoCredentialsError as exc:
            raise StoreAccessDenied(f"{where}: no AWS credentials found") from exc
        except bex.ParamValidationError as exc:  # its report quotes values: cut them off
            report = re.sub(r"value: .*?(?=, valid |, type |$)", "value: (not shown)",
                            str(exc), flags=re.M)
            raise StoreError(f"{where}: invalid request: {redact(report)}") from exc
        except (bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
            raise StoreUnavailable(f"{where}: timed out: {redact(detail(exc))}") from exc
        except bex.ResponseStreamingError as exc:  # an answer refused as it arrived
            raise StoreUnavailable(f"{where}: answer refused: {redact(detail(exc))}") from exc
        except bex.BotoCoreError as exc:  # connection refused, closed connections
            raise StoreUnavailable(f"{where}: unreachable: {redact(str(exc))}") from exc

    # -- JSON values -----------------------------------------------------------------------

    def encode(self, base: dict[str, Any], credentials: Credentials) -> str:
        """``base`` with the credential set in it, as the JSON a version holds."""
        return json.dumps({**base, self.id_key: credentials.client_id,
                           self.secret_key: credentials.client_secret.reveal()})

    def decode(self, text: str | None, location: Location = "?",
               version: str = "?") -> tuple[dict[str, Any], Credentials | None]:
        """The JSON object a version holds, and the credential in it if there is one."""
        try:
            value = json.loads(text or "{}")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise StoreError(f"aws store {self.name!r}: {location} version {version}: the "
                             "value is not a JSON object")
        cid, secret = value.get(self.id_key), value.get(self.secret_key)
        if isinstance(cid, str) and isinstance(secret, str):
            return value, Credentials(cid, Secret(secret))
        return value, None

    def parse(self, location: Location, answer: Mapping[str, Any]
              ) -> tuple[dict[str, Any], Credentials | None]:
        """``decode`` for a ``GetSecretValue`` answer; a binary value is refused, not empty."""
        version = str(answer.get("VersionId") or "?")
        if answer.get("SecretString") is None and answer.get("SecretBinary") is not None:
            raise StoreError(f"aws store {self.name!r}: {location} version {version} holds a "
                             "binary value (SecretBinary), not a JSON object in SecretString; "
                             "rotator neither reads nor replaces it")
        return self.decode(answer.get("SecretString"), location, version)

    # -- AWS calls -------------------------------------------------------------------------

    def meta(self, location: Location) -> _Meta | None:
        """Labels and tags of ``location``, or None when there is no such secret."""
        try:
            with self.errors(location):
                answer = self.client.describe_secret(SecretId=location)
        except StoreNotFound:
            return None
        if answer.get("DeletedDate"):
            raise StoreConflict(f"aws store {self.name!r}: {location} is scheduled for "
                                "deletion; restore it (RestoreSecret) first")
        return _Meta({k: list(v) for k, v in answer.get("VersionIdsToStages", {}).items()},
                     {t["Key"]: t["Value"] for t in answer.get("Tags", [])})

    def _value(self, location: Location, label: str) -> Mapping[str, Any]:
        with self.errors(location):
            return self.client.get_secret_value(SecretId=location, VersionStage=label)

    def _version(self, location: Location, version: str) -> Mapping[str, Any]:
        with self.errors(location):
            return self.client.get_secret_value(SecretId=location, VersionId=version)

    def _label(self, location: Location, label: str, *, to: str | None = None,
               away_from: str | None = None) -> None:
        kwargs: dict[str, str] = {"MoveToVersionId": to} if to else {}
        if away_from:
            kwargs["RemoveFromVersionId"] = away_from
        with self.errors(location):
            self.client.update_secret_version_stage(
                SecretId=location, VersionStage=label, **kwargs)

    def _our_generations(self, location: Location, rotation_id: RotationId) -> list[int]:
        gens: list[int] = []
        kwargs: dict[str, str] = {}
        while True:
            with self.errors(location):
                page = self.client.list_secret_version_ids(
                    SecretId=location, IncludeDeprecated=True, MaxResults=100, **kwargs)
            gens += [g for rid, g in (rotation_of(v["VersionId"]) for v in page["Versions"])
                     if rid == rotation_id]
            if not page.get("NextToken"):
                return gens
            kwargs = {"NextToken": page["NextToken"]}

    def _fenced(self, location: Location, meta: _Meta | None, fence: int | None) -> None:
        """Refuse a write carrying an older ``fence`` than ``location``'s tag records, from
        ``meta`` (just described); tag a newer one. None: no such secret, nothing to fence."""
        if fence is None or meta is None:
            return
        recorded = recorded_fence(meta.tags.get(_TAG_FENCE))
        refuse_stale(f"aws store {self.name!r}: {location} (tag {_TAG_FENCE})", recorded,
                     fence)
        if recorded is None or fence > recorded:
            with self.errors(location):
                self.client.tag_resource(SecretId=location, Tags=[
                    {"Key": _TAG_FENCE, "Value": str(fence)}])
            meta.tags[_TAG_FENCE] = str(fence)

    # -- SecretStore -----------------------------------------------------------------------

    def read(self, location: Location, stage: Stage = Stage.CURRENT) -> StoredCredentials | None:
        try:
            got = self._value(location, _LABEL[stage])
        except StoreNotFound:
            return None
        version, created = str(got["VersionId"]), got["CreatedDate"]
        if _placeholder(version) or (stage is Stage.PENDING and CURRENT in got["VersionStages"]):
            return None
        creds = self.parse(location, got)[1]
        if creds is None:
            return None
        rid, at = rotation_of(version)[0], created
        if stage is Stage.CURRENT and rid:
            tags = (self.meta(location) or _Meta()).tags
            at = (_time(tags.get(_TAG_AT)) if tags.get(_TAG_RID) == rid else None) or created
        return StoredCredentials(creds, stage, version, rid, at)

    def facts(self, location: Location) -> StoreFacts:
        meta = self.meta(location)
        if meta is None:
            return StoreFacts(has_current=False)
        current, pending, previous = meta.holder(CURRENT), meta.pending(), meta.holder(PREVIOUS)
        rid = rotation_of(current)[0]
        since = _time(meta.tags.get(_TAG_AT)) if rid and meta.tags.get(_TAG_RID) == rid else None
        extra = {k: v for k, v in (("current_version", current), ("pending_version", pending),
                                   ("previous_version", previous)) if v}
        return StoreFacts(
            has_current=bool(current) and not _placeholder(current),
            current_rotation_id=rid, current_since=since,
            pending_rotation_id=rotation_of(pending)[0], has_pending=bool(pending),
            has_previous=bool(previous) and not _placeholder(previous), extra=extra)

    def check_writable(self, location: Location) -> None:
        # IAM cannot be asked without writing; this proves the secret is reachable, readable
        # and not being deleted. A missing write permission surfaces at the first write.
        self.meta(location)

    def stage_pending(self, location: Location, credentials: Credentials,
                      rotation_id: RotationId, *, replace_foreign: bool = False,
                      fence: int | None = None) -> None:
        version_token(rotation_id)  # refuse an unusable rotation id before anything else
        meta = self.meta(location)
        self._fenced(location, meta, fence)
        meta = meta or self._create(location)
        self._fenced(location, meta, fence)  # created just now: record the fence
        pending = meta.pending()
        owner = rotation_of(pending)[0]
        if pending and owner != rotation_id and not replace_foreign:
            raise StoreConflict(
                f"aws store {self.name!r}: {location} has AWSPENDING on version {pending} "
                f"(rotation {owner or 'not started by rotator'}); rotation {rotation_id} will "
                "not replace it")
        current = meta.holder(CURRENT)
        base = self.parse(location, self._value(location, CURRENT))[0] if current else {}
        text = self.encode(base, credentials)
        if pending and owner == rotation_id:
            with self.errors(location):
                staged = self.client.get_secret_value(SecretId=location, VersionId=pending)
            if self.parse(location, staged)[0] == json.loads(text):
                return  # this very value is staged already
        token = version_token(rotation_id, max(self._our_generations(location, rotation_id),
                                               default=-1) + 1)
        with self.errors(location):
            self.client.put_secret_value(SecretId=location, ClientRequestToken=token,
                                         SecretString=text, VersionStages=[PENDING])

    def _create(self, location: Location) -> _Meta:
        extra = {"KmsKeyId": self._settings["kms_key_id"]} if self._settings.get(
            "kms_key_id") else {}
        with suppress(StoreConflict), self.errors(location):  # someone created it meanwhile
            self.client.create_secret(
                Name=location, SecretString="{}", **extra,
                ClientRequestToken=_PLACEHOLDER + secrets.token_hex(16))
        meta = self.meta(location)
        if meta is None:
            raise StoreNotFound(f"aws store {self.name!r}: {location} vanished after creation")
        return meta

    def promote(self, location: Location, rotation_id: RotationId, *,
                fence: int | None = None) -> None:
        found = self.meta(location)
        self._fenced(location, found, fence)
        meta = found or _Meta()
        current, pending, previous = meta.holder(CURRENT), meta.pending(), meta.holder(PREVIOUS)
        if rotation_of(current)[0] != rotation_id:
            if not pending or rotation_of(pending)[0] != rotation_id:
                raise StoreConflict(
                    f"aws store {self.name!r}: {location} has no pending credential of "
                    f"rotation {rotation_id}, and its current one belongs to "
                    f"{rotation_of(current)[0] or 'no known rotation'}")
            pending = self._rebase(location, rotation_id, pending, current)
            self._label(location, CURRENT, to=pending, away_from=current)
            meta = _Meta((self.meta(location) or _Meta()).labels)  # tags: write them again
            current, previous = pending, current
        if meta.tags.get(_TAG_RID) != rotation_id:
            with self.errors(location):
                self.client.tag_resource(SecretId=location, Tags=[
                    {"Key": _TAG_RID, "Value": rotation_id},
                    {"Key": _TAG_AT, "Value": datetime.now(UTC).isoformat()}])
        if PENDING in meta.labels.get(current or "", []):
            self._label(location, PENDING, away_from=current)
        if _placeholder(previous):  # the secret had no credential before: nothing to keep
            self._label(location, PREVIOUS, away_from=previous)

    def _rebase(self, location: Location, rotation_id: RotationId, pending: str,
                current: str | None) -> str:
        """The version to promote: ``pending``, or, when someone changed the other keys of
        ``AWSCURRENT`` after staging (e.g. in the console), the next generation holding
        those keys and the staged credential, so that promoting undoes no one's write."""
        if not current or _placeholder(current):
            return pending
        base = self.parse(location, self._version(location, current))[0]
        staged, creds = self.parse(location, self._version(location, pending))
        if creds is None:
            raise StoreConflict(f"aws store {self.name!r}: {location} version {pending} holds "
                                "no credential to promote")
        if {k: v for k, v in base.items() if k != self.secret_key} == {
                k: v for k, v in staged.items() if k != self.secret_key}:
            return pending
        if base.get(self.id_key) not in (None, creds.client_id):
            raise StoreConflict(
                f"aws store {self.name!r}: {location}: {self.id_key!r} of AWSCURRENT (version "
                f"{current}) was changed after rotation {rotation_id} staged version {pending}; "
                "not promoting a credential of another client")
        token = version_token(rotation_id, max(self._our_generations(location, rotation_id),
                                               default=-1) + 1)
        with self.errors(location):
            self.client.put_secret_value(SecretId=location, ClientRequestToken=token,
                                         SecretString=self.encode(base, creds),
                                         VersionStages=[PENDING])
        return token

    def discard_pending(self, location: Location, rotation_id: RotationId, *,
                        fence: int | None = None) -> None:
        meta = self.meta(location)
        self._fenced(location, meta, fence)
        pending = (meta or _Meta()).pending()
        if pending and rotation_of(pending)[0] == rotation_id:
            self._label(location, PENDING, away_from=pending)

    def drop_previous(self, location: Location, rotation_id: RotationId, *,
                      fence: int | None = None) -> None:
        found = self.meta(location)
        self._fenced(location, found, fence)
        meta = found or _Meta()
        previous = meta.holder(PREVIOUS)
        if previous and rotation_of(meta.holder(CURRENT))[0] == rotation_id:
            self._label(location, PREVIOUS, away_from=previous)
