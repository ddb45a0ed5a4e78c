"""Every error rotator raises on purpose.

::

    RotatorError
    ├── ConfigError                 bad configuration; carries every problem at once
    ├── StoreError                  a secret store refused or failed
    │   ├── StoreUnavailable        unreachable, sealed, timed out: worth retrying later
    │   ├── StoreAccessDenied       the store's credentials lack a permission
    │   ├── StoreConflict           someone else wrote first (check-and-set, foreign pending)
    │   │   └── FencedOut           the write's fencing token is older than the store's record
    │   └── StoreNotFound           nothing stored at that location
    ├── IdentityProviderError       an identity provider's admin API refused or failed
    │   ├── IdpUnavailable          5xx, timeout, connection refused: worth retrying later
    │   │   └── IdpRateLimited      429: carries ``retry_after``, which the daemon honours
    │   ├── IdpAccessDenied         401/403; names the admin role or permission missing
    │   ├── IdpNotFound             the client does not exist at the IdP
    │   └── IdpCannotRotate         no new secret issued this way; retrying won't help
    ├── VerificationError           the token endpoint did not issue a usable token
    │   ├── InvalidClient           RFC 6749 §5.2 ``invalid_client``: the secret is wrong
    │   ├── InvalidScope            ``invalid_scope``: credentials work, scope not granted
    │   ├── UnauthorizedClient      ``unauthorized_client``: grant not allowed for client
    │   ├── TokenEndpointUnavailable 5xx, timeout, unreachable: worth retrying
    │   └── BadTokenResponse        200 but not a usable bearer token
    └── RotationError               the engine could not finish a rotation
        ├── RotationLocked          another process is rotating the same client
        └── JournalConflict         the journal moved on: a stale writer, a second open rotation
            └── LeaseLost           a newer holder took the client's lease (fencing token)

Vendor exceptions (``hvac.exceptions.*``, ``botocore.exceptions.ClientError``,
``httpx.HTTPError``) are translated at the adapter boundary with ``raise ... from exc`` and
never escape. No message carries a secret value: adapters pass remote error text through
:func:`rotator.secrets.redact` before it lands in an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class RotatorError(Exception):
    """Root of every error rotator raises on purpose."""

    #: Whether trying the same thing again later may succeed.
    retryable: bool = False


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigError(RotatorError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s):\n{lines}")


class StoreError(RotatorError):
    """A secret store refused or failed an operation."""


class StoreUnavailable(StoreError):
    """The store is unreachable, sealed or timed out."""

    retryable = True


class StoreAccessDenied(StoreError):
    """The store's credentials lack a permission."""


class StoreConflict(StoreError):
    """Another writer changed the secret first, or a foreign rotation is pending."""


class FencedOut(StoreConflict):
    """A store write carried a fencing token older than the one the location recorded: a
    newer holder of the client's lease wrote there, so this writer lost the client."""


class StoreNotFound(StoreError):
    """Nothing is stored at the location."""


class IdentityProviderError(RotatorError):
    """An identity provider's admin API refused or failed."""


class IdpUnavailable(IdentityProviderError):
    """The IdP answered 5xx, timed out or could not be reached."""

    retryable = True


class IdpRateLimited(IdpUnavailable):
    """The IdP's admin API answered 429 and asked to wait ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds until the IdP's rate-limit window resets (its headers said so).
        self.retry_after = retry_after


class IdpAccessDenied(IdentityProviderError):
    """The admin credentials were refused or lack a role (401/403)."""


class IdpNotFound(IdentityProviderError):
    """The client does not exist at the identity provider."""


class IdpCannotRotate(IdentityProviderError):
    """The IdP answered but issued no new secret (e.g. an RFC 7592 server that keeps the
    secret on update): the old secret still works, and trying again will not change that."""


class VerificationError(RotatorError):
    """The token endpoint did not issue a usable token for the credentials."""

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None):
        super().__init__(message)
        #: The RFC 6749 §5.2 ``error`` code, when the server sent one.
        self.error = error
        #: The HTTP status, when there was a response.
        self.status = status


class InvalidClient(VerificationError):
    """``invalid_client``: the token endpoint does not accept the client secret."""


class InvalidScope(VerificationError):
    """``invalid_scope`` or a grant narrower than required: the secret works, scope does not."""


class UnauthorizedClient(VerificationError):
    """``unauthorized_client``: the client may not use the client-credentials grant."""


class TokenEndpointUnavailable(VerificationError):
    """The token endpoint answered 5xx or 429, timed out or could not be reached."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, error=error, status=status)
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after


class BadTokenResponse(VerificationError):
    """The endpoint answered but not with a usable bearer token."""


class RotationError(RotatorError):
    """The engine could not complete a rotation."""


class RotationLocked(RotationError):
    """Another process holds the rotation lock for this client."""

    retryable = True


class JournalConflict(RotationError):
    """The journal refused a write made on stale knowledge (check-and-set lost)."""


class LeaseLost(JournalConflict):
    """A write carried a fencing token older than the client's lease: another holder took over."""
