"""Loading and validating rotator's TOML configuration.

:func:`load_config` reads the file, checks every table and raises one
:class:`~rotator.errors.ConfigError` listing every problem (file, key path, reason). No
secret lives in the file: secret settings name an environment variable (``*_env``) or a
file (``*_file``). See ``config/rotator.toml`` for the documented example.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from rotator._files import UnsafeFile, check_private_dir
from rotator.errors import ConfigError, ConfigProblem
from rotator.hooks.config import AlertConfig, HookConfig, parse_alerts, parse_hooks
from rotator.interfaces import IdentityProvider, SecretStore
from rotator.registry import AdapterImportError, load_adapter_class
from rotator.secrets import Secret
from rotator.settings import Setting, Settings, check_settings

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Adapter settings holding a URL: ``url`` and every ``*_url``. Where a table has one, it also
#: accepts ``allow_insecure_http``.
_INSECURE_OK = "allow_insecure_http"
_ALLOW_INSECURE = Setting(_INSECURE_OK, "bool", default=False,
                          help="accept http:// to a host other than this machine")


def _is_url_key(key: str) -> bool:
    return key == "url" or key.endswith("_url")


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8, ::1
    except ValueError:
        return False


def url_problem(url: str, allow_insecure_http: bool = False) -> str | None:
    """Why ``url`` may not be used, or None.

    Credentials travel to every URL rotator calls, so a URL must be ``https://`` unless
    its host is this machine (127.0.0.0/8, ::1, localhost) or ``allow_insecure_http`` is set.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if any(ord(c) <= 0x20 or 0x7f <= ord(c) <= 0x9f for c in url):
        return "must not contain spaces or control characters"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an https:// URL with a host"
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(host):
        return (f"http:// to {host} would send credentials in cleartext: use https://, or "
                f"set {_INSECURE_OK} = true in this table if you mean it")
    return None


_ROTATOR_SETTINGS = (
    Setting("state_dir", "path", default=None,
            help="directory for the rotation journal and locks"),
)
_AUDIT_SETTINGS = (
    Setting("file", "path", help="JSON-lines audit log"),
    Setting("stdout", "bool", default=False),
    Setting("format", default="json", choices=("json", "ocsf", "cef"),
            help="json (ECS), ocsf or cef"),
    Setting("key", secret=True, required=True, help="audit HMAC key"),
)
_AUDIT_SINK_SETTINGS = (
    Setting("type", required=True, choices=("file", "syslog", "http"),
            help="file, syslog or http"),
    Setting("path", "path", required=True, help="the sink's log file"),
    Setting("format", default=None, choices=("json", "ocsf", "cef"),
            help="defaults to [audit] format"),
)
#: Settings every remote sink (syslog, http) has: its name, format and spool.
_AUDIT_REMOTE_SETTINGS = (
    Setting("type", required=True, choices=("file", "syslog", "http")),
    Setting("name", required=True, help="names the sink's spool in state_dir/audit-spool"),
    Setting("format", default=None, choices=("json", "ocsf", "cef"),
            help="defaults to [audit] format"),
    Setting("ca_file", "path", help="trust this CA for the collector (PEM)"),
    Setting("cert_file", "path", help="client certificate (PEM)"),
    Setting("key_file", "path", help="client certificate's key (PEM)"),
    Setting("timeout", "duration", default=10.0),
    Setting("spool_max_bytes", "int", default=256 * 1024 * 1024),
    Setting("batch_size", "int", default=100),
    Setting("retry_max", "duration", default=60.0, help="longest wait between retries"),
)
_AUDIT_SYSLOG_SETTINGS = (
    *_AUDIT_REMOTE_SETTINGS,
    Setting("address", required=True, help="host:port of the syslog collector"),
    Setting("transport", default="tls", choices=("tls", "tcp", "udp")),
    Setting("allow_cleartext", "bool", default=False,
            help="accept tcp or udp to a host other than this machine"),
    Setting("server_name", help="the name the collector's certificate must carry"),
    Setting("facility", default="authpriv",
            choices=("kern", "user", "daemon", "auth", "syslog", "authpriv",
                     *(f"local{n}" for n in range(8)))),
    Setting("app_name", default="rotator"),
    Setting("hostname"),
    Setting("sd_id", default="rotator@32473", help="structured data id: name@enterprise"),
)
_AUDIT_HTTP_SETTINGS = (
    *_AUDIT_REMOTE_SETTINGS,
    Setting("url", required=True, help="HEC endpoint or webhook URL"),
    Setting("api", default="hec", choices=("hec", "webhook")),
    Setting("token", secret=True, help="HEC token (Splunk) or webhook bearer token"),
    _ALLOW_INSECURE,
    Setting("index"),
    Setting("source", default="rotator"),
    Setting("sourcetype"),
    Setting("host"),
)
#: When a client's old secret is retired: after its grace period, or once no consumer uses it.
RETIRE_MODES = ("after_grace", "when_unused")
_CLIENT_SETTINGS = (
    Setting("idp", required=True, help="name of an [idps.*] table"),
    Setting("client_id", required=True),
    Setting("token_endpoint", help="defaults to the IdP's token endpoint"),
    Setting("auth_method", default="client_secret_basic", choices=AUTH_METHODS),
    Setting("scopes", "list[str]", default=[]),
    Setting("audience"),
    Setting("resource"),
    Setting("grace_period", "duration", default=86400.0),
    Setting("rotate_every", "duration", default=None),
    Setting("verify_attempts", "int", default=5),
    Setting("verify_timeout", "duration", default=10.0),
    Setting("tls_verify", "bool", default=True),
    Setting("ca_file", "path"),
    _ALLOW_INSECURE,
    # Scheduling by the daemon (rotator run) and rotate --due; see rotator.daemon.schedule.
    Setting("schedule", help="cron expression, optionally followed by a time zone"),
    Setting("window", help="when rotations may start, e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'"),
    Setting("jitter", "duration", default=0.0),
    Setting("backoff", "duration", default=3600.0),
    Setting("backoff_max", "duration", default=32 * 3600.0),
    Setting("rotate_before_expiry", "duration", default=None,
            help="rotate this long before the current secret expires (IdPs whose secrets "
                 "expire, e.g. Entra ID)"),
    Setting("max_age", "duration", default=None,
            help="alert when the current secret is older than this ([alerts])"),
    # Retire when unused (rotator.consumers): grace_period is then the upper bound.
    Setting("retire", default="after_grace", choices=RETIRE_MODES,
            help="after_grace, or when_unused: once every consumer reports the new secret"),
    Setting("min_grace", "duration", default=0.0,
            help="with retire = when_unused: never retire sooner than this"),
    Setting("consumers_seen_within", "duration", default=3600.0,
            help="with retire = when_unused: consumers that reported within this long count"),
)
#: Client keys a [defaults] table may set for every client that does not set them itself.
_DEFAULTABLE = ("grace_period", "rotate_every", "schedule", "window", "jitter", "backoff",
                "backoff_max", "rotate_before_expiry", "max_age")
