"""rotator: verified, crash-safe, audited rotation of OAuth 2.0 client secrets."""

from __future__ import annotations

from rotator.client import CachePolicy, ClientCredentialsAuth, TokenClient
from rotator.client_async import AsyncTokenClient
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
