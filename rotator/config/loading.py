"""Reading the file and checking it as a whole: :func:`load_config`."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rotator.config.adapters import _adapters
from rotator.config.api import _api
from rotator.config.audit import _audit_sinks, _check_audit_file, _check_private_dir
from rotator.config.clients import _check_timing, _client
from rotator.config.model import (
    AuditConfig,
    AuditSink,
    ClientConfig,
    Config,
    DaemonConfig,
    JournalConfig,
)
from rotator.config.network import url_problem
from rotator.config.problems import _Problems, _table
from rotator.config.schema import (
    _AUDIT_SETTINGS,
    _DAEMON_SETTINGS,
    _DEFAULTS_SETTINGS,
    _JOURNAL_SETTINGS,
    _ROTATOR_SETTINGS,
    MIN_AUDIT_KEY_BYTES,
)
from rotator.errors import ConfigError, ConfigProblem
from rotator.hooks.config import parse_alerts, parse_hooks
from rotator.secrets import Secret
from rotator.settings import Settings, check_settings

# Compiled (mypyc) where the daemon extra installs it: a 10,000-client file parses in 0.2 s
# instead of tomllib's 0.55 (the same TOML 1.0 parser; tomllib grew out of it).
try:
    from tomli import TOMLDecodeError, loads
except ImportError:
    from tomllib import TOMLDecodeError, loads  # type: ignore[assignment]


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
        raw = loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(p), "-", "file does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(p), "-", f"cannot read: {exc}")]) from None
    except TOMLDecodeError as exc:
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
            clients[name] = replace(client, hooks=default_hooks + own) \
                if default_hooks or own else client
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
