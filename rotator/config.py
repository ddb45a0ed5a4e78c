"""Loading and validating rotator's TOML configuration.

:func:`load_config` reads the file, checks every table and raises one
:class:`~rotator.errors.ConfigError` listing every problem (file, key path, reason). No
secret lives in the file: secret settings name an environment variable (``*_env``) or a
file (``*_file``). See ``config/rotator.toml`` for the documented example.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotator._files import UnsafeFile, check_private_dir
from rotator.errors import ConfigError, ConfigProblem
from rotator.registry import AdapterImportError, load_adapter_class
from rotator.secrets import Secret
from rotator.settings import Setting, Settings, check_settings

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_ROTATOR_SETTINGS = (
    Setting("state_dir", "path", default=None,
            help="directory for the rotation journal and locks"),
)
_AUDIT_SETTINGS = (
    Setting("file", "path", help="JSON-lines audit log"),
    Setting("stdout", "bool", default=False),
    Setting("key", secret=True, required=True, help="audit HMAC key"),
)
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
)


@dataclass(frozen=True)
class AdapterConfig:
    """A store or identity-provider table: its name, type, class and checked settings."""

    name: str
    type: str
    cls: Any
    settings: Settings

    def build(self) -> Any:
        """Construct the adapter (no I/O happens until its ``start()``)."""
        return self.cls(self.name, self.settings)


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

    @property
    def primary(self) -> StoreTarget:
        """The store that verification reads from; the first one listed."""
        return self.targets[0]


@dataclass(frozen=True)
class AuditConfig:
    file: Path | None
    stdout: bool
    #: None only in a configuration loaded for a consumer (``load_config(consumer=...)``).
    key: Secret | None

    def require_key(self, config_path: Path) -> Secret:
        """The audit key; ``ConfigError`` if this configuration was loaded without it."""
        if self.key is None:
            raise ConfigError([ConfigProblem(str(config_path), "audit.key_env",
                                             "loaded for a consumer: no audit key")])
        return self.key


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    audit: AuditConfig
    stores: dict[str, AdapterConfig] = field(default_factory=dict)
    idps: dict[str, AdapterConfig] = field(default_factory=dict)
    clients: dict[str, ClientConfig] = field(default_factory=dict)


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
) -> dict[str, AdapterConfig]:
    out: dict[str, AdapterConfig] = {}
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
        schema: tuple[Setting, ...] = cls.SETTINGS
        settings = check_settings(table, schema, report, base_dir=base, environ=environ,
                                  ignore=("type",), resolve_secrets=resolve(name))
        out[name] = AdapterConfig(name, type_name, cls, settings)
    return out


def _client(
    name: str, table: Any, cfg_stores: dict[str, AdapterConfig], raw_stores: Mapping[str, Any],
    idps: Mapping[str, Any], problems: _Problems, base: Path, environ: Mapping[str, str],
) -> ClientConfig | None:
    prefix = f"clients.{name}"
    report = problems.reporter(prefix)
    if not _NAME.match(name):
        report("", "name must be letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        report("", "must be a table")
        return None
    s = check_settings(table, _CLIENT_SETTINGS, report, base_dir=base, environ=environ,
                       ignore=("stores",))
    if s.get("idp") and s["idp"] not in idps:
        report("idp", f"no identity provider named {s['idp']!r} in [idps]")
    if s.get("verify_attempts") is not None and s["verify_attempts"] < 1:
        report("verify_attempts", "must be at least 1")
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
        tls_verify=tls,
    )


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


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *,
                consumer: str | None = None) -> Config:
    """Read and check the configuration at ``path``.

    ``consumer`` loads it for a service that only reads client ``consumer``'s credentials
    (the client library): every table is still checked, but secrets are read only for that
    client's stores, so the service needs neither the audit key nor an IdP's admin secret.
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
        if key not in ("rotator", "audit", "stores", "idps", "clients"):
            report(key, "unknown section; expected rotator, audit, stores, idps, clients")
    rot = check_settings(_table(raw.get("rotator"), "rotator", problems), _ROTATOR_SETTINGS,
                         problems.reporter("rotator"), base_dir=base, environ=env)
    audit: Settings = {"file": None, "stdout": False, "key": None}
    if "audit" in raw:
        audit = check_settings(_table(raw["audit"], "audit", problems), _AUDIT_SETTINGS,
                               problems.reporter("audit"), base_dir=base, environ=env,
                               resolve_secrets=consumer is None)
        audit_report = problems.reporter("audit")
        if not audit.get("file") and not audit.get("stdout"):
            audit_report("file", "set file, stdout = true, or both")
        audit_key = audit.get("key")
        if audit_key is not None and len(audit_key.reveal().encode()) < MIN_AUDIT_KEY_BYTES:
            given = "key_file" if "key_file" in raw["audit"] else "key_env"
            audit_report(given, f"the audit key must be at least {MIN_AUDIT_KEY_BYTES} bytes; "
                                "generate one with: openssl rand -hex 32")
        if consumer is None and audit.get("file"):
            _check_audit_file(Path(audit["file"]), audit_report)
    elif consumer is None:
        report("audit", "required section: [audit] with key_env or key_file and a file")

    raw_stores = _table(raw.get("stores"), "stores", problems)
    raw_idps = _table(raw.get("idps"), "idps", problems)
    raw_clients = _table(raw.get("clients"), "clients", problems)
    if not raw_clients:
        report("clients", "no clients configured")
    consumed = _stores_of(raw_clients, consumer, problems) if consumer else None
    stores = _adapters(raw_stores, "store", "stores", problems, base, env,
                       lambda name: consumed is None or name in consumed)
    idps = _adapters(raw_idps, "idp", "idps", problems, base, env,
                     lambda _name: consumer is None)
    clients: dict[str, ClientConfig] = {}
    for name, table in raw_clients.items():
        client = _client(name, table, stores, raw_stores, raw_idps, problems, base, env)
        if client is not None:
            clients[name] = client
    by_id: dict[tuple[str, str], str] = {}
    for c in clients.values():
        other = by_id.setdefault((c.idp, c.client_id), c.name)
        if other != c.name:
            problems.reporter(f"clients.{c.name}")(
                "client_id", f"client {c.client_id!r} at {c.idp!r} is already configured as "
                             f"{other!r}")
    state_dir = Path(rot["state_dir"]) if rot.get("state_dir") else base / "state"
    if consumer is None:  # a consumer keeps no state; the directory may be rotator's own
        _check_private_dir(state_dir, "state_dir", problems.reporter("rotator"))
    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        path=p, state_dir=state_dir,
        audit=AuditConfig(file=Path(audit["file"]) if audit.get("file") else None,
                          stdout=audit["stdout"], key=audit.get("key")),
        stores=stores, idps=idps, clients=clients,
    )
