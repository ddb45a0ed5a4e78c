"""rotator: verified, crash-safe, audited rotation of OAuth 2.0 client secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rotator.client import CachePolicy, ClientCredentialsAuth, TokenClient
from rotator.errors import (
    ConfigError,
    IdentityProviderError,
    RotationError,
    RotatorError,
    StoreError,
    VerificationError,
)
from rotator.interfaces import (
    Credentials,
    IdentityProvider,
    IdpCapabilities,
    IssuedSecret,
    SecretStore,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.secrets import Secret

if TYPE_CHECKING:
    from rotator.client.asyncio import AsyncTokenClient


def __getattr__(name: str) -> Any:
    """Import the asyncio client on first use, so that the CLI does not load asyncio."""
    if name == "AsyncTokenClient":
        from rotator.client.asyncio import AsyncTokenClient

        return AsyncTokenClient
    raise AttributeError(f"module 'rotator' has no attribute {name!r}")

__all__ = [
    "AsyncTokenClient",
    "CachePolicy",
    "ClientCredentialsAuth",
    "ConfigError",
    "Credentials",
    "IdentityProvider",
    "IdentityProviderError",
    "IdpCapabilities",
    "IssuedSecret",
    "RotationError",
    "RotatorError",
    "Secret",
    "SecretStore",
    "Stage",
    "StoreError",
    "StoreFacts",
    "StoredCredentials",
    "TokenClient",
    "VerificationError",
]

__version__ = "0.1.0"
