"""The interfaces every adapter implements, and the value types they exchange.

This module is the one place where the contracts are documented. Adapters live in
``providers/``, journals in :mod:`rotator.journal`; the engine (:mod:`rotator.engine`) only
ever talks to these protocols.

Lifecycle, as for every adapter: construct as ``Adapter(name, settings)`` with the settings
the config loader checked against ``SETTINGS`` (no I/O happens there), ``start()``
opens clients and authenticates, ``close()`` releases them and never raises.

Stages of a stored credential
-----------------------------
A store keeps up to three credentials per location, named after AWS Secrets Manager's labels:

``CURRENT``
    The credential consumers use. Always one that works (rotator's central promise).
``PENDING``
    A new credential written during a rotation, before it is verified and promoted.
    Tagged with the rotation id that wrote it, so a retried write is idempotent and a
    foreign pending credential is detected.
``PREVIOUS``
    The credential that was current before the last promotion, kept so that consumers can
    fall back to it during the grace period and so that a rotation can be audited.

How a store maps these onto its own model is documented in its module.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from rotator.secrets import Secret
from rotator.settings import Setting

#: Where a credential lives inside one store: a KV path, an env-variable prefix, a secret name.
Location = str
#: The OAuth ``client_id`` as the identity provider knows it.
ClientId = str
#: A rotation's unique id, ``r-<UTC timestamp>-<10 hex digits>`` (29 characters).
RotationId = str


class Stage(enum.StrEnum):
    """Which of a location's credentials to read."""

    CURRENT = "current"
    PENDING = "pending"
    PREVIOUS = "previous"


@dataclass(frozen=True)
class Credentials:
    """A client id and its secret."""

    client_id: ClientId
    client_secret: Secret


@dataclass(frozen=True)
class StoredCredentials:
    """A credential as read from a store, with what the store knows about it."""

    credentials: Credentials
    stage: Stage
    #: The store's own version id (KV version number, AWS VersionId, ...), if it has one.
    version: str | None = None
    #: The rotation that wrote this credential, if rotator wrote it.
    rotation_id: RotationId | None = None
    #: When this credential became current (for CURRENT and PREVIOUS).
    promoted_at: datetime | None = None


