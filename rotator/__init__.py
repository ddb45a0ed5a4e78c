"""rotator: verified, crash-safe, audited rotation of OAuth 2.0 client secrets."""

from __future__ import annotations

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
    "VerificationError",
]

__version__ = "0.1.0"