#: Keys an IdP's ``CLIENT_SETTINGS`` may not reuse.
_CORE_CLIENT_KEYS = frozenset({k for s in _CLIENT_SETTINGS for k in s.accepted_keys()}
                              | {"stores", "hooks"})
_DEFAULTS_SETTINGS = tuple(s for s in _CLIENT_SETTINGS if s.key in _DEFAULTABLE)
_DAEMON_SETTINGS = (
    Setting("workers", "int", default=4, help="rotations run at once, across all IdPs"),
    Setting("idp_concurrency", "int", default=2, help="rotations run at once per IdP"),
    Setting("catch_up", "duration", default=900.0,
            help="spread clients that fell due while the daemon was down over this long"),
    Setting("shutdown_timeout", "duration", default=30.0),
    Setting("lease", "duration", default=60.0,
            help="with a shared journal: how long a job's claim on its client outlives a "
                 "daemon that stopped renewing it"),
)

_JOURNAL_SETTINGS = (
    Setting("url", secret=True,
            help="PostgreSQL URL of a journal shared by several daemons (postgresql://...)"),
    Setting("allow_weak_tls", "bool", default=False,
            help="accept an sslmode that does not check the server's certificate"),
)

#: The admin API's roles, weakest first: each may do what the ones before it may.
API_ROLES = ("read", "rotate", "admin")
#: A role outside that order: it may only report which secret a consumer uses.
CONSUMER_ROLE = "consumer"
DEFAULT_API_LISTEN = "127.0.0.1:8900"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: A bearer token shorter than this is refused: it could be guessed.
MIN_API_TOKEN_LENGTH = 16
_API_SETTINGS = (
    Setting("listen", default=DEFAULT_API_LISTEN, help="host:port the admin API listens on"),
    Setting("cert_file", "path", help="TLS certificate chain (PEM)"),
    Setting("key_file", "path", help="TLS private key (PEM)"),
    Setting("insecure_http", "bool", default=False,
            help="allow plain HTTP on an address other than loopback"),
)
_API_TOKEN_SETTINGS = (
    Setting("name", required=True, help="who the token belongs to; lands in the audit log"),
    Setting("role", required=True, choices=(*API_ROLES, CONSUMER_ROLE)),
    Setting("token", secret=True, help="API bearer token"),
    Setting("token_sha256", help="hex SHA-256 of the token, instead of the token"),
)
_API_JWT_SETTINGS = (
    Setting("jwks_uri", required=True, help="the issuer's JSON Web Key Set"),
    Setting("issuer", required=True, help="the tokens' iss claim"),
    Setting("audience", required=True, help="the tokens' aud claim"),
    Setting("read_scope", default="rotator:read"),
    Setting("rotate_scope", default="rotator:rotate"),
    Setting("admin_scope", default="rotator:admin"),
    Setting("ca_file", "path", help="trust this CA for the JWKS endpoint"),
)


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
    #: The scope that grants each role (``read``, ``rotate``, ``admin``).
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


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); raises ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_refusal(host: str, tls: bool, insecure_http: bool) -> str | None:
    """Why listening on ``host`` is refused, or None: plain HTTP only on loopback."""
    if tls or insecure_http or is_loopback(host):
        return None
    return (f"listening on {host} without TLS would send bearer tokens in clear text; "
            f"set cert_file and key_file, or insecure_http = true to allow it")


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


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def reporter(self, prefix: str) -> Any:
        def report(key: str, reason: str) -> None:
            path = f"{prefix}.{key}" if prefix and key else prefix or key
            self.items.append(ConfigProblem(self.file, path, reason))
        return report


