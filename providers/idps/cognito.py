"""Amazon Cognito user pool app clients' secrets, through boto3.

A rotation calls ``AddUserPoolClientSecret`` without a value, so Cognito generates it and
returns it once with its ``ClientSecretId``, the secret's reference. Cognito keeps up to two
secrets per app client, both valid: rotations follow the overlap family. A failed
verification deletes the new secret (``DeleteUserPoolClientSecret``); retirement deletes
every other secret of the client (there is at most one), never the last one. Cognito never
returns a stored value (``ListUserPoolClientSecrets`` lists ids and dates only), so a crash
after the call cannot recover the value: the resumed rotation finds two secrets, deletes the
one created after the rotation began when the other is clearly older (the rotation id holds
its start time), and adds another; anything less clear-cut stops with a message rather than
guess which one to delete.

Credentials come from boto3's usual chain (environment, ``profile``, instance role); the
IAM policy needs ``cognito-idp:AddUserPoolClientSecret``, ``ListUserPoolClientSecrets``
and ``DeleteUserPoolClientSecret`` on the user pool. The token endpoint is
``{domain_url}/oauth2/token`` on the user pool's domain.

Retries are botocore's ``standard`` mode (``TooManyRequestsException`` and 5xx, with
backoff; ``max_attempts`` in all). No botocore exception leaves this module.

botocore's requests, once signed, are sent through a bounded httpx client
(:mod:`rotator._bounded_boto`): each attempt has ``timeout`` seconds in all and an answer of
at most 1 MiB, or fails as a timeout that botocore retries; through the proxy the
environment names (``HTTPS_PROXY``, ``NO_PROXY``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import boto3
import botocore.exceptions as bex
import httpx
from botocore.config import Config

from rotator import _bounded
from rotator._bounded_boto import detail, send_through
from rotator.errors import (
    IdentityProviderError,
    IdpAccessDenied,
    IdpNotFound,
    IdpUnavailable,
)
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, redact
from rotator.settings import Setting

#: The SDK this adapter needs; the registry checks it before importing the module.
REQUIRES = ("boto3",)
_CLIENT_ID = re.compile(r"[\w+]{1,128}")
_POOL_ID = re.compile(r"[\w-]+_[0-9a-zA-Z]+")
#: ``<client-id>--<epoch-create-time>`` (ClientSecretDescriptorType), at most 128 characters.
#: A rotation id begins with the UTC time it was made (rotator.journal.new_rotation_id).
_ROTATION_TIME = re.compile(r"r-(\d{8}T\d{6}Z)-")
_SECRET_ID = re.compile(r"[\w+-]{1,128}")
_THROTTLED = ("TooManyRequestsException", "ThrottlingException")
_DENIED = ("AccessDeniedException", "NotAuthorizedException", "UnrecognizedClientException",
           "InvalidClientTokenId", "ExpiredTokenException", "MissingAuthenticationTokenException")


class CognitoIdp:
    """App clients of Amazon Cognito user pools."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("region", required=True, help="AWS region of the user pools"),
        Setting("user_pool_id", help="user pool of every client; a client may name its own"),
        Setting("domain_url", help="user pool domain, e.g. https://auth.example.com; its "
                                   "/oauth2/token is the token endpoint"),
        Setting("endpoint_url", help="Cognito API endpoint; default: AWS's public one"),
        Setting("profile", help="named profile from ~/.aws/config; default chain if unset"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
        Setting("max_attempts", "int", default=5, help="attempts per call, retries included"),
        Setting("propagation_delay", "duration", default=10.0,
                help="how long verification keeps retrying a new secret"),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("user_pool_id", help="the client's user pool; default: the IdP's"),
    )

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        pool = settings.get("user_pool_id")
        if isinstance(pool, str) and not _POOL_ID.fullmatch(pool):
            return [("user_pool_id", "must be a user pool id such as eu-west-1_AbC123")]
        return []

    validate_client_settings = validate_settings

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None, *,
                 session: boto3.Session | None = None) -> None:
        self.name = name
        self._settings = dict(settings)
        self._transport = transport
        self._http: httpx.Client | None = None
        self._session = session
        self._api: Any = None
        self._pools: dict[ClientId, str] = {}

    def configure_client(self, client_id: ClientId, settings: Mapping[str, Any]) -> None:
        if settings.get("user_pool_id"):
            self._pools[client_id] = str(settings["user_pool_id"])

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self._settings
        timeout = float(s.get("timeout") or 10.0)
        verify: str | bool = s.get("ca_file") or bool(s.get("tls_verify", True))
        try:
            session = self._session or boto3.Session(profile_name=s.get("profile"))
            self._api = session.client(
                "cognito-idp", region_name=s["region"], endpoint_url=s.get("endpoint_url"),
                verify=verify,
                config=Config(retries={"mode": "standard",
                                       "total_max_attempts": int(s.get("max_attempts") or 5)},
                              connect_timeout=timeout, read_timeout=timeout))
        except (bex.BotoCoreError, ValueError) as exc:
            raise IdentityProviderError(f"Cognito {self.name!r}: cannot set up the client: "
                                        f"{redact(str(exc))}") from None
        self._http = _bounded.client(timeout=timeout, verify=verify, transport=self._transport)
        send_through(self._api, "cognito-idp", self._http)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        # Closing the bounded client closes the transport it wraps.
        if self._http is not None:
            self._http.close()
        elif self._transport is not None:
            self._transport.close()
        self._http = None

    def default_token_endpoint(self) -> str | None:
        domain = self._settings.get("domain_url")
        return f"{str(domain).rstrip('/')}/oauth2/token" if domain else None

    # -- calls -----------------------------------------------------------------------------

    def _target(self, client_id: ClientId) -> dict[str, str]:
        pool = self._pools.get(client_id) or self._settings.get("user_pool_id")
        if not pool:
            raise IdentityProviderError(f"Cognito {self.name!r}: no user_pool_id for client "
                                        f"{client_id!r} (set it in [idps.{self.name}] or the "
                                        "client's table)")
        if not _CLIENT_ID.fullmatch(client_id):
            raise IdpNotFound(f"Cognito {self.name!r}: {client_id!r} is not an app client id")
        return {"UserPoolId": str(pool), "ClientId": client_id}

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        if self._api is None:
            raise IdentityProviderError(f"Cognito {self.name!r} is not started")
        method: Callable[..., Any] = getattr(self._api, operation)
        action = "".join(part.title() for part in operation.split("_"))
        try:
            answer = method(**params)
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            text = redact(str(error.get("Message") or ""))[:200]
            if code in _DENIED:
                raise IdpAccessDenied(
                    f"Cognito {self.name!r}: {action} was refused ({code}); the admin "
                    f"credentials need the IAM permission cognito-idp:{action} on user pool "
                    f"{params.get('UserPoolId')}") from None
            if code == "ResourceNotFoundException":
                raise IdpNotFound(f"Cognito {self.name!r}: {text or code}") from None
            if code in _THROTTLED or code.startswith("InternalError") or \
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                unavailable = IdpUnavailable(f"Cognito {self.name!r}: {action} failed "
                                             f"({code}): {text}")
                if code in _THROTTLED:  # throttled past botocore's retries: the daemon pauses
                    unavailable.status = 429  # type: ignore[attr-defined]
                raise unavailable from None
            raise IdentityProviderError(f"Cognito {self.name!r}: {action} failed ({code}): "
                                        f"{text}") from None
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError,
                bex.ReadTimeoutError) as exc:
            kind = "is unreachable" if isinstance(exc, bex.EndpointConnectionError) else \
                "timed out"
            raise IdpUnavailable(f"Cognito {self.name!r}: the endpoint {kind} ({action}): "
                                 f"{redact(detail(exc))}") from None
        except bex.ResponseStreamingError as exc:
            raise IdpUnavailable(f"Cognito {self.name!r}: {action} failed: "
                                 f"{redact(detail(exc))}") from None
        except (bex.BotoCoreError, ValueError, TypeError, AttributeError, KeyError) as exc:
            # A body botocore cannot parse (a proxy's page, a broken answer) lands here too.
            raise IdpUnavailable(f"Cognito {self.name!r}: {action} failed: "
                                 f"{redact(str(exc)) or type(exc).__name__}") from None
        if not isinstance(answer, dict):
            raise IdpUnavailable(f"Cognito {self.name!r}: {action} answered no object")
        return answer

    def _secrets(self, client_id: ClientId) -> dict[str, datetime | None]:
        """The client's secret ids and when each was created (if Cognito said)."""
        answer = self._call("list_user_pool_client_secrets", **self._target(client_id))
        found = answer.get("ClientSecrets")
        if not isinstance(found, list):
            raise IdpUnavailable(f"Cognito {self.name!r}: ListUserPoolClientSecrets answered "
                                 "without ClientSecrets")
        return {str(s["ClientSecretId"]): _when(s.get("ClientSecretCreateDate"))
                for s in found if isinstance(s, dict) and isinstance(s.get("ClientSecretId"), str)}

    def _secret_ids(self, client_id: ClientId) -> list[str]:
        return list(self._secrets(client_id))

    def _orphan_of(self, rotation_id: RotationId, found: dict[str, datetime | None]) -> str | None:
        """The secret an earlier attempt of ``rotation_id`` added before it was killed.

        Exactly one of the two secrets was created after the rotation began (the time in its
        id) and the other more than a minute before: the newer one reached no store as
        CURRENT, so it may go. Anything less clear-cut is left for a person.
        """
        match = _ROTATION_TIME.match(rotation_id)
        if match is None or len(found) != 2 or None in found.values():
            return None
        began = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        newer = [i for i, at in found.items() if at is not None and at >= began]
        older = [i for i, at in found.items()
                 if at is not None and at < began - timedelta(minutes=1)]
        return newer[0] if len(newer) == 1 and len(older) == 1 else None

    def _delete(self, client_id: ClientId, secret_id: str) -> None:
        self._call("delete_user_pool_client_secret", ClientSecretId=secret_id,
                   **self._target(client_id))

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        self._secret_ids(client_id)
        return IdpCapabilities(max_active_secrets=2, caller_sets_value=False,
                               can_revoke_old=True, can_read_current=False,
                               propagation_delay=float(self._settings.get("propagation_delay")
                                                       or 0.0))

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is not None:
            raise IdentityProviderError("rotator lets Cognito generate client secrets")
        found = self._secrets(client_id)
        orphan = self._orphan_of(rotation_id, found)
        if orphan is not None:
            self._delete(client_id, orphan)
            found.pop(orphan)
        if len(found) >= 2:
            raise IdentityProviderError(
                f"Cognito {self.name!r}: app client {client_id!r} already has two secrets "
                "(Cognito's limit), and rotator cannot tell which one the stores hold; delete "
                "the one not in use (DeleteUserPoolClientSecret), then rotate again")
        answer = self._call("add_user_pool_client_secret", **self._target(client_id))
        descriptor = answer.get("ClientSecretDescriptor")
        descriptor = descriptor if isinstance(descriptor, dict) else {}
        value_text, secret_id = descriptor.get("ClientSecretValue"), \
            descriptor.get("ClientSecretId")
        if not isinstance(value_text, str) or not value_text or not isinstance(secret_id, str) \
                or not _SECRET_ID.fullmatch(secret_id):
            raise IdpUnavailable(f"Cognito {self.name!r}: AddUserPoolClientSecret answered "
                                 "without a usable ClientSecretValue and ClientSecretId")
        return IssuedSecret(Secret(value_text), secret_id)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return None  # Cognito never returns a stored secret

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        if issued.secret_ref is None:
            raise IdentityProviderError(f"Cognito {self.name!r}: the new secret's id was not "
                                        "recorded, so it cannot be deleted")
        ids = self._secret_ids(client_id)
        if issued.secret_ref in ids and len(ids) > 1:
            self._delete(client_id, issued.secret_ref)

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        ids = self._secret_ids(client_id)
        if keep.secret_ref is None or keep.secret_ref not in ids:
            raise IdentityProviderError(
                f"Cognito {self.name!r}: the secret rotator promoted for {client_id!r} is not "
                "among its secrets; refusing to retire anything")
        doomed = [i for i in ids if i != keep.secret_ref]
        for secret_id in doomed:
            self._delete(client_id, secret_id)
        return len(doomed)


def _when(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None
