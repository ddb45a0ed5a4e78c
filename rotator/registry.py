"""Adapter types by name, imported only when a configuration uses them.

The core never imports a vendor SDK: an adapter module is imported when a configuration
names its type, and a missing optional dependency becomes a configuration problem that
names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

#: type name -> (module, class, pip extra that brings its dependencies)
STORE_TYPES: dict[str, tuple[str, str, str | None]] = {
    "vault": ("providers.stores.vault", "VaultStore", "vault"),
    "env": ("providers.stores.env", "EnvStore", None),
    "aws_secrets_manager": (
        "providers.stores.aws_secrets_manager", "AwsSecretsManagerStore", "aws"),
}

IDP_TYPES: dict[str, tuple[str, str, str | None]] = {
    "keycloak": ("providers.idps.keycloak", "KeycloakIdp", None),
}


class AdapterImportError(Exception):
    """An adapter type is unknown or its module cannot be imported."""


def load_adapter_class(kind: str, type_name: str) -> Any:
    """Return the adapter class for ``type_name`` of ``kind`` ("store" or "idp")."""
    table = STORE_TYPES if kind == "store" else IDP_TYPES
    if type_name not in table:
        raise AdapterImportError(
            f"unknown {kind} type {type_name!r}; known: {', '.join(sorted(table))}"
        )
    module_name, class_name, extra = table[type_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'rotator[{extra}]'" if extra else ""
        raise AdapterImportError(
            f"{kind} type {type_name!r} needs a package that is missing ({exc.name}){hint}"
        ) from exc
    # An adapter that imports its SDK on first use names it in REQUIRES: check it is there.
    for package in getattr(module, "REQUIRES", ()):
        if importlib.util.find_spec(package) is None:
            hint = f"; install it with: pip install 'rotator[{extra}]'" if extra else ""
            raise AdapterImportError(
                f"{kind} type {type_name!r} needs a package that is missing ({package}){hint}")
    try:
        return getattr(module, class_name)
    except AttributeError as exc:  # pragma: no cover - a packaging mistake
        raise AdapterImportError(f"{module_name} has no {class_name}") from exc