@dataclass(frozen=True)
class StoreFacts:
    """What a store records about a location's rotations; never secret values."""

    has_current: bool
    current_rotation_id: RotationId | None = None
    current_since: datetime | None = None
    pending_rotation_id: RotationId | None = None
    #: A PENDING credential or marker exists, whoever wrote it (its rotation id may be unknown).
    has_pending: bool = False
    has_previous: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class SecretStore(Protocol):
    """A place where client credentials are kept: Vault KV, AWS Secrets Manager, env files.

    Every write is idempotent for a given rotation id: the engine repeats a step after a
    crash without knowing whether the first attempt landed.

    Errors: every method raises only :class:`rotator.errors.StoreError` subclasses:
    ``StoreUnavailable`` (unreachable, sealed, timed out), ``StoreAccessDenied``,
    ``StoreConflict`` (another writer, a foreign pending credential), ``StoreNotFound``.

    Fencing: every write (``stage_pending``, ``write_current``, ``promote``,
    ``discard_pending``, ``drop_previous``) takes ``fence``, the fencing token of the
    client's lease a daemon job writes under (:class:`Lease`), or None (the CLI, one
    daemon: no lease). The store keeps, per location and out of the credential consumers
    read, the highest fence a write brought, and refuses a write whose fence is lower with
    ``FencedOut`` (a ``StoreConflict``), changing nothing. A write without a fence is not
    checked and keeps the record. docs/ha.md says how each store makes the check.
    """

    #: The key a client's ``stores = [{store = ..., <LOCATION_KEY> = ...}]`` entry uses.
    LOCATION_KEY: ClassVar[str]
    #: The keys the store's ``[stores.NAME]`` table accepts, checked by the config loader.
    #: A store may also define ``validate_location(location) -> str | None`` (a static
    #: method returning why a location is unusable), which the config check calls.
    #:
    #: Optional methods, used where a store has them (the engine falls back otherwise):
    #: ``read_with_facts(location) -> (StoredCredentials | None, StoreFacts)`` returns
    #: CURRENT and the facts from one look; ``write_current(location, credentials,
    #: rotation_id)`` writes ``credentials`` as CURRENT of ``rotation_id`` at once, keeping
    #: no PREVIOUS, and is idempotent like the writes below. The engine calls it instead
    #: of ``stage_pending`` only in a single-secret rotation, after the IdP issued the new
    #: secret: the old one no longer works, so neither a pending copy nor PREVIOUS protects
    #: anyone, and the store needs no pending check before the IdP is asked. ``promote``
    #: and ``drop_previous`` of that rotation then change nothing.
    SETTINGS: ClassVar[tuple[Setting, ...]]

    #: The name this store has in the configuration.
    name: str

    def start(self) -> None:
        """Open clients and authenticate. Raises ``StoreError`` if that fails."""
        ...

    def close(self) -> None:
        """Release clients. Never raises."""
        ...

    def read(self, location: Location, stage: Stage = Stage.CURRENT) -> StoredCredentials | None:
        """Return the credential at ``location`` in ``stage``, or ``None`` if there is none."""
        ...

    def facts(self, location: Location) -> StoreFacts:
        """Return the rotation facts recorded for ``location`` (no secret values)."""
        ...

    def check_writable(self, location: Location) -> None:
        """Raise ``StoreError`` if a rotation could not write ``location`` right now.

        Called before a rotation asks the identity provider for a new secret where a write
        refused afterwards could not be undone: single-secret IdPs, and IdPs that take a
        value rotator chooses. With an overlap IdP that generates the value, the engine
        skips it: a refused stage takes the new secret back at the IdP.
        """
        ...

    def stage_pending(
        self,
        location: Location,
        credentials: Credentials,
        rotation_id: RotationId,
        *,
        replace_foreign: bool = False,
        fence: int | None = None,
    ) -> None:
        """Write ``credentials`` as PENDING for ``rotation_id``; CURRENT is unchanged.

        Idempotent: staging the same rotation id again succeeds (and rewrites the value).
        Raises ``StoreConflict`` when a pending credential of another rotation is present,
        unless ``replace_foreign`` is set, which abandons it.
        """
        ...

    def promote(self, location: Location, rotation_id: RotationId, *,
                fence: int | None = None) -> None:
        """Make the PENDING credential of ``rotation_id`` CURRENT; the old CURRENT becomes PREVIOUS.

        Idempotent: when ``rotation_id`` is already CURRENT this does nothing. Raises
        ``StoreConflict`` when neither PENDING nor CURRENT belongs to ``rotation_id``.
        """
        ...

    def discard_pending(self, location: Location, rotation_id: RotationId, *,
                        fence: int | None = None) -> None:
        """Remove the PENDING credential of ``rotation_id``; absent already is fine."""
        ...

    def drop_previous(self, location: Location, rotation_id: RotationId, *,
                      fence: int | None = None) -> None:
        """Stop offering PREVIOUS once the identity provider retired it.

        ``rotation_id`` is the rotation whose promotion made that credential PREVIOUS; if
        CURRENT belongs to another rotation by now, nothing is changed. Idempotent.
        """
        ...


@dataclass(frozen=True)
class IdpCapabilities:
    """What an identity provider can do with one client's secrets.

    The engine picks its strategy from these, never from the adapter's name.
    """

    #: How many secrets may be valid at once: 1 means the old one dies when a new one exists.
    max_active_secrets: int
    #: Whether rotator may choose the new secret's value (else the IdP generates it).
    caller_sets_value: bool
    #: Whether an old secret can be revoked on its own once the new one is in use.
    can_revoke_old: bool
    #: Whether the admin API returns the current secret value (lets a crash recover it).
    can_read_current: bool
    #: Seconds a new secret may take to work at the token endpoint everywhere.
    propagation_delay: float = 0.0

    @property
    def overlap(self) -> bool:
        """Old and new secret can both be valid, so a failed rotation can roll back."""
        return self.max_active_secrets >= 2


@dataclass(frozen=True)
class IssuedSecret:
    """A secret the identity provider now accepts."""

    value: Secret
    #: The IdP's own id for this secret (Okta secret id, Entra keyId), if it has ids.
    secret_ref: str | None = None
    expires_at: datetime | None = None