def _table(value: Any, key: str, problems: _Problems) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.reporter("")(key, "must be a table")
        return {}
    return value


def _adapters(
    raw: Mapping[str, Any], kind: str, section: str, problems: _Problems, base: Path,
    environ: Mapping[str, str], resolve: Callable[[str], bool],
) -> dict[str, AdapterConfig[Any]]:
    out: dict[str, AdapterConfig[Any]] = {}
    for name, table in raw.items():
        report = problems.reporter(f"{section}.{name}")
        if not _NAME.match(name):
            report("", "name must be letters, digits, '.', '_' or '-'")
        if not isinstance(table, dict):
            report("", "must be a table")
            continue
        type_name = table.get("type")
        if not isinstance(type_name, str):
            report("type", f"required: the {kind} type")
            continue
        try:
            cls = load_adapter_class(kind, type_name)
        except AdapterImportError as exc:
            report("type", str(exc))
            continue
        schema = getattr(cls, "SETTINGS", None)
        if not isinstance(schema, tuple) or not callable(cls):
            report("type", f"{kind} type {type_name!r} is not an adapter class with SETTINGS")
            continue
        client_schema = getattr(cls, "CLIENT_SETTINGS", ())
        clashes = {k for s in client_schema for k in s.accepted_keys()} & _CORE_CLIENT_KEYS
        if client_schema and not callable(getattr(cls, "configure_client", None)):
            report("type", f"{kind} type {type_name!r} declares CLIENT_SETTINGS but no "
                           "configure_client method")
            continue
        if clashes:  # the adapter's packaging is wrong, not the user's file
            report("type", f"{kind} type {type_name!r} declares client settings that rotator "
                           f"itself uses: {', '.join(sorted(clashes))}")
            continue
        if any(_is_url_key(s.key) for s in schema) and _INSECURE_OK not in {
                s.key for s in schema}:
            schema = (*schema, _ALLOW_INSECURE)
        settings = check_settings(table, schema, report, base_dir=base, environ=environ,
                                  ignore=("type",), resolve_secrets=resolve(name))
        for key, value in settings.items():
            problem = (url_problem(value, bool(settings.get(_INSECURE_OK)))
                       if _is_url_key(key) and isinstance(value, str) else None)
            if problem:
                report(key, problem)
        # An adapter may check its values further, e.g. those that become parts of URLs.
        validate = getattr(cls, "validate_settings", None)
        for key, reason in validate(settings) if validate is not None else ():
            report(key, reason)
        out[name] = AdapterConfig(name, type_name, cls, settings)
    return out


def _check_timing(s: Settings, report: Callable[[str, str], None]) -> None:
    """Report a schedule or window that does not parse, or a zero interval."""
    from rotator.daemon.schedule import parse_cron, parse_window

    for key, parse in (("schedule", parse_cron), ("window", parse_window)):
        if s.get(key):
            try:
                parse(s[key])
            except ValueError as exc:
                report(key, str(exc))
    if s.get("rotate_every") == 0:
        report("rotate_every", "must be longer than zero")
    if s.get("backoff") == 0:
        report("backoff", "must be longer than zero")


