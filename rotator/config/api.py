"""Checking the ``[api]`` table: listen address, TLS, bearer tokens and JWTs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rotator.config.model import ApiConfig, ApiToken, JwtConfig
from rotator.config.network import is_loopback, parse_listen, plain_http_refusal
from rotator.config.problems import _Problems, _table
from rotator.config.schema import (
    _API_JWT_SETTINGS,
    _API_SETTINGS,
    _API_TOKEN_SETTINGS,
    _NAME,
    _SHA256_HEX,
    API_ROLES,
    CONSUMER_ROLE,
    MIN_API_TOKEN_LENGTH,
)
from rotator.settings import check_settings


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
        roles = (*API_ROLES, CONSUMER_ROLE)
        scopes = [js.get(f"{role}_scope") for role in roles]
        for role, scope in zip(roles, scopes, strict=True):
            if scope is not None and scopes.count(scope) > 1:
                j_report(f"{role}_scope", f"{scope!r} is also another role's scope: each "
                                          f"role needs its own")
        distinct = len(set(scopes)) == len(scopes)
        if distinct and all(setting.key in js for setting in _API_JWT_SETTINGS):
            jwt = JwtConfig(js["jwks_uri"], js["issuer"], js["audience"],
                            {role: js[f"{role}_scope"] for role in roles},
                            js["ca_file"])
    return ApiConfig(host=host, port=port, cert_file=s.get("cert_file"),
                     key_file=s.get("key_file"), insecure_http=bool(s.get("insecure_http")),
                     tokens=tuple(tokens), jwt=jwt)