@runtime_checkable
class IdentityProvider(Protocol):
    """An identity provider's admin API, as far as client secrets go.

    Errors: every method raises only :class:`rotator.errors.IdentityProviderError`
    subclasses: ``IdpUnavailable`` (5xx, timeout; retryable), ``IdpAccessDenied`` (names the
    missing role or permission), ``IdpNotFound`` (no such client).

    Discovery: an IdP type is an entry point in the group ``rotator.idps`` (stores:
    ``rotator.stores``) naming the adapter class; see :mod:`rotator.registry`.
    """

    #: The keys the IdP's ``[idps.NAME]`` table accepts, checked by the config loader.
    SETTINGS: ClassVar[tuple[Setting, ...]]
    #: The keys each ``[clients.NAME]`` table of this IdP accepts besides rotator's own (an
    #: application id, a registration URI and token, ...), checked by the config loader with
    #: the rest. They may not reuse a key of rotator's client table. An IdP that declares any
    #: must define ``configure_client(client_id, settings)``, called once per configured
    #: client after construction, before ``start()``, with that client's checked settings.
    #: It may also define ``validate_client_settings(settings) -> list[(key, reason)]``.
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]]

    #: The name this identity provider has in the configuration.
    name: str

    def start(self) -> None:
        """Open clients; may authenticate. Raises ``IdentityProviderError``."""
        ...

    def close(self) -> None:
        """Release clients. Never raises."""
        ...

    def default_token_endpoint(self) -> str | None:
        """The token endpoint clients of this IdP use, if the IdP can tell."""
        ...

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        """What this IdP can do for ``client_id`` (may depend on the client's policy)."""
        ...

    def create_secret(
        self, client_id: ClientId, rotation_id: RotationId, value: Secret | None
    ) -> IssuedSecret:
        """Give ``client_id`` a new secret and return it.

        ``value`` is given exactly when ``caller_sets_value``; otherwise the IdP generates
        one. With a single-secret IdP the old secret stops working here.
        """
        ...

    def current_secret(self, client_id: ClientId) -> Secret | None:
        """The secret the IdP holds as current, or ``None`` where it cannot tell."""
        ...

    def discard_secret(
        self, client_id: ClientId, issued: IssuedSecret, previous: Secret
    ) -> None:
        """Undo :meth:`create_secret` after a failed verification (overlap IdPs only).

        Afterwards ``previous`` is the client's secret again and ``issued`` is invalid.
        Idempotent.
        """
        ...

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        """Revoke every secret of ``client_id`` except ``keep``; return how many went.

        Called once the grace period has passed. Idempotent: nothing to revoke returns 0.
        """
        ...


class State(enum.StrEnum):
    """Where a rotation stands. Terminal states end with the rotation done or undone."""

    STARTED = "started"  # recorded; nothing changed anywhere yet
    STAGED = "staged"  # caller-chosen value written as PENDING before the IdP knows it
    CREATING = "creating"  # asking the IdP for a new secret; outcome unknown until CREATED
    CREATED = "created"  # the IdP accepts the new secret and every store holds it as PENDING
    VERIFIED = "verified"  # the new secret obtained a token
    PROMOTED = "promoted"  # the new secret is CURRENT everywhere; old awaits retirement
    ROLLING_BACK = "rolling_back"  # undoing a failed rotation
    COMPLETED = "completed"  # terminal: old secret retired
    ROLLED_BACK = "rolled_back"  # terminal: the new secret was discarded, the old one kept
    FAILED = "failed"  # terminal: stopped; see error (the stored current secret still works)

    @property
    def terminal(self) -> bool:
        return self in (State.COMPLETED, State.ROLLED_BACK, State.FAILED)


@dataclass(frozen=True)
class RotationTarget:
    """One store a rotation writes to, and where in it, as recorded when it began."""

    store: str
    location: Location


@dataclass(frozen=True)
class Rotation:
    """One rotation as the journal records it."""

    id: RotationId
    client: str
    state: State
    family: str  # "overlap" or "single", decided once when the rotation began
    actor: str  # who began it: cli, scheduler, api:<token name>
    started_at: datetime
    updated_at: datetime
    retire_after: datetime | None
    old_fingerprint: str | None
    new_fingerprint: str | None
    secret_ref: str | None
    error: str | None
    #: The stores the rotation writes to; empty for a rotation recorded before they were kept.
    targets: tuple[RotationTarget, ...] = ()
    #: Identifies the audit key its fingerprints were made with; ``None`` if not recorded.
    audit_key_id: str | None = None

    @property
    def awaiting_retirement(self) -> bool:
        """The new secret is current and the old one is kept valid until ``retire_after``."""
        return self.state is State.PROMOTED and self.family == "overlap"


@dataclass(frozen=True)
class AuditCheckpoint:
    """Where an audit log's chain stood, kept apart from the log (see
    :mod:`rotator.audit.checkpoints`): ``rotator audit verify --journal`` reports a log that
    ends before, or differs at, a checkpoint."""

    log: str  # the log file's absolute path, as its writer opened it
    key_id: str  # the audit key that sealed it: 8 hex digits, as ``Rotation.audit_key_id``
    seq: int  # the sequence number of the last record written
    chain: str  # that record's chain value (64 hex digits)
    at: datetime  # when it was recorded, UTC


