"""Checking each ``[clients.*]`` table, its stores and its schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rotator.config.model import AdapterConfig, ClientConfig, StoreTarget
from rotator.config.network import url_problem
from rotator.config.problems import _Problems
from rotator.config.schema import _CLIENT_SETTINGS, _INSECURE_OK, _NAME
from rotator.settings import Setting, Settings, check_settings


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
