"""Loading and validating rotator's TOML configuration.

:func:`load_config` reads the file, checks every table and raises one
:class:`~rotator.errors.ConfigError` listing every problem (file, key path, reason). No
secret lives in the file: secret settings name an environment variable (``*_env``) or a
file (``*_file``). See ``config/rotator.toml`` for the documented example.

The package, by responsibility: ``loading`` (the file as a whole), ``model`` (the typed
settings it returns), ``schema`` (what each table accepts), ``adapters`` (adapter
discovery), ``clients``, ``api`` and ``audit`` (checking those tables), ``network`` (URL
and listen-address checks) and ``problems`` (collecting what is wrong).
"""

from __future__ import annotations

from rotator.config.loading import load_config
from rotator.config.model import (
    AdapterConfig,
    ApiConfig,
    ApiToken,
    AuditConfig,
    AuditSink,
    ClientConfig,
    Config,
    DaemonConfig,
    JournalConfig,
    JwtConfig,
    StoreTarget,
)
from rotator.config.network import is_loopback, parse_listen, plain_http_refusal, url_problem
from rotator.config.schema import (
    API_ROLES,
    AUTH_METHODS,
    CONSUMER_ROLE,
    DEFAULT_API_LISTEN,
    MIN_API_TOKEN_LENGTH,
    MIN_AUDIT_KEY_BYTES,
    RETIRE_MODES,
)

__all__ = [
    "API_ROLES",
    "AUTH_METHODS",
    "CONSUMER_ROLE",
    "DEFAULT_API_LISTEN",
    "MIN_API_TOKEN_LENGTH",
    "MIN_AUDIT_KEY_BYTES",
    "RETIRE_MODES",
    "AdapterConfig",
    "ApiConfig",
    "ApiToken",
    "AuditConfig",
    "AuditSink",
    "ClientConfig",
    "Config",
    "DaemonConfig",
    "JournalConfig",
    "JwtConfig",
    "StoreTarget",
    "is_loopback",
    "load_config",
    "parse_listen",
    "plain_http_refusal",
    "url_problem",
]
