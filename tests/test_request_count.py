"""How many HTTP requests a rotation costs, counted at the transports on real servers.

Keycloak's admin API and the token endpoint are counted by an httpx transport wrapping the
real one; OpenBao (through hvac and requests) by wrapping requests' ``HTTPAdapter.send``.
A regression that adds a request to a rotation fails here, not in a benchmark.

What a rotation needs at the least, and so what these budgets allow:

* Keycloak: the client's representation (its capabilities under ``overlap = "auto"`` and
  its internal id, asked once per rotation), the new secret, one token request to verify.
  Sign-ins are counted apart (Keycloak's admin token, OpenBao's token check): one engine
  does each once, until the admin token expires.
* OpenBao, overlap rotation: the current version (data, version and custom metadata in one
  read), the pending write (check-and-set 0: it fails on a pending credential in the way,
  and a refused write takes the new secret back at the IdP, so nothing is read or checked
  before Keycloak is asked), and the promotion (data, metadata, removal of the pending copy).
* OpenBao, single-secret rotation: the current version, the token's capabilities (the IdP
  invalidates the old secret, so a read-only store must be found before), and the new
  secret written as CURRENT at once (data, metadata): no pending copy, no PREVIOUS, because
  the old secret no longer works.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao

from providers.idps.keycloak import KeycloakIdp
from rotator.audit import AuditLog
from rotator.config import ClientConfig, load_config
from rotator.engine import Adapters, Engine
from rotator.journal import Journal

pytestmark = pytest.mark.server

#: What a rotation may cost, sign-ins apart: issue #13's targets (was 25 and 27, then 10, 11).
OVERLAP_BUDGET = 8
SINGLE_BUDGET = 7


class Requests:
    """Every request seen, as ``METHOD /path`` with ids and versions folded."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.counting = False

    def add(self, method: str, where: str, url: str) -> None:
        if self.counting:
            self.seen.append(f"{method} {where}:{httpx.URL(url).path}")

    def report(self) -> str:
        return json.dumps(Counter(self.seen), indent=1)


class CountingTransport(httpx.BaseTransport):
    """The real httpx transport, counting each request first."""

    def __init__(self, seen: Requests, what: str) -> None:
        self._real = httpx.HTTPTransport()
        self._seen = seen
        self._what = what

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._seen.add(request.method, self._what, str(request.url))
        return self._real.handle_request(request)

    def close(self) -> None:
        self._real.close()


@contextmanager
def counting_requests(seen: Requests, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Count every request hvac sends (through requests' HTTPAdapter)."""
    real_send = requests.adapters.HTTPAdapter.send

    def send(adapter: requests.adapters.HTTPAdapter, request: requests.PreparedRequest,
             *args: Any, **kwargs: Any) -> requests.Response:
        seen.add(str(request.method), "vault", str(request.url))
        return real_send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    yield


@contextmanager
def counted_engine(s: Scenario, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[tuple[Engine, Requests, list[int]]]:
    """An engine whose every HTTP request is counted; also how often it built a token client."""
    seen = Requests()
    built: list[int] = []
    config = load_config(s.config)
    idp = KeycloakIdp("kc", config.idps["kc"].settings,
                      transport=CountingTransport(seen, "kc"))

    def http(client: ClientConfig) -> httpx.Client:
        built.append(1)
        return httpx.Client(timeout=client.verify_timeout,
                            transport=CountingTransport(seen, "token"))

    adapters = Adapters(config, idps={"kc": idp})
    audit = AuditLog(config.audit.key, file=config.audit.file)
    journal = Journal(config.state_dir)
    with counting_requests(seen, monkeypatch):
        try:
            yield Engine(config, adapters, journal, audit, sleep=lambda _s: None,
                         http_factory=http), seen, built
        finally:
            adapters.close()
            journal.close()
            audit.close()


def counted(seen: Requests, action: Callable[[], Any]) -> list[str]:
    seen.seen.clear()
    seen.counting = True
    try:
        result = action()
    finally:
        seen.counting = False
    assert result.ok, result.message
    return list(seen.seen)


def sign_in(request: str) -> bool:
    """Keycloak's admin sign-in, OpenBao's token check: once per engine, not per rotation."""
    return request == "GET vault:/v1/auth/token/lookup-self" or (
        request.startswith("POST kc:/realms/") and request.endswith("/openid-connect/token"))


def without_sign_in(requests_seen: list[str]) -> list[str]:
    return [r for r in requests_seen if not sign_in(r)]


class TestRotationRequestBudget:
    """A rotation costs at most the issue's budget of HTTP requests, and signs in once."""

    def test_overlap_rotation(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1d")
        with counted_engine(s, monkeypatch) as (engine, seen, _built):
            all_requests = counted(seen, lambda: engine.rotate("svc"))
        rest = without_sign_in(all_requests)
        assert len(all_requests) - len(rest) == 2, seen.report()
        assert len(rest) <= OVERLAP_BUDGET, json.dumps(Counter(rest), indent=1)

    def test_single_secret_rotation(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)
        with counted_engine(s, monkeypatch) as (engine, seen, _built):
            all_requests = counted(seen, lambda: engine.rotate("svc"))
        rest = without_sign_in(all_requests)
        assert len(rest) <= SINGLE_BUDGET, json.dumps(Counter(rest), indent=1)


class TestReuseAcrossRotations:
    """One engine signs in to Keycloak once and builds one token-endpoint client."""

    def test_second_rotation_reuses_token_and_client(
            self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="0s")
        with counted_engine(s, monkeypatch) as (engine, seen, built):
            first = counted(seen, lambda: engine.rotate("svc"))
            second = counted(seen, lambda: engine.rotate("svc"))
            verified = counted(seen, lambda: engine.verify("svc"))
        assert len(first) - len(without_sign_in(first)) == 2
        assert without_sign_in(second) == second, json.dumps(Counter(second), indent=1)
        assert len(verified) == 3  # one token request per store (OpenBao read + env file)
        assert len(built) == 1