def _client(
    name: str, table: Any, cfg_stores: dict[str, AdapterConfig[Any]],
    raw_stores: Mapping[str, Any], idps: Mapping[str, Any], problems: _Problems, base: Path,
    environ: Mapping[str, str], defaults: Settings | None = None,
    cfg_idps: Mapping[str, AdapterConfig[Any]] | None = None, resolve_idp_secrets: bool = True,
) -> ClientConfig | None:
    prefix = f"clients.{name}"
    report = problems.reporter(prefix)
    if not _NAME.match(name):
        report("", "name must be letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        report("", "must be a table")
        return None
    # The client's IdP adds the per-client settings it declares (CLIENT_SETTINGS). When that
    # IdP's own table is broken (reported there), its keys cannot be told from typos: skip them.
    idp_name = table.get("idp")
    idp_cfg = (cfg_idps or {}).get(idp_name) if isinstance(idp_name, str) else None
    idp_schema: tuple[Setting, ...] = getattr(idp_cfg.cls, "CLIENT_SETTINGS", ()) \
        if idp_cfg else ()
    unchecked = tuple(table) if idp_cfg is None and idp_name in idps else ()
    s = check_settings(table, _CLIENT_SETTINGS + idp_schema, report, base_dir=base,
                       environ=environ, ignore=("stores", "hooks", *unchecked),
                       resolve_secrets=resolve_idp_secrets)
    idp_settings = {k.key: s.pop(k.key) for k in idp_schema if k.key in s}
    for setting in idp_schema:  # a setting naming a store must name one in [stores]
        value = idp_settings.get(setting.key)
        if setting.kind == "store" and value is not None and value not in raw_stores:
            report(setting.key, f"no store named {value!r} in [stores]")
    validate = getattr(idp_cfg.cls, "validate_client_settings", None) if idp_cfg else None
    for key, reason in validate(idp_settings) if validate is not None else ():
        report(key, reason)
    for key, value in (defaults or {}).items():
        if key not in table:
            s[key] = value
    _check_timing({k: v for k, v in s.items() if k in table}, report)
    if s.get("idp") and s["idp"] not in idps:
        report("idp", f"no identity provider named {s['idp']!r} in [idps]")
    endpoint = s.get("token_endpoint")
    problem = url_problem(endpoint, bool(s.get(_INSECURE_OK))) if endpoint else None
    if problem:
        report("token_endpoint", problem)
    if s.get("verify_attempts") is not None and s["verify_attempts"] < 1:
        report("verify_attempts", "must be at least 1")
    if s.get("retire") == "when_unused" and s.get("min_grace") is not None \
            and s.get("grace_period") is not None and s["min_grace"] > s["grace_period"]:
        report("min_grace", "must not be longer than grace_period (the upper bound)")
    if s.get("consumers_seen_within") is not None and s["consumers_seen_within"] <= 0:
        report("consumers_seen_within", "must be longer than zero")
    targets: list[StoreTarget] = []
    raw_targets = table.get("stores")
    if not isinstance(raw_targets, list) or not raw_targets:
        report("stores", "required: a list of {store = NAME, <location key> = ...} tables")
        raw_targets = []
    for i, t in enumerate(raw_targets):
        t_report = problems.reporter(f"{prefix}.stores[{i}]")
        if not isinstance(t, dict):
            t_report("", "must be a table")
            continue
        store = t.get("store")
        if not isinstance(store, str) or store not in raw_stores:
            t_report("store", f"no store named {store!r} in [stores]")
            continue
        if store not in cfg_stores:
            continue  # the store table itself is broken; reported there
        loc_key: str = cfg_stores[store].cls.LOCATION_KEY
        for key in t:
            if key not in ("store", loc_key):
                t_report(key, f"unknown key; a {cfg_stores[store].type} store takes "
                              f"'store' and '{loc_key}'")
        loc = t.get(loc_key)
        if not isinstance(loc, str) or not loc:
            t_report(loc_key, f"required: where in store {store!r} the credential lives")
            continue
        validate = getattr(cfg_stores[store].cls, "validate_location", None)
        problem = validate(loc) if validate is not None else None
        if problem:
            t_report(loc_key, problem)
            continue
        if any(x.store == store and x.location == loc for x in targets):
            t_report(loc_key, "the same store location is listed twice")
        targets.append(StoreTarget(store, loc))
    # A setting that failed its check is absent from ``s`` (and already reported).
    if any(setting.key not in s for setting in _CLIENT_SETTINGS) or not targets:
        return None
    tls: bool | str = s["ca_file"] if s.get("ca_file") else s["tls_verify"]
    return ClientConfig(
        name=name, idp=s["idp"], client_id=s["client_id"], targets=tuple(targets),
        token_endpoint=s["token_endpoint"], auth_method=s["auth_method"],
        scopes=tuple(s["scopes"]), audience=s["audience"], resource=s["resource"],
        grace_period=s["grace_period"], rotate_every=s["rotate_every"],
        verify_attempts=s["verify_attempts"], verify_timeout=s["verify_timeout"],
        tls_verify=tls, schedule=s["schedule"], window=s["window"], jitter=s["jitter"],
        backoff=s["backoff"], backoff_max=s["backoff_max"], idp_settings=idp_settings,
        rotate_before_expiry=s["rotate_before_expiry"],
        max_age=s["max_age"], retire=s["retire"], min_grace=s["min_grace"],
        consumers_seen_within=s["consumers_seen_within"],
    )


def _api(raw: Any, problems: _Problems, base: Path, environ: Mapping[str, str],
         resolve: bool) -> ApiConfig:
    table = _table(raw, "api", problems)
    report = problems.reporter("api")
    s = check_settings(table, _API_SETTINGS, report, base_dir=base, environ=environ,
                       ignore=("tokens", "jwt"))
    host, port = "127.0.0.1", 8900
    if s.get("listen"):
        try:
            host, port = parse_listen(s["listen"])
        except ValueError as exc:
            report("listen", str(exc))
    if bool(s.get("cert_file")) != bool(s.get("key_file")):
        report("cert_file" if not s.get("cert_file") else "key_file",
               "TLS needs both cert_file and key_file")
    refusal = plain_http_refusal(host, bool(s.get("cert_file") and s.get("key_file")),
                                 bool(s.get("insecure_http")))
    if refusal:
        report("listen", refusal)

    tokens: list[ApiToken] = []
    raw_tokens = table.get("tokens", [])
    if not isinstance(raw_tokens, list):
        report("tokens", "must be an array of tables: [[api.tokens]]")
        raw_tokens = []
    for i, t in enumerate(raw_tokens):
        t_report = problems.reporter(f"api.tokens[{i}]")
        if not isinstance(t, dict):
            t_report("", "must be a table")
            continue
        ts = check_settings(t, _API_TOKEN_SETTINGS, t_report, base_dir=base, environ=environ,
                            resolve_secrets=resolve)
        name = ts.get("name")
        if name and not _NAME.match(name):
            t_report("name", "name must be letters, digits, '.', '_' or '-'")
        if name and any(x.name == name for x in tokens):
            t_report("name", f"another token is already named {name!r}")
        given = [k for k in ("token_env", "token_file", "token_sha256") if k in t]
        if len(given) != 1:
            t_report("token_env", "give exactly one of token_env, token_file or token_sha256")
            continue
        digest: bytes | None = None
        if ts.get("token_sha256") is not None:
            if not _SHA256_HEX.match(ts["token_sha256"]):
                t_report("token_sha256", "must be 64 lowercase hex digits (sha256sum output)")
                continue
            digest = bytes.fromhex(ts["token_sha256"])
        elif ts.get("token") is not None:
            value: str = ts["token"].reveal()
            if len(value) < MIN_API_TOKEN_LENGTH:
                t_report(given[0], f"the token must be at least {MIN_API_TOKEN_LENGTH} "
                                   f"characters long")
                continue
            digest = hashlib.sha256(value.encode()).digest()
        if name and ts.get("role") and digest is not None:
            tokens.append(ApiToken(name, ts["role"], digest))

    jwt: JwtConfig | None = None
    if "jwt" in table:
        j_report = problems.reporter("api.jwt")
        js = check_settings(_table(table["jwt"], "api.jwt", problems), _API_JWT_SETTINGS,
                            j_report, base_dir=base, environ=environ)
        uri = js.get("jwks_uri")
        if uri:
            parts = urlsplit(uri)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                j_report("jwks_uri", f"must be an https:// URL, got {uri!r}")
            elif parts.scheme == "http" and not is_loopback(parts.hostname):
                j_report("jwks_uri", "plain http:// is allowed only to this machine's "
                                     "loopback address; use https://")
        if all(setting.key in js for setting in _API_JWT_SETTINGS):
            jwt = JwtConfig(js["jwks_uri"], js["issuer"], js["audience"],
                            {role: js[f"{role}_scope"] for role in API_ROLES},
                            js["ca_file"])
    return ApiConfig(host=host, port=port, cert_file=s.get("cert_file"),
                     key_file=s.get("key_file"), insecure_http=bool(s.get("insecure_http")),
                     tokens=tuple(tokens), jwt=jwt)


#: The shortest audit key accepted, in bytes: an HMAC-SHA256 key as long as its output.
MIN_AUDIT_KEY_BYTES = 32


def _check_private_dir(path: Path, key: str, report: Any) -> None:
    """Report ``path`` under ``key`` if it exists and other users own or may write it."""
    if not os.path.lexists(path):
        return  # created private (0700) when first used
    try:
        check_private_dir(path)
    except UnsafeFile as exc:
        report(key, str(exc))
    except OSError as exc:
        report(key, f"cannot check {path}: {exc.strerror}")


def _audit_sinks(raw: Any, default_format: str, problems: _Problems, base: Path,
                 env: Mapping[str, str] | None, *, check_files: bool,
                 spool_dir: Path = Path("state/audit-spool")) -> list[AuditSink]:
    """The ``[[audit.sinks]]`` entries; every problem reported under ``audit.sinks[i]``."""
    if not isinstance(raw, list):
        problems.reporter("audit")("sinks", "must be an array of tables: [[audit.sinks]]")
        return []
    sinks: list[AuditSink] = []
    for i, entry in enumerate(raw):
        report = problems.reporter(f"audit.sinks[{i}]")
        if not isinstance(entry, dict):
            report("", "must be a table")
            continue
        if entry.get("type") in ("syslog", "http"):
            remote = _remote_sink(entry, default_format, report, base, env,
                                  [e.get("name") for e in raw[:i] if isinstance(e, dict)],
                                  spool_dir, resolve=check_files)
            if remote is not None:
                sinks.append(remote)
            continue
        settings = check_settings(entry, _AUDIT_SINK_SETTINGS, report, base_dir=base,
                                  environ=env)
        if not settings.get("path") or not settings.get("type"):
            continue
        path = Path(settings["path"])
        if any(s.path == path for s in sinks):
            report("path", f"another sink already writes {path}")
            continue
        if check_files:
            _check_audit_file(path, lambda _key, reason, report=report: report("path", reason))
        sinks.append(AuditSink(settings["type"], path, settings.get("format") or default_format))
    return sinks


def _remote_sink(entry: Mapping[str, Any], default_format: str, report: Any, base: Path,
                 env: Mapping[str, str] | None, earlier_names: list[Any], spool_dir: Path,
                 *, resolve: bool) -> AuditSink | None:
    """A syslog or http ``[[audit.sinks]]`` entry, every problem reported; None if any."""
    kind = entry["type"]
    schema = _AUDIT_SYSLOG_SETTINGS if kind == "syslog" else _AUDIT_HTTP_SETTINGS
    problems: list[tuple[str, str]] = []

    def note(key: str, reason: str) -> None:
        problems.append((key, reason))
        report(key, reason)

    s = check_settings(entry, schema, note, base_dir=base, environ=env,
                       resolve_secrets=resolve)
    name = s.get("name")
    if name is not None and not _NAME.match(name):
        note("name", "letters, digits, '.', '_' and '-' only, at most 64")
    elif name is not None and name in earlier_names:
        note("name", f"another sink is already named {name!r}")
    if bool(s.get("cert_file")) != bool(s.get("key_file")):
        note("cert_file" if not s.get("cert_file") else "key_file",
             "a client certificate needs both cert_file and key_file")
    for key in ("ca_file", "cert_file", "key_file"):
        if s.get(key) and not os.path.isfile(s[key]):
            note(key, f"{s[key]} does not exist or is not a file")
    for key in ("spool_max_bytes", "batch_size"):
        if s.get(key) is not None and s[key] < 1:
            note(key, "must be at least 1")
    if kind == "syslog" and s.get("address"):
        host, _, port = str(s["address"]).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            note("address", f"expected host:port, got {s['address']!r}")
        elif s.get("transport") != "tls" and not s.get("allow_cleartext") and \
                not _is_loopback(host.strip("[]")):
            note("transport", f"{s['transport']} to {host} would send the audit trail in "
                              "cleartext: use transport = \"tls\", or set allow_cleartext = "
                              "true in this table if you mean it")
    if kind == "http" and s.get("url"):
        problem = url_problem(s["url"], bool(s.get(_INSECURE_OK)))
        if problem:
            note("url", problem)
        if s.get("api") == "hec" and "token_env" not in entry and "token_file" not in entry:
            note("token_env", "Splunk HEC needs a token: set token_env or token_file")
    if problems or name is None:
        return None
    return AuditSink(kind, spool_dir / f"{name}.jsonl", s.get("format") or default_format,
                     name=name, settings=s)


def _check_audit_file(path: Path, report: Any) -> None:
    """Report an existing audit log that is a symlink, another user's, or open to others."""
    _check_private_dir(path.parent, "file", report)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        report("file", f"cannot check {path}: {exc.strerror}")
        return
    if stat.S_ISLNK(info.st_mode):
        report("file", f"{path} is a symbolic link; point the setting at the real file")
    elif not stat.S_ISREG(info.st_mode):
        report("file", f"{path} is not a regular file")
    elif info.st_uid != os.geteuid():
        report("file", f"{path} belongs to another user (uid {info.st_uid})")
    elif info.st_mode & 0o077:
        report("file", f"{path} is open to other users (mode "
                       f"{stat.S_IMODE(info.st_mode):o}); chmod 600 it")


def _stores_of(raw_clients: Mapping[str, Any], consumer: str,
               problems: _Problems) -> set[str]:
    """Names of the stores client ``consumer`` reads from, for a consumer load."""
    table = raw_clients.get(consumer)
    if not isinstance(table, dict):
        problems.reporter("clients")(consumer, "no such client in the configuration")
        return set()
    targets = table.get("stores")
    return {t["store"] for t in targets if isinstance(t, dict) and isinstance(t.get("store"),
                                                                                str)} \
        if isinstance(targets, list) else set()


def _journal(raw: Any, problems: _Problems, base: Path, environ: Mapping[str, str], *,
             resolve: bool) -> JournalConfig:
    """Check ``[journal]``: the URL's form and TLS, never quoting it (it holds a password)."""
    report = problems.reporter("journal")
    table = _table(raw, "journal", problems)
    checked = check_settings(table, _JOURNAL_SETTINGS, report, base_dir=base,
                             environ=environ, resolve_secrets=resolve)
    url: Secret | None = checked.get("url")
    weak = bool(checked.get("allow_weak_tls"))
    if url is not None:
        from rotator.journal.postgres import url_problem as journal_url_problem

        key = "url_file" if "url_file" in table else "url_env"
        problem = journal_url_problem(url.reveal(), weak)
        if problem is not None:
            report(key, problem)
        elif importlib.util.find_spec("psycopg") is None:
            report(key, "a PostgreSQL journal needs the postgres extra: "
                        "pip install 'rotator[postgres]'")
    return JournalConfig(url=url, allow_weak_tls=weak)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *,
                consumer: str | None = None, stores_only: bool = False) -> Config:
    """Read and check the configuration at ``path``.

    ``consumer`` loads it for a service that only reads client ``consumer``'s credentials
    (the client library): every table is still checked, but secrets are read only for that
    client's stores, so the service needs neither the audit key nor an IdP's admin secret.
    ``stores_only`` reads the secrets of every store and of nothing else (``rotator status``).
    Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if environ is None else environ
    p = Path(path)
    problems = _Problems(str(p))
    report = problems.reporter("")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(p), "-", "file does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(p), "-", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(p), "-", f"not valid TOML: {exc}")]) from None
    base = p.parent.resolve()

    for key in raw:
        if key not in ("rotator", "audit", "stores", "idps", "clients", "defaults", "daemon",
                       "api", "alerts", "journal"):
            report(key, "unknown section; expected rotator, audit, stores, idps, clients, "
                        "defaults, daemon, api, alerts, journal")
    rot = check_settings(_table(raw.get("rotator"), "rotator", problems), _ROTATOR_SETTINGS,
                         problems.reporter("rotator"), base_dir=base, environ=env)
    admin = consumer is None and not stores_only  # the audit key and IdP secrets are needed
    audit: Settings = {"file": None, "stdout": False, "key": None}
    audit_sinks: list[AuditSink] = []
    if "audit" in raw:
        audit_table = _table(raw["audit"], "audit", problems)
        audit = check_settings(audit_table, _AUDIT_SETTINGS, problems.reporter("audit"),
                               base_dir=base, environ=env, resolve_secrets=admin,
                               ignore=("sinks",))
        audit_report = problems.reporter("audit")
        audit_sinks = _audit_sinks(audit_table.get("sinks", []), audit.get("format") or "json",
                                   problems, base, env, check_files=admin,
                                   spool_dir=(Path(rot["state_dir"]) if rot.get("state_dir")
                                              else base / "state") / "audit-spool")
        if not audit.get("file") and not audit.get("stdout") and not audit_sinks:
            audit_report("file", "set file, stdout = true, or both")
        if not audit.get("file") and any(s.type != "file" for s in audit_sinks) and \
                not any(s.type == "file" for s in audit_sinks):
            audit_report("file", "syslog and http sinks are fed after the local record is "
                                 "durable: set file (or add a sink of type file)")
        audit_key = audit.get("key")
        if audit_key is not None and len(audit_key.reveal().encode()) < MIN_AUDIT_KEY_BYTES:
            given = "key_file" if "key_file" in raw["audit"] else "key_env"
            audit_report(given, f"the audit key must be at least {MIN_AUDIT_KEY_BYTES} bytes; "
                                "generate one with: openssl rand -hex 32")
        if admin and audit.get("file"):
            _check_audit_file(Path(audit["file"]), audit_report)
    elif admin:
        report("audit", "required section: [audit] with key_env or key_file and a file")

    raw_defaults = _table(raw.get("defaults"), "defaults", problems)
    defaults = check_settings(raw_defaults, _DEFAULTS_SETTINGS, problems.reporter("defaults"),
                              base_dir=base, environ=env, ignore=("hooks",))
    defaults = {k: v for k, v in defaults.items() if k in raw_defaults}
    _check_timing(defaults, problems.reporter("defaults"))
    daemon = check_settings(_table(raw.get("daemon"), "daemon", problems), _DAEMON_SETTINGS,
                            problems.reporter("daemon"), base_dir=base, environ=env)
    for key in ("workers", "idp_concurrency"):
        if daemon.get(key) is not None and daemon[key] < 1:
            problems.reporter("daemon")(key, "must be at least 1")
    if daemon.get("lease") is not None and not 1 <= daemon["lease"] <= 3600:
        problems.reporter("daemon")("lease", "must be between 1 second and 1 hour")
    journal = _journal(raw.get("journal"), problems, base, env, resolve=consumer is None)
    raw_stores = _table(raw.get("stores"), "stores", problems)
    raw_idps = _table(raw.get("idps"), "idps", problems)
    raw_clients = _table(raw.get("clients"), "clients", problems)
    if not raw_clients:
        report("clients", "no clients configured")
    api = _api(raw.get("api"), problems, base, env, resolve=consumer is None)
    consumed = _stores_of(raw_clients, consumer, problems) if consumer else None
    stores = _adapters(raw_stores, "store", "stores", problems, base, env,
                       lambda name: consumed is None or name in consumed)
    idps = _adapters(raw_idps, "idp", "idps", problems, base, env,
                     lambda _name: admin)
    clients: dict[str, ClientConfig] = {}
    hook_args: dict[str, Any] = {"base": base, "environ": env, "resolve": admin,
                                 "url_problem": url_problem}
    default_hooks = parse_hooks(raw_defaults.get("hooks"), "defaults.hooks",
                                problems.reporter, **hook_args)
    alerts = parse_alerts(raw.get("alerts"), problems.reporter("alerts"), **hook_args)
    for name, table in raw_clients.items():
        client = _client(name, table, stores, raw_stores, raw_idps, problems, base, env,
                         defaults, idps, resolve_idp_secrets=admin)
        own = parse_hooks(table.get("hooks") if isinstance(table, dict) else None,
                          f"clients.{name}.hooks", problems.reporter, **hook_args,
                          taken={h.name for h in default_hooks})
        if client is not None:
            clients[name] = replace(client, hooks=default_hooks + own)
    by_id: dict[tuple[str, str], str] = {}
    for c in clients.values():
        other = by_id.setdefault((c.idp, c.client_id), c.name)
        if other != c.name:
            problems.reporter(f"clients.{c.name}")(
                "client_id", f"client {c.client_id!r} at {c.idp!r} is already configured as "
                             f"{other!r}")
    for idp_name, idp in list(idps.items()):
        if getattr(idp.cls, "CLIENT_SETTINGS", ()) and admin:
            idps[idp_name] = replace(idp, clients={
                c.client_id: c.idp_settings for c in clients.values() if c.idp == idp_name})
    state_dir = Path(rot["state_dir"]) if rot.get("state_dir") else base / "state"
    if consumer is None:  # a consumer keeps no state; the directory may be rotator's own
        _check_private_dir(state_dir, "state_dir", problems.reporter("rotator"))
    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        path=p, state_dir=state_dir,
        audit=AuditConfig(file=Path(audit["file"]) if audit.get("file") else None,
                          stdout=audit["stdout"], key=audit.get("key"),
                          format=audit.get("format") or "json", sinks=tuple(audit_sinks)),
        stores=stores, idps=idps, clients=clients, api=api,
        daemon=DaemonConfig(**{s.key: daemon[s.key] for s in _DAEMON_SETTINGS}),
        alerts=alerts,
        journal=journal,
    )
