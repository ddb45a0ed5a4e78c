"""Adapter discovery: each ``[stores.*]`` and ``[idps.*]`` table's class and settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rotator.config.model import AdapterConfig
from rotator.config.network import _is_url_key, url_problem
from rotator.config.problems import _Problems
from rotator.config.schema import _ALLOW_INSECURE, _CORE_CLIENT_KEYS, _INSECURE_OK, _NAME
from rotator.registry import AdapterImportError, load_adapter_class
from rotator.settings import check_settings


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