@dataclass(frozen=True)
class Lease:
    """A time-limited claim on one client by one holder (a daemon), with its fencing token.

    ``token`` grows by one with every new holder of the client's lease and never goes back,
    so a write carrying it can be refused once a newer holder exists: a holder that paused
    past ``expires_at`` (GC pause, SIGSTOP, a partition) cannot act on what it knew before.
    ``expires_at`` is on the journal's clock (the database server's, for a shared journal).
    """

    client: str
    holder: str
    token: int
    expires_at: datetime


class Step(NamedTuple):
    """One state a rotation reached, with the fields that changed then (no secret values)."""

    at: datetime
    state: State
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class HookRun:
    """What the journal knows of one hook for one rotation and stage (see :mod:`rotator.hooks`).

    ``status`` is ``running`` (an attempt began; a crash may have cut it short), ``succeeded``,
    ``failed`` (retried from ``next_attempt_at``) or ``superseded`` (a newer rotation of the
    client became current first: not retried). ``error`` holds no secret value.
    """

    rotation_id: RotationId
    client: str
    stage: str  # "promoted" or "retired"
    hook: str  # the hook's name, unique among a client's hooks
    status: str  # running | succeeded | failed | superseded
    attempts: int
    required: bool
    updated_at: datetime
    next_attempt_at: datetime | None = None
    error: str | None = None


class RetirementGate(Protocol):
    """Says whether an old secret may be retired yet: retirement waits while any gate holds.

    The engine asks every gate once a rotation's grace period is over (and before the
    ``retire`` command retires); a gate answers with the reason to wait (one line, no secret
    value) or None. Required hooks are one gate (:class:`rotator.hooks.runner.HookRunner`);
    "retire when no consumer uses the old secret" is meant to be another. A gate may raise
    ``RotationError`` when it cannot tell (the rotation then stops and is resumed later).
    """

    def holds(self, client: Any, rotation: Rotation) -> str | None:
        """Why ``rotation``'s old secret must not be retired now, or None.

        ``client`` is the client's ``rotator.config.ClientConfig``.
        """
        ...


