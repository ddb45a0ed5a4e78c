"""Adapter types by name, found through entry points and imported only when a configuration
uses them.

An adapter registers itself as an entry point of the distribution that ships it, as
certbot's plugins do, so a third party can publish one without editing rotator::

    [project.entry-points."rotator.idps"]
    myidp = "my_package.idp:MyIdp [extra]"

Groups: ``rotator.idps`` (:class:`~rotator.interfaces.IdentityProvider`) and
``rotator.stores`` (:class:`~rotator.interfaces.SecretStore`). rotator's built-in adapters
register the same way in its own ``pyproject.toml``; :data:`BUILTIN` repeats them only so
that a source checkout that was never installed still finds them. The optional ``[extra]``
of an entry point names the pip extra that brings the adapter's dependencies.

The core never imports a vendor SDK: an adapter module is imported when a configuration
names its type, and a missing optional dependency becomes a configuration problem that
names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUPS = {"store": "rotator.stores", "idp": "rotator.idps"}

#: The built-in adapters, as registered in pyproject.toml: group -> name -> entry point value.
BUILTIN: dict[str, dict[str, str]] = {
    "rotator.stores": {
        "vault": "providers.stores.vault:VaultStore [vault]",
        "env": "providers.stores.env:EnvStore",
        "aws_secrets_manager": "providers.stores.aws_secrets_manager:AwsSecretsManagerStore [aws]",
    },
    "rotator.idps": {
        "keycloak": "providers.idps.keycloak:KeycloakIdp",
        "hydra": "providers.idps.hydra:HydraIdp",
        "glewlwyd": "providers.idps.glewlwyd:GlewlwydIdp",
        "entra": "providers.idps.entra:EntraIdp",
        "cognito": "providers.idps.cognito:CognitoIdp [aws]",
        "rfc7592": "providers.idps.rfc7592:Rfc7592Idp",
        "okta": "providers.idps.okta:OktaIdp",
        "auth0": "providers.idps.auth0:Auth0Idp",
    },
}


class AdapterImportError(Exception):
    """An adapter type is unknown or its module cannot be imported."""


def adapter_entry_points(kind: str) -> dict[str, EntryPoint]:
    """The adapter types of ``kind`` ("store" or "idp") by name: installed ones, then built-ins.

    An installed entry point of a built-in name is rotator's own registration (or a
    replacement the user installed on purpose) and wins.
    """
    group = GROUPS[kind]
    found = {name: EntryPoint(name, value, group) for name, value in BUILTIN[group].items()}
    for ep in entry_points(group=group):
        found[ep.name] = ep
    return found


def load_adapter_class(kind: str, type_name: str) -> Any:
    """Return the adapter class for ``type_name`` of ``kind`` ("store" or "idp")."""
    table = adapter_entry_points(kind)
    if type_name not in table:
        raise AdapterImportError(
            f"unknown {kind} type {type_name!r}; known: {', '.join(sorted(table))}"
        )
    ep = table[type_name]
    module_name, _, class_name = ep.value.partition(" ")[0].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterImportError(
            f"{kind} type {type_name!r} needs a package that is missing ({exc.name})"
            f"{_install_hint(ep, type_name)}"
        ) from exc
    # An adapter that imports its SDK on first use names it in REQUIRES: check it is there.
    for package in getattr(module, "REQUIRES", ()):
        if importlib.util.find_spec(package) is None:
            raise AdapterImportError(
                f"{kind} type {type_name!r} needs a package that is missing ({package})"
                f"{_install_hint(ep, type_name)}")
    cls = module
    try:
        for part in class_name.split("."):
            cls = getattr(cls, part)
    except AttributeError as exc:
        raise AdapterImportError(
            f"{kind} type {type_name!r}: {module_name} has no {class_name}") from exc
    return cls


def _install_hint(ep: EntryPoint, type_name: str) -> str:
    """How to install what an adapter registered as ``ep`` needs, from its ``[extra]``."""
    if not ep.extras:
        return ""
    if BUILTIN[ep.group].get(type_name) == ep.value:
        return f"; install it with: pip install 'rotator[{ep.extras[0]}]'"
    return f"; install the extra {ep.extras[0]!r} of the package that provides it"
