"""Durable per-client adapter state kept in a secret store (:class:`ClientState`).

Some identity providers hand out a per-client credential that changes on use: an RFC 7592
server may answer every update with a new registration access token and refuse the old one.
The adapter must keep that value across processes and crashes, secret-safe: it lives as
CURRENT of a store location the client's configuration names (any configured store: an
OpenBao path, an AWS secret, an env-file prefix), written through the store's own atomic,
private write, never in the journal or a log line. Each save is tagged with a fresh id, so
the store's idempotent writes never mistake a new value for a repeat of the last one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from rotator.errors import StoreError
from rotator.interfaces import ClientId, ClientState, Credentials, Location, SecretStore, Stage
from rotator.journal import new_rotation_id
from rotator.secrets import Secret


class StoreClientState:
    """One client's adapter state at ``location`` in the store ``store_name``."""

    def __init__(self, client_id: ClientId, store_name: str, location: Location,
                 store: Callable[[], SecretStore]) -> None:
        self.client_id = client_id
        self.store_name = store_name
        self.location = location
        self._store = store  # started on first use, like every adapter

    def __str__(self) -> str:  # names where the value lives, never the value
        return f"store {self.store_name!r} at {self.location!r}"

    def _get(self) -> SecretStore:
        try:
            return self._store()
        except KeyError:
            raise StoreError(f"no store named {self.store_name!r} in [stores] to keep client "
                             f"{self.client_id!r}'s adapter state") from None

    def load(self) -> Secret | None:
        stored = self._get().read(self.location, Stage.CURRENT)
        if stored is None:
            return None
        if stored.credentials.client_id != self.client_id:
            raise StoreError(f"{self} holds state of client {stored.credentials.client_id!r}, "
                             f"not of {self.client_id!r}")
        return stored.credentials.client_secret

    def save(self, value: Secret) -> None:
        store = self._get()
        creds = Credentials(self.client_id, value)
        tag = new_rotation_id()
        write_current = getattr(store, "write_current", None)
        if callable(write_current):
            write_current(self.location, creds, tag)
            return
        store.stage_pending(self.location, creds, tag, replace_foreign=True)
        store.promote(self.location, tag)
        store.drop_previous(self.location, tag)  # a replaced value is of no use to anyone


def bind_client_states(idp: object, client_ids: list[ClientId],
                       store: Callable[[str], SecretStore]) -> None:
    """Give ``idp`` a :class:`StoreClientState` for each client it names a location for."""
    locate = getattr(idp, "client_state_location", None)
    bind = getattr(idp, "bind_client_state", None)
    if not callable(locate) or not callable(bind):
        return
    for client_id in client_ids:
        where = locate(client_id)
        if where is None:
            continue
        store_name, location = where
        state: ClientState = StoreClientState(client_id, store_name, location,
                                              functools.partial(store, store_name))
        bind(client_id, state)
