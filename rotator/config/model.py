"""The typed configuration :func:`~rotator.config.load_config` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from rotator.errors import ConfigError, ConfigProblem
from rotator.hooks.config import AlertConfig, HookConfig
from rotator.interfaces import IdentityProvider, SecretStore
from rotator.secrets import Secret
from rotator.settings import Settings


@dataclass(frozen=True)
class ApiToken:
    """One bearer token the admin API accepts; only its SHA-256 digest is kept."""

    name: str
    role: str
    sha256: bytes


@dataclass(frozen=True)
class JwtConfig:
    """OAuth 2.0 JWT access tokens (RFC 9068) the admin API accepts from one issuer."""

    jwks_uri: str
    issuer: str
    audience: str
    #: The scope that grants each role (``read``, ``rotate``, ``admin``, ``consumer``).
    scopes: Mapping[str, str]
    ca_file: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    """The admin API: where it listens, with what TLS, and who may call it."""

    host: str = "127.0.0.1"
    port: int = 8900
    cert_file: str | None = None
    key_file: str | None = None
    insecure_http: bool = False
    tokens: tuple[ApiToken, ...] = ()
    jwt: JwtConfig | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


A = TypeVar("A", SecretStore, IdentityProvider)


@dataclass(frozen=True)
class AdapterConfig(Generic[A]):
    """A store or identity-provider table: its name, type, class and checked settings."""

    name: str
    type: str
    cls: Any
    settings: Settings
    #: client_id -> the checked per-client settings the adapter declares in
    #: ``CLIENT_SETTINGS`` (identity providers only; empty when it declares none).
    clients: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def build(self) -> A:
        """Construct the adapter (no I/O happens until its ``start()``) and hand it each
        client's settings through ``configure_client`` where it declares any."""
        adapter: A = self.cls(self.name, self.settings)
        configure = getattr(adapter, "configure_client", None)
        for client_id, settings in self.clients.items():
            if configure is None:  # pragma: no cover - the config check refused this class
                raise TypeError(f"{self.type} declares CLIENT_SETTINGS but no configure_client")
            configure(client_id, settings)
        return adapter


@dataclass(frozen=True)
class StoreTarget:
    """One store a client's credential is written to, and where in it."""

    store: str
    location: str


@dataclass(frozen=True)
class ClientConfig:
    """One OAuth client whose secret rotator rotates."""

    name: str
    idp: str
    client_id: str
    targets: tuple[StoreTarget, ...]
    token_endpoint: str | None
    auth_method: str
    scopes: tuple[str, ...]
    audience: str | None
    resource: str | None
    grace_period: float
    rotate_every: float | None
    verify_attempts: int
    verify_timeout: float
    tls_verify: bool | str
    schedule: str | None = None
    window: str | None = None
    jitter: float = 0.0
    backoff: float = 3600.0
    backoff_max: float = 32 * 3600.0
    #: The settings this client's IdP declares per client (its ``CLIENT_SETTINGS``), checked.
    idp_settings: Mapping[str, Any] = field(default_factory=dict)
    #: Rotate this long before the current secret expires, where the IdP says when it does.
    rotate_before_expiry: float | None = None
    max_age: float | None = None
    #: ``[[defaults.hooks]]`` then ``[[clients.NAME.hooks]]``: see rotator.hooks.
    hooks: tuple[HookConfig, ...] = ()
    #: ``after_grace`` or ``when_unused`` (see rotator.consumers): with ``when_unused`` the
    #: old secret is retired between ``min_grace`` and ``grace_period`` after promotion.
    retire: str = "after_grace"
    min_grace: float = 0.0
    consumers_seen_within: float = 3600.0

    @property
    def primary(self) -> StoreTarget:
        """The store that verification reads from; the first one listed."""
        return self.targets[0]


@dataclass(frozen=True)
class AuditSink:
    """One ``[[audit.sinks]]`` entry: another file, in its own format, with its own chain."""

    type: str
    path: Path
    format: str
    #: syslog and http: the sink's name and checked settings; ``path`` is its spool
    name: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditConfig:
    file: Path | None
    stdout: bool
    #: None only in a configuration loaded for a consumer (``load_config(consumer=...)``).
    key: Secret | None
    #: json (ECS), ocsf or cef: see rotator.audit.formats
    format: str = "json"
    sinks: tuple[AuditSink, ...] = ()

    def require_key(self, config_path: Path) -> Secret:
        """The audit key; ``ConfigError`` if this configuration was loaded without it."""
        if self.key is None:
            raise ConfigError([ConfigProblem(str(config_path), "audit.key_env",
                                             "loaded for a consumer: no audit key")])
        return self.key


@dataclass(frozen=True)
class DaemonConfig:
    """The ``[daemon]`` table: how ``rotator run`` schedules and stops."""

    workers: int = 4
    idp_concurrency: int = 2
    catch_up: float = 900.0
    shutdown_timeout: float = 30.0
    #: With ``[journal] url_env``: the length of a job's lease on its client (docs/ha.md).
    lease: float = 60.0


@dataclass(frozen=True)
class JournalConfig:
    """The ``[journal]`` table: where the rotation journal lives.

    ``url`` unset: SQLite in the state directory (one host). Set: that PostgreSQL database,
    shared by every daemon given the same URL (see docs/ha.md). The URL is a secret.
    """

    url: Secret | None = None
    allow_weak_tls: bool = False


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    audit: AuditConfig
    stores: dict[str, AdapterConfig[SecretStore]] = field(default_factory=dict)
    idps: dict[str, AdapterConfig[IdentityProvider]] = field(default_factory=dict)
    clients: dict[str, ClientConfig] = field(default_factory=dict)
    api: ApiConfig = field(default_factory=ApiConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    alerts: AlertConfig | None = None
    journal: JournalConfig = field(default_factory=JournalConfig)
