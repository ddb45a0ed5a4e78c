"""Declarative settings for adapters: each adapter lists its keys, this module checks them.

An adapter class declares ``SETTINGS: tuple[Setting, ...]``. The configuration loader calls
:func:`check_settings` on the adapter's table and collects every problem, so a user sees all
of them at once. A setting marked ``secret`` is never written in the file: the user names
an environment variable (``<key>_env``) or a file (``<key>_file``) that holds it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from rotator._files import UnsafeFile, read_private_file
from rotator.secrets import Secret

#: Checked settings handed to an adapter: plain values, and ``Secret`` for secret settings.
Settings = dict[str, Any]
T = TypeVar("T")
#: Reports one problem: (key path relative to the table, reason).
Report = Callable[[str, str], None]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
#: The longest duration accepted: longer ones overflow socket timeouts, timers and dates.
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"30d"``; raises ValueError."""
    seconds = _parse_duration(value)
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be at most 100 years, got {value!r}")
    return seconds


def _parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '90s', '15m', '24h' or '30d'")
    if isinstance(value, int | float):
        if not math.isfinite(value):  # TOML allows nan and inf
            raise ValueError(f"a duration must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"expected a duration such as 30, '90s', '15m', '24h' or '30d', got {value!r}")


@dataclass(frozen=True)
class Setting:
    """One key an adapter accepts."""

    key: str
    kind: str = "str"  # str | int | float | bool | duration | list[str] | path | store
    # "store": the name of a table in [stores] (checked by the config loader), e.g. where an
    # IdP keeps per-client state (rotator.interfaces.ClientState).
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    #: Given as ``<key>_env`` or ``<key>_file``, never inline; resolved to a ``Secret``.
    secret: bool = False
    help: str = ""

    def accepted_keys(self) -> tuple[str, ...]:
        if self.secret:
            return (f"{self.key}_env", f"{self.key}_file")
        return (self.key,)


def read_secret_file(path: Path) -> Secret:
    """Read a secret from ``path``: a file of this user's that neither the group nor others
    may open (checked on the opened file, as ssh does for keys), or a symlink to such a file
    that no one else can swap (see :func:`rotator._files.read_private_file`).

    Raises ValueError with a reason fit for a configuration problem.
    """
    try:
        data = read_private_file(path)
    except FileNotFoundError:
        raise ValueError(f"file {path} does not exist") from None
    except UnsafeFile as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return Secret(text)


def _check_value(setting: Setting, value: Any, base_dir: Path) -> Any:
    """Return the converted value or raise ValueError with the reason."""
    kind = setting.kind
    if kind in ("str", "path", "store"):
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty string")
        if setting.choices and value not in setting.choices:
            raise ValueError(f"must be one of {', '.join(setting.choices)}; got {value!r}")
        return str(base_dir / value) if kind == "path" else value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return float(value)
    if kind == "duration":
        return parse_duration(value)
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError("must be a list of non-empty strings")
        return list(value)
    raise AssertionError(f"unknown setting kind {kind}")  # pragma: no cover


#: Per schema (its settings' ids: the schema is kept here too, so no id is reused while its
#: entry lives) and ignored keys: the keys a table may hold.
_KNOWN: dict[tuple[tuple[int, ...], tuple[str, ...]],
             tuple[tuple[Setting, ...], frozenset[str]]] = {}


def _known_keys(schema: tuple[Setting, ...], ignore: tuple[str, ...]) -> frozenset[str]:
    """The keys a table checked against ``schema`` may hold (one schema serves every client
    of a configuration: worked out once, not 10,000 times)."""
    key = (tuple(map(id, schema)), ignore)
    cached = _KNOWN.get(key)
    if cached is not None:
        return cached[1]
    known = frozenset(k for s in schema for k in s.accepted_keys()) | frozenset(ignore)
    if len(_KNOWN) >= 256:
        _KNOWN.clear()
    _KNOWN[key] = (schema, known)
    return known


def check_settings(
    table: Mapping[str, Any],
    schema: tuple[Setting, ...],
    report: Report,
    *,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    ignore: tuple[str, ...] = (),
    resolve_secrets: bool = True,
) -> Settings:
    """Check ``table`` against ``schema``; report every problem; return the settings.

    Secret settings are resolved here (environment variable or file), so a missing
    variable is a configuration problem reported with the rest. With ``resolve_secrets``
    false they are only checked for form and left out of the result.
    """
    env = os.environ if environ is None else environ
    known = _known_keys(schema, ignore)
    for key in table:
        if key not in known:
            report(key, f"unknown key; expected one of: {', '.join(sorted(known))}")
    out: Settings = {}
    for setting in schema:
        if setting.secret:
            env_key, file_key = setting.accepted_keys()
            given = [k for k in (env_key, file_key) if k in table]
            if len(given) == 2:
                report(setting.key, f"give either {env_key} or {file_key}, not both")
                continue
            if not given:
                if setting.required:
                    report(env_key, f"required: name the environment variable holding the "
                                    f"{setting.help or setting.key} (or use {file_key})")
                continue
            key = given[0]
            ref = table[key]
            if not isinstance(ref, str) or not ref:
                report(key, "must be a non-empty string")
                continue
            if not resolve_secrets:
                continue
            if key == env_key:
                value = env.get(ref)
                if not value:
                    report(key, f"environment variable {ref} is not set")
                    continue
                out[setting.key] = Secret(value)
            else:
                try:
                    out[setting.key] = read_secret_file(base_dir / ref)
                except ValueError as exc:
                    report(key, str(exc))
            continue
        if setting.key not in table:
            if setting.required:
                report(setting.key, "required key is missing"
                       + (f" ({setting.help})" if setting.help else ""))
            else:
                out[setting.key] = setting.default
            continue
        try:
            out[setting.key] = _check_value(setting, table[setting.key], base_dir)
        except ValueError as exc:
            report(setting.key, str(exc))
    return out


def typed(cls: type[T], settings: Mapping[str, Any]) -> T:
    """``settings`` (checked, defaults filled in) as an instance of the dataclass ``cls``.

    An adapter declares its keys once, in ``SETTINGS``, with their defaults, and reads them
    through a frozen dataclass whose fields carry no defaults of their own: a default stated
    in two places cannot drift. A field whose key is absent (a secret not loaded, e.g. for a
    consumer) becomes ``None``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: settings.get(name) for name in names})
