"""HashiCorp Vault or OpenBao KV version 2 as a secret store (through hvac).

A client's location is a KV path ``P`` under ``mount``; a consumer running ``bao kv get P``
always sees a working credential:

``CURRENT``
    The latest version of ``P``: ``{"client_id": ..., "client_secret": ...}``; other keys in
    the data are kept on every write. A soft-deleted latest version reads as none.
``PENDING``
    The latest version of the sibling path ``P.pending``. Its data holds the credential and
    ``rotator_rotation_id``: only data writes are checked-and-set, so the data alone says
    atomically whose credential it is (older versions of rotator also put the id in its
    ``custom_metadata``, which is still read). Discarding deletes the sibling's metadata and
    all its versions.
``PREVIOUS``
    An older version of ``P``, named in ``P``'s ``custom_metadata``:

    ================================  ===================================================
    ``rotator_rotation_id``           rotation that wrote CURRENT
    ``rotator_promoted_at``           when it did (ISO 8601, UTC)
    ``rotator_current_version``       the version it wrote; the facts hold while it is latest
    ``rotator_previous_version``      the PREVIOUS version; absent when none or dropped
    ``rotator_previous_rotation_id``  rotation that wrote PREVIOUS, if rotator did
    ``rotator_fence``                 highest fencing token a daemon's write brought
    ================================  ===================================================

    KV refuses empty metadata values, so a cleared fact is a missing key. Nothing here limits
    or destroys versions.

Every data write passes ``cas`` = the version read before (0 to create), so two writers
cannot clobber each other; a failed check-and-set raises ``StoreConflict``. ``promote``
writes ``P``, then ``P``'s metadata, then deletes ``P.pending``; after a crash between any
two of these a retried ``promote`` finishes the job.

A write carrying a fencing token (a daemon job holding the client's lease, see docs/ha.md)
first reads ``P`` afresh (one request, which the write then starts from instead of a
remembered read) and raises ``FencedOut`` if its ``rotator_fence`` is higher than the
write's token; if lower, it records the token there (one metadata write per new holder)
before writing anything else. The check and the write are separate requests, since KV
metadata has no check-and-set; but every data write that follows is checked-and-set against
that read, so a newer holder's data write in between still makes it fail.

Requests: one read of a path (``GET data/P``) brings its data, version and custom metadata.
The writes of a rotation (stage, promote, drop) start from the store's last read or write of
a path if it is at most ``_MEMO_SECONDS`` old instead of reading it again; that is safe
because every data write is checked-and-set: if the path changed since, the write fails with
``StoreConflict`` and is forgotten, so the engine's next attempt starts from a fresh read.
``read`` and ``facts`` always ask Vault. ``stage_pending`` writes ``P.pending`` with
``cas`` = 0 without reading it first (rotator leaves no versions there), and reads it only
when that fails, to tell its own earlier attempt from a foreign credential.
``write_current`` (single-secret rotations) writes ``P`` and its metadata without a pending
copy or PREVIOUS; ``promote`` of that rotation then does nothing.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

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
    import hvac
    import hvac.exceptions as hv
    import requests

#: Packages this adapter needs, imported on first use (so ``config check`` loads none of
#: them); the registry checks that they are installed.
REQUIRES = ("hvac", "requests")

_RID = "rotator_rotation_id"
_AT = "rotator_promoted_at"
_CUR = "rotator_current_version"
_PREV = "rotator_previous_version"
_PREV_RID = "rotator_previous_rotation_id"
_OURS = (_RID, _AT, _CUR, _PREV, _PREV_RID)
#: Kept by every metadata write (not in _OURS, which a promotion rewrites).
_FENCE = "rotator_fence"
#: How long a path as last read or written may stand in for a fresh read before a write.
_MEMO_SECONDS = 30.0


def _mount_problem(mount: str) -> str | None:
    """Why ``mount`` is not a plain mount path such as ``secret`` or ``team/kv``, or None.

    One trailing '/' is accepted (Vault lists mounts as ``secret/``) and dropped.
    """
    if any(c in mount for c in "?#%\\") or not mount.isprintable() or any(
            c.isspace() for c in mount):
        return "must not contain '?', '#', '%', '\\', spaces or control characters"
    path = mount[:-1] if mount.endswith("/") else mount
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        return ("must be a mount path such as secret or team/kv: no empty, '.' or '..' "
                "segments, no leading '/' and at most one trailing '/'")
    return None


def _time(value: object) -> datetime | None:
    with suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None


def _creds(data: dict[str, Any] | None) -> Credentials | None:
    cid, secret = (data or {}).get("client_id"), (data or {}).get("client_secret")
    if isinstance(cid, str) and isinstance(secret, str):
        return Credentials(cid, Secret(secret))
    return None


def _stored(
    creds: Credentials | None, stage: Stage, version: object, rid: str | None, at: datetime | None
) -> StoredCredentials | None:
    return None if creds is None else StoredCredentials(creds, stage, str(version), rid, at)


def _remote(exc: hv.VaultError) -> str:
    errors = exc.errors or [str(exc.args[0] if exc.args else "")]
    text = errors if isinstance(errors, str) else "; ".join(map(str, errors))
    return redact(text.strip() or type(exc).__name__)


@functools.cache
def _http() -> tuple[type[Exception], type[requests.Session]]:
    """The redirect refusal and the session class, defined when requests is first needed."""
    import requests

    class _RedirectRefused(requests.RequestException):
        """Vault answered with a redirect that rotator will not follow."""

    class _SameOriginSession(requests.Session):
        """Follows a redirect only to the same host and port over https.

        requests re-sends ``X-Vault-Token`` and a 307's body (an AppRole ``secret_id``) to
        wherever a redirect points; anything else is refused before a byte goes there.
        """

        def get_redirect_target(self, resp: requests.Response) -> str | None:
            target = super().get_redirect_target(resp)
            if target is None:
                return None
            old, new = urlsplit(resp.url), urlsplit(urljoin(resp.url, target))
            if new.scheme != "https" or (new.hostname, new.port) != (old.hostname, old.port):
                resp.close()
                raise _RedirectRefused(
                    f"{old.scheme}://{old.netloc} redirected to {new.scheme}://{new.hostname}"
                    f"{f':{new.port}' if new.port else ''}; rotator follows redirects only to the "
                    "same host over https (point url at the active node)"
                )
            return target

    return _RedirectRefused, _SameOriginSession


def _session(url: str, verify: str | bool) -> tuple[requests.Session, str | bool]:
    """A session for ``url`` that reads the environment once, here, instead of per request.

    requests, trusting the environment, scans every variable for proxy settings and looks
    for a netrc file on each request (about 4 ms of a rotation's CPU at ten requests). The
    proxy for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``) and a CA bundle named by
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` are read now and fixed for the session's life,
    as requests would have applied them; netrc is not read (Vault takes a token header).
    """
    import requests

    session = _http()[1]()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(url)
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session, verify


def _current(entry: _Entry) -> StoredCredentials | None:
    rid = entry.current_rid
    at = _time(entry.custom.get(_AT)) if rid else None
    return _stored(entry.creds, Stage.CURRENT, entry.version, rid, at or entry.created)


def _facts(entry: _Entry, staged: _Entry) -> StoreFacts:
    rid = entry.current_rid if entry.creds else None
    extra = {"kv_version": str(entry.version)}
    for key in (_PREV, _PREV_RID):
        if key in entry.custom:
            extra[key.removeprefix("rotator_")] = entry.custom[key]
    return StoreFacts(
        has_current=entry.creds is not None,
        current_rotation_id=rid,
        current_since=(_time(entry.custom.get(_AT)) if rid else None) or entry.created,
        pending_rotation_id=staged.owner if staged.data is not None else None,
        has_pending=staged.data is not None,
        has_previous=entry.custom.get(_PREV, "").isdigit(),
        extra=extra,
    )


@dataclass(frozen=True)
class _Entry:
    """A KV path as read: latest version (0: no path), its data (None: deleted), metadata."""

    version: int = 0
    data: dict[str, Any] | None = None
    custom: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None

    @property
    def creds(self) -> Credentials | None:
        return _creds(self.data)

    @property
    def owner(self) -> RotationId | None:
        """The rotation that staged this pending credential."""
        owner = (self.data or {}).get(_RID) or self.custom.get(_RID)
        return owner if isinstance(owner, str) else None

    @property
    def current_rid(self) -> RotationId | None:
        """The rotation that wrote the latest version, if the metadata still describes it."""
        return self.custom.get(_RID) if self.custom.get(_CUR) == str(self.version) else None


class VaultStore:
    """Credentials in a Vault or OpenBao KV v2 mount, with PREVIOUS kept as an old version."""

    LOCATION_KEY = "path"
    SETTINGS: tuple[Setting, ...] = (
        Setting("url", required=True, help="Vault address, e.g. https://vault:8200"),
        Setting("mount", default="secret", help="KV version 2 mount point"),
        Setting("namespace", help="Vault Enterprise / OpenBao namespace"),
        Setting("auth", default="token", choices=("token", "approle")),
        Setting("token", secret=True, help="Vault token"),
        Setting("role_id", help="AppRole role id"),
        Setting("secret_id", secret=True, help="AppRole secret id"),
        Setting("approle_mount", default="approle"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path", help="CA bundle for Vault's TLS certificate"),
        Setting("timeout", "duration", default=10.0),
    )

    @staticmethod
    def validate_location(location: Location) -> str | None:
        """Why ``location`` is not a plain KV path under the mount, or None when it is."""
        if any(c in location for c in "?#%\\") or not location.isprintable():
            return "must not contain '?', '#', '%', '\\' or control characters"
        segments = location.split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            return ("must be a KV path such as apps/payments: no empty, '.' or '..' segments, "
                    "no leading or trailing '/'")
        if location.endswith(".pending"):
            return "must not end in '.pending': that is where a pending credential is staged"
        return None

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The mounts become parts of request paths: refuse any that would leave theirs."""
        problems = []
        for key in ("mount", "approle_mount"):
            value = settings.get(key)
            reason = _mount_problem(value) if isinstance(value, str) else None
            if reason:
                problems.append((key, reason))
        return problems

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self._settings = settings
        self._url: str = settings["url"]
        self._mount = str(settings.get("mount") or "secret").strip("/")
        self._timeout = float(settings.get("timeout") or 10.0)
        self._client: hvac.Client | None = None
        #: The token in use (given, or from the AppRole login), held for redaction.
        self._token: Secret | None = None
        # path -> (monotonic time, entry): the last read or write of each path (see above).
        self._memo: dict[str, tuple[float, _Entry]] = {}
        #: (path, rotation id) pairs this process wrote as CURRENT with ``write_current``.
        self._direct: set[tuple[str, RotationId]] = set()

    def __enter__(self) -> VaultStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self, path: str, capability: str) -> Iterator[None]:
        """Translate every hvac and requests error raised inside into a ``StoreError``."""
        import hvac.exceptions as hv
        import requests

        where = f"vault store {self.name!r}"
        refused, _ = _http()
        try:
            yield
        except hv.VaultDown as exc:
            state = "sealed" if "sealed" in _remote(exc).lower() else "unavailable (HTTP 503)"
            raise StoreUnavailable(f"{where}: {self._url} is {state}") from exc
        except (hv.Forbidden, hv.Unauthorized) as exc:
            raise StoreAccessDenied(
                f"{where}: permission denied: the token lacks {capability!r} on {path} "
                "(or is invalid or expired)"
            ) from exc
        except hv.InvalidRequest as exc:
            if path.endswith("/login"):
                raise StoreAccessDenied(
                    f"{where}: login at {path} refused: {_remote(exc)}"
                ) from exc
            if "check-and-set" in _remote(exc):
                raise StoreConflict(
                    f"{where}: {path} was changed by another writer (check-and-set failed)"
                ) from exc
            raise StoreError(f"{where}: {path}: {_remote(exc)}") from exc
        except hv.InvalidPath as exc:
            raise StoreNotFound(f"{where}: {path} not found (no KV v2 mount?)") from exc
        except hv.VaultError as exc:
            raise StoreUnavailable(f"{where}: {path}: {_remote(exc)}") from exc
        except refused as exc:
            raise StoreUnavailable(f"{where}: {path}: {redact(str(exc))}") from exc
        except requests.Timeout as exc:
            raise StoreUnavailable(
                f"{where}: {self._url} is unreachable (no answer within {self._timeout:g}s)"
            ) from exc
        except requests.RequestException as exc:
            raise StoreUnavailable(
                f"{where}: {self._url} is unreachable: {redact(str(exc))}"
            ) from exc

    def _call(
        self, method: str, path: str, capability: str, body: dict[str, Any] | None = None,
        *, body_of_404: bool = False,
    ) -> dict[str, Any] | None:
        """One API request: its JSON body, ``{}`` for 204, ``None`` for 404.

        With ``body_of_404`` a 404 returns its JSON body instead (KV v2 answers a deleted
        latest version with a 404 that still holds its metadata), ``{}`` if it has none.
        """
        if self._client is None:
            raise StoreUnavailable(f"vault store {self.name!r} is not started")
        url, _, query = path.partition("?")
        # Every segment quoted: a value that slipped past validation stays one path segment.
        quoted = "/".join(quote(segment, safe="") for segment in url.split("/"))
        import hvac.exceptions as hv

        with self._errors(url, capability):
            try:
                answer = self._client.adapter.request(
                    method, f"/v1/{quoted}" + (f"?{query}" if query else ""), json=body
                )
            except hv.InvalidPath as exc:
                if body_of_404:
                    return exc.json if isinstance(exc.json, dict) else {}
                return None
        return answer if isinstance(answer, dict) else {}

    def start(self) -> None:
        self.close()
        s, where = self._settings, f"vault store {self.name!r}"
        token, approle = s.get("token"), s.get("auth") == "approle"
        self._token = token if isinstance(token, Secret) and not approle else None
        if not approle and not isinstance(token, Secret):
            raise StoreAccessDenied(
                f"{where}: auth is 'token' but no token is set; give token_env or token_file"
            )
        if approle and not (s.get("role_id") and isinstance(s.get("secret_id"), Secret)):
            raise StoreAccessDenied(
                f"{where}: auth is 'approle' but role_id or secret_id_env/secret_id_file is missing"
            )
        import hvac

        verify: str | bool = s.get("ca_file") or bool(s.get("tls_verify", True))
        session, verify = _session(self._url, verify)
        self._client = client = hvac.Client(
            url=self._url,
            token=token.reveal() if isinstance(token, Secret) else None,
            verify=verify,
            timeout=self._timeout,  # type: ignore[arg-type]  # requests takes a float
            namespace=s.get("namespace") or None,
            session=session,
        )
        mount = str(s.get("approle_mount") or "approle").strip("/")
        try:
            if approle:
                with self._errors(f"auth/{mount}/login", "update"):
                    answer = client.auth.approle.login(
                        role_id=s["role_id"], secret_id=s["secret_id"].reveal(),
                        mount_point=mount, use_token=False,
                    )
                auth = answer.get("auth") if isinstance(answer, dict) else None
                login_token = auth.get("client_token") if isinstance(auth, dict) else None
                if not isinstance(login_token, str) or not login_token:
                    raise StoreAccessDenied(f"{where}: login at auth/{mount}/login gave no token")
                # hvac needs the plain value; the Secret makes it redactable everywhere.
                self._token = Secret(login_token)
                client.token = self._token.reveal()
            with self._errors("auth/token/lookup-self", "read"):
                if not client.is_authenticated():
                    raise StoreAccessDenied(
                        f"{where}: the token is not accepted (invalid, expired or revoked)"
                    )
        except StoreError:
            self.close()
            raise

    def close(self) -> None:
        self._memo.clear()
        if self._client is not None:
            with suppress(Exception):
                self._client.adapter.close()
            self._client = None

    # -- KV v2 ----------------------------------------------------------------------------

    def _paths(self, location: Location) -> tuple[str, str]:
        problem = self.validate_location(location)
        if problem:
            raise StoreError(f"vault store {self.name!r}: location {location!r} {problem}")
        return location, location + ".pending"

    def _version(self, path: str, version: int) -> tuple[dict[str, Any] | None, datetime | None]:
        answer = self._call("GET", f"{self._mount}/data/{path}?version={version}", "read")
        body = (answer or {}).get("data") or {}
        return body.get("data"), _time((body.get("metadata") or {}).get("created_time"))

    def _latest(self, path: str, *, memo: bool = False) -> _Entry:
        """``path`` as it is now (one request), or with ``memo`` as last seen, if recently."""
        seen = self._memo.get(path)
        if memo and seen is not None and time.monotonic() - seen[0] <= _MEMO_SECONDS:
            return seen[1]
        answer = self._call("GET", f"{self._mount}/data/{path}", "read", body_of_404=True)
        body = (answer or {}).get("data") or {}
        meta = body.get("metadata") or {}
        data = body.get("data")
        return self._remember(path, _Entry(
            int(meta.get("version") or 0), data if isinstance(data, dict) else None,
            dict(meta.get("custom_metadata") or {}), _time(meta.get("created_time"))))

    def _remember(self, path: str, entry: _Entry) -> _Entry:
        self._memo[path] = (time.monotonic(), entry)
        return entry

    def _write(self, path: str, data: dict[str, Any], cas: int) -> int:
        body = {"data": data, "options": {"cas": cas}}
        try:
            answer = self._call("POST", f"{self._mount}/data/{path}", "create/update", body)
        except StoreError:
            self._memo.pop(path, None)
            raise
        version = int(((answer or {}).get("data") or {}).get("version") or cas + 1)
        seen = self._memo.get(path)
        custom = seen[1].custom if seen else {}
        self._remember(path, _Entry(version, data, custom, datetime.now(UTC)))
        return version

    def _set_custom(self, path: str, entry: _Entry, custom: dict[str, str]) -> None:
        self._memo.pop(path, None)
        self._call("POST", f"{self._mount}/metadata/{path}", "update", {"custom_metadata": custom})
        self._remember(path, _Entry(entry.version, entry.data, custom, entry.created))

    def _delete(self, path: str) -> None:
        self._memo.pop(path, None)
        self._call("DELETE", f"{self._mount}/metadata/{path}", "delete")
        self._remember(path, _Entry())

    def _fenced(self, location: Location, main: str, fence: int | None) -> None:
        """Refuse a write carrying an older ``fence`` than ``main`` records; record a newer
        one. Reads ``main`` afresh, so the write that follows starts from this read."""
        if fence is None:
            return
        entry = self._latest(main)
        custom = entry.custom
        if entry.version == 0:  # no version: GET data shows no metadata; it may still exist
            answer = self._call("GET", f"{self._mount}/metadata/{main}", "read") or {}
            custom = dict((answer.get("data") or {}).get("custom_metadata") or {})
        recorded = recorded_fence(custom.get(_FENCE))
        refuse_stale(f"vault store {self.name!r}: {location!r} (custom metadata {_FENCE} of "
                     f"{main})", recorded, fence)
        if recorded is None or fence > recorded:
            self._set_custom(main, replace(entry, custom=custom),
                             {**custom, _FENCE: str(fence)})

    # -- SecretStore ----------------------------------------------------------------------

    def read(self, location: Location, stage: Stage = Stage.CURRENT) -> StoredCredentials | None:
        main, pending = self._paths(location)
        if stage is Stage.PENDING:
            entry = self._latest(pending)
            return _stored(entry.creds, stage, entry.version, entry.owner, None)
        entry = self._latest(main)
        if stage is Stage.CURRENT:
            return _current(entry)
        previous = entry.custom.get(_PREV, "")
        if not previous.isdigit():
            return None
        data, created = self._version(main, int(previous))
        return _stored(_creds(data), stage, previous, entry.custom.get(_PREV_RID), created)

    def facts(self, location: Location) -> StoreFacts:
        main, pending = self._paths(location)
        return _facts(self._latest(main), self._latest(pending))

    def read_with_facts(self, location: Location) -> tuple[StoredCredentials | None, StoreFacts]:
        """The CURRENT credential and the location's facts, from one read of each path."""
        main, pending = self._paths(location)
        entry = self._latest(main)
        return _current(entry), _facts(entry, self._latest(pending))

    def check_writable(self, location: Location) -> None:
        main, pending = self._paths(location)
        exists, m = self._latest(main, memo=True).version > 0, self._mount
        needed = {
            f"{m}/data/{main}": ("read", "update" if exists else "create"),
            f"{m}/metadata/{main}": ("read", "update"),
            f"{m}/data/{pending}": ("read", "create", "update"),
            f"{m}/metadata/{pending}": ("read", "update", "delete"),
        }
        body = {"paths": list(needed)}
        answer = self._call("POST", "sys/capabilities-self", "update", body) or {}
        caps = answer.get("data") or answer
        have = {path: set(caps.get(path) or ()) for path in needed}
        missing = [
            f"{', '.join(c for c in want if c not in have[path])} on {path}"
            for path, want in needed.items()
            if "root" not in have[path] and not have[path].issuperset(want)
        ]
        if missing:
            raise StoreAccessDenied(
                f"vault store {self.name!r}: the token cannot rotate "
                f"{location!r}: it lacks {'; '.join(missing)}"
            )

    def stage_pending(
        self,
        location: Location,
        credentials: Credentials,
        rotation_id: RotationId,
        *,
        replace_foreign: bool = False,
        fence: int | None = None,
    ) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        secret = credentials.client_secret.reveal()
        data = {"client_id": credentials.client_id, "client_secret": secret, _RID: rotation_id}
        if pending not in self._memo and not replace_foreign:
            # No read first: a pending path rotator left has no versions (it deletes the
            # metadata), so a write with cas=0 creates it; anything there makes it fail.
            try:
                self._write(pending, data, cas=0)
                return
            except StoreConflict:
                pass  # something is there: look at whose it is
        entry = self._latest(pending, memo=True)
        if entry.data is not None and entry.owner != rotation_id and not replace_foreign:
            raise StoreConflict(
                f"vault store {self.name!r}: {location!r} holds a pending credential of "
                f"rotation {entry.owner or '(unknown)'}; rotation {rotation_id} will not "
                "replace it"
            )
        self._write(pending, data, cas=entry.version)

    def write_current(
        self, location: Location, credentials: Credentials, rotation_id: RotationId, *,
        fence: int | None = None,
    ) -> None:
        """Write ``credentials`` as CURRENT for ``rotation_id`` at once, keeping no PREVIOUS.

        For single-secret rotations (see ``SecretStore``): one data write and one metadata
        write, no pending copy. Idempotent; ``StoreConflict`` if ``P`` changed since read.
        """
        main, _ = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if entry.current_rid == rotation_id and entry.creds == credentials:
            self._direct.add((main, rotation_id))
            return
        if entry.creds == credentials:  # crashed after writing the data: the version is ours
            new, data = entry.version, entry.data or {}
        else:
            secret = credentials.client_secret.reveal()
            data = {**(entry.data or {}), "client_id": credentials.client_id,
                    "client_secret": secret}
            new = self._write(main, data, cas=entry.version)
        meta = {k: v for k, v in entry.custom.items() if k not in _OURS}
        meta.update({_RID: rotation_id, _CUR: str(new), _AT: datetime.now(UTC).isoformat()})
        self._set_custom(main, _Entry(new, data, entry.custom, entry.created), meta)
        self._direct.add((main, rotation_id))

    def promote(self, location: Location, rotation_id: RotationId, *,
                fence: int | None = None) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if (main, rotation_id) in self._direct and entry.current_rid == rotation_id:
            self._direct.discard((main, rotation_id))
            return  # written CURRENT directly by this process: no pending copy to remove
        staged_entry = self._latest(pending, memo=True)
        current = entry.creds
        staged = staged_entry.creds if staged_entry.owner == rotation_id else None
        if current is not None and entry.current_rid == rotation_id:
            if staged is not None:  # crashed after the metadata update
                self._delete(pending)
            return
        if staged is None:
            raise StoreConflict(
                f"vault store {self.name!r}: {location!r} has no pending credential of "
                f"rotation {rotation_id}, and its current one belongs to "
                f"{entry.current_rid or 'no known rotation'}"
            )
        if current == staged:  # crashed after writing the data: the latest version is ours
            new, before, data = entry.version, entry.version - 1, entry.data or {}
            had_creds = before > 0 and _creds(self._version(main, before)[0]) is not None
        else:
            secret = staged.client_secret.reveal()
            data = {**(entry.data or {}), "client_id": staged.client_id, "client_secret": secret}
            new = self._write(main, data, cas=entry.version)
            before, had_creds = entry.version, current is not None
        meta = {k: v for k, v in entry.custom.items() if k not in _OURS}
        meta.update({_RID: rotation_id, _CUR: str(new), _AT: datetime.now(UTC).isoformat()})
        if had_creds:
            meta[_PREV] = str(before)
        if had_creds and entry.custom.get(_CUR) == str(before) and _RID in entry.custom:
            meta[_PREV_RID] = entry.custom[_RID]
        self._set_custom(main, _Entry(new, data, entry.custom, entry.created), meta)
        self._delete(pending)

    def discard_pending(self, location: Location, rotation_id: RotationId, *,
                        fence: int | None = None) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(pending)
        if entry.version and entry.owner == rotation_id:
            self._delete(pending)

    def drop_previous(self, location: Location, rotation_id: RotationId, *,
                      fence: int | None = None) -> None:
        main, _ = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if entry.current_rid == rotation_id and _PREV in entry.custom:
            self._set_custom(main, entry, {k: v for k, v in entry.custom.items() if k != _PREV})
