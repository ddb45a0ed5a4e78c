"""The adapters a configuration names, built and started once, and shared httpx clients."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx

from rotator.config import ClientConfig, Config
from rotator.engine.client_state import bind_client_states
from rotator.engine.verification import HttpFactory
from rotator.interfaces import IdentityProvider, SecretStore


def _http_key(client: ClientConfig) -> tuple[object, ...]:
    """Clients whose token requests may share one httpx client (and its TLS context)."""
    return (client.tls_verify, client.verify_timeout)


class Adapters:
    """Builds adapters from the configuration and starts each on first use.

    Worker threads may share one: each adapter is built and started once, by the first
    thread that asks for it, while the others wait for that start.
    """

    def __init__(self, config: Config, *, stores: Mapping[str, SecretStore] | None = None,
                 idps: Mapping[str, IdentityProvider] | None = None) -> None:
        self._config = config
        # Adapters given here (already constructed, e.g. with a test transport) are started
        # on first use like the others.
        self._given_stores = dict(stores or {})
        self._given_idps = dict(idps or {})
        self._stores: dict[str, SecretStore] = {}
        self._idps: dict[str, IdentityProvider] = {}
        self._http: dict[tuple[object, ...], httpx.Client] = {}
        self._http_lock = threading.Lock()
        # One lock per adapter being started, so that a slow start (a sign-in) of one store
        # does not hold up threads that need another.
        self._starting: dict[tuple[str, str], threading.Lock] = {}
        self._starting_lock = threading.Lock()

    def _start_lock(self, kind: str, name: str) -> threading.Lock:
        with self._starting_lock:
            return self._starting.setdefault((kind, name), threading.Lock())

    def store(self, name: str) -> SecretStore:
        started = self._stores.get(name)
        if started is not None:
            return started
        with self._start_lock("store", name):
            if name not in self._stores:
                store: SecretStore = (self._given_stores.get(name)
                                      or self._config.stores[name].build())
                store.start()
                self._stores[name] = store
            return self._stores[name]

    def idp(self, name: str) -> IdentityProvider:
        started = self._idps.get(name)
        if started is not None:
            return started
        with self._start_lock("idp", name):
            if name not in self._idps:
                idp: IdentityProvider = (self._given_idps.get(name)
                                         or self._config.idps[name].build())
                # Per-client state an IdP keeps (an RFC 7592 registration access token)
                # lives in a configured store; see rotator.engine.client_state.
                bind_client_states(idp, [c.client_id for c in self._config.clients.values()
                                         if c.idp == name], self.store)
                idp.start()
                self._idps[name] = idp
            return self._idps[name]

    def http(self, client: ClientConfig, factory: HttpFactory) -> httpx.Client:
        """One httpx client per TLS setting and timeout, kept open until :meth:`close`.

        Building a client loads the CA bundle into a fresh TLS context, which costs more
        than a token request; verifications share one instead.
        """
        key = (factory, *_http_key(client))
        with self._http_lock:
            if key not in self._http:
                self._http[key] = factory(client)
            return self._http[key]

    def close(self) -> None:
        for http in self._http.values():
            http.close()
        self._http.clear()
        for store in self._stores.values():
            store.close()
        for idp in self._idps.values():
            idp.close()
        self._stores.clear()
        self._idps.clear()