@runtime_checkable
class Journal(Protocol):
    """The durable record of every rotation and each step it completed, and the per-client lock.

    The engine records a step only after it took effect, so a run killed anywhere is resumed
    from the journal by the next one. A journal holds fingerprints and the IdP's secret ids,
    never a secret value; ``error`` text is passed through :func:`rotator.secrets.redact`
    before it is stored.

    Every method may be called from any thread, concurrently. Several processes (or, for a
    networked journal, several replicas) may share one journal: ``lock`` keeps two of them
    from driving the same client, and the check-and-set of :meth:`advance` and the
    one-open-rotation rule of :meth:`begin` keep a writer that lost the lock (a lease that
    expired, a process that was paused) from moving a rotation on stale knowledge.

    Errors: every method raises only :class:`rotator.errors.RotationError` subclasses:
    ``JournalConflict`` (a check-and-set lost), ``RotationLocked`` (``lock`` timed out),
    ``RotationError`` (unreachable, unknown rotation id, a corrupt record).
    """

    def begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
              old_fingerprint: str | None, now: datetime, *,
              targets: Sequence[RotationTarget] = (),
              audit_key_id: str | None = None, then: State | None = None) -> Rotation:
        """Record a new rotation of ``client`` in state ``STARTED`` and return it.

        ``targets`` and ``audit_key_id`` are kept with it, so that a reload that changes the
        client's stores or the audit key cannot misdirect it. With ``then`` (an open state,
        e.g. ``CREATING`` when the IdP makes the new value), the rotation is moved on to
        ``then`` in the same transaction, as :meth:`advance` would: both steps are recorded
        and the rotation returned is in ``then``; one commit instead of two. Raises
        ``JournalConflict`` (recording nothing) when ``rotation_id`` exists already or
        ``client`` has an open (non-terminal) rotation, and ``RotationError`` when
        ``rotation_id`` is not usable as a store tag (``[A-Za-z0-9][A-Za-z0-9_.-]{0,52}``).
        """
        ...

    def advance(self, rotation_id: RotationId, state: State, now: datetime, *,
                expected: State, **fields: str | None) -> Rotation:
        """Move ``rotation_id`` from ``expected`` to ``state`` and return the new record.

        ``fields`` set ``retire_after``, ``new_fingerprint``, ``secret_ref`` or ``error``;
        ``expires_at`` (when the IdP said a new secret expires) is kept in the step's detail.
        Check-and-set: raises ``JournalConflict`` (changing nothing) when the rotation is not
        in ``expected``, i.e. another writer moved it since this one read it.
        """
        ...

    def get(self, rotation_id: RotationId) -> Rotation:
        """The rotation ``rotation_id``; ``RotationError`` if there is none."""
        ...

    def open_rotation(self, client: str) -> Rotation | None:
        """The client's unfinished (non-terminal) rotation, if any."""
        ...

    def latest(self, client: str) -> Rotation | None:
        """The client's most recently begun rotation, if any."""
        ...

    def last_success(self, client: str) -> Rotation | None:
        """The client's newest rotation whose new secret became current."""
        ...

    def steps(self, rotation_id: RotationId) -> list[Step]:
        """The states ``rotation_id`` reached, oldest first."""
        ...

    def record_hook_run(self, run: HookRun) -> None:
        """Store ``run``, replacing the record of the same (rotation_id, stage, hook).

        Hooks (:mod:`rotator.hooks`) record an attempt as ``running`` before it starts and
        its result after, so that each runs once per rotation even across a crash.
        """
        ...

    def hook_runs(self, rotation_id: RotationId) -> list[HookRun]:
        """Every hook run recorded for ``rotation_id``, in the order first recorded."""
        ...

    def unfinished_hook_runs(self) -> list[HookRun]:
        """Every hook run ``running`` or ``failed``, of any rotation, oldest first: the retry
        queue."""
        ...

    def lock(self, client: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        """Hold ``client``'s rotation lock for a ``with`` block.

        Waits up to ``wait`` seconds for another holder, then raises ``RotationLocked``.
        The holder's death releases it (a kernel lock, a lease that expires). Not reentrant.
        """
        ...

    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        """Keep ``checkpoint`` (one row per ``log``, ``key_id``, ``seq``; recording a
        ``seq`` already kept for that log and key changes nothing: the first one stays).

        Called by the audit log's writer now and then (every so many records or seconds, and
        when it closes), never with a secret. Raises ``RotationError`` when it cannot be kept;
        the caller logs and counts that and goes on.
        """
        ...

    def audit_checkpoints(self, log: str, key_id: str) -> list[AuditCheckpoint]:
        """Every checkpoint kept for ``log`` sealed with ``key_id``, by ascending ``seq``."""
        ...

    def acquire_lease(self, client: str, holder: str, ttl: float) -> Lease | None:
        """Take ``client``'s lease for ``ttl`` seconds, or ``None`` while another holds it.

        Succeeds when nobody holds the lease or its holder let it expire (then the new
        lease has the next fencing token). Not reentrant: a holder that asks again while
        its lease runs gets ``None``; it extends with :meth:`renew_lease`.
        """
        ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """Extend ``lease`` to ``ttl`` seconds from now, keeping its token.

        Raises ``LeaseLost`` when a newer holder took the lease (an expired lease that
        nobody took is renewed).
        """
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give ``lease`` up at once; nothing happens if a newer holder took it already."""
        ...

    def fenced(self, lease: Lease) -> Journal:
        """This journal, with every write for ``lease.client`` carrying ``lease``'s token.

        :meth:`begin` and :meth:`advance` through it check, in the same transaction as the
        write, that ``lease`` is still the client's newest lease, and raise ``LeaseLost``
        (changing nothing) when a newer holder took it over; a write for another client is
        refused the same way. Reads and the rest pass through. Closing it closes nothing.
        """
        ...

    def close(self) -> None:
        """Release connections. Never raises."""
        ...


@runtime_checkable
class ClientState(Protocol):
    """A durable, secret-safe place for one per-client value an identity provider hands out
    and changes on use, such as an RFC 7592 registration access token.

    The engine builds one per client for an IdP that names a location for it (see
    :class:`rotator.engine.client_state.StoreClientState`): the value lives as CURRENT of a
    location in a configured :class:`SecretStore`, written with that store's own atomic,
    private write (0600 for files), never in the journal or a log. An adapter calls
    :meth:`save` with a new value *before* it acts on it or returns anything that depends on
    it, so that a crash after ``save`` returns cannot lose the value.

    Discovery: an IdP that needs one defines ``client_state_location(client_id) -> (store,
    location) | None`` and ``bind_client_state(client_id, state)``; the engine calls the
    second for every configured client the first names a location for, before ``start()``.

    Errors: both methods raise only :class:`rotator.errors.StoreError` subclasses.
    """

    def load(self) -> Secret | None:
        """The value last saved (or put there by an operator), or ``None`` if there is none."""
        ...

    def save(self, value: Secret) -> None:
        """Replace the value; durable when this returns."""
        ...
