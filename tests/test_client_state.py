"""The engine's store-backed ClientState: where an IdP adapter keeps a per-client value that
changes on use (an RFC 7592 registration access token)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from providers.stores.env import EnvStore, parse_env
from rotator.engine.client_state import StoreClientState, bind_client_states
from rotator.errors import StoreError
from rotator.interfaces import ClientState, Credentials
from rotator.secrets import Secret, generate_secret


def _store(path: Path) -> EnvStore:
    store = EnvStore("env", {"file": str(path), "read_environ": False, "lock_timeout": 5.0})
    store.start()
    return store


class TestStoreClientState:
    """Each save replaces the value at once, durably, in a private file; load reads it back."""

    def test_saves_replace_and_load(self, tmp_path: Path) -> None:
        path = tmp_path / "state.env"
        store = _store(path)
        state = StoreClientState("c1", "env", "RAT", lambda: store)
        assert isinstance(state, ClientState)
        assert state.load() is None
        values = [generate_secret() for _ in range(3)]
        for value in values:  # one rotation may save several: each lands as CURRENT
            state.save(value)
            assert state.load() == value
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        env = parse_env(path.read_text())
        assert env["RAT_CLIENT_SECRET"] == values[-1].reveal()
        assert not any(values[0].reveal() in v for v in env.values())  # nothing kept behind
        assert "RAT_CLIENT_SECRET_PENDING" not in env
        assert "RAT_CLIENT_SECRET_PREVIOUS" not in env

    def test_names_the_place_never_the_value(self, tmp_path: Path) -> None:
        store = _store(tmp_path / "state.env")
        state = StoreClientState("c1", "env", "RAT", lambda: store)
        value = generate_secret()
        state.save(value)
        assert value.reveal() not in f"{state} {state!r}"
        assert str(state) == "store 'env' at 'RAT'"

    def test_another_clients_value_is_refused(self, tmp_path: Path) -> None:
        store = _store(tmp_path / "state.env")
        store.stage_pending("RAT", Credentials("other", Secret(generate_secret().reveal())),
                            "r-1")
        store.promote("RAT", "r-1")
        with pytest.raises(StoreError, match="not of 'c1'"):
            StoreClientState("c1", "env", "RAT", lambda: store).load()

    def test_unknown_store_is_a_store_error(self) -> None:
        def missing() -> EnvStore:
            raise KeyError("nope")

        with pytest.raises(StoreError, match="no store named 'nope'"):
            StoreClientState("c1", "nope", "RAT", missing).load()


class TestBinding:
    """The engine binds a state to each client the IdP names a location for, and no other."""

    def test_bind(self, tmp_path: Path) -> None:
        store = _store(tmp_path / "state.env")
        bound: dict[str, ClientState] = {}

        class Idp:
            def client_state_location(self, client_id: str) -> tuple[str, str] | None:
                return ("env", f"RAT_{client_id.upper()}") if client_id != "plain" else None

            def bind_client_state(self, client_id: str, state: ClientState) -> None:
                bound[client_id] = state

        bind_client_states(Idp(), ["a", "plain"], lambda name: store)
        assert list(bound) == ["a"]
        bound["a"].save(Secret("x" * 24))
        assert bound["a"].load() == Secret("x" * 24)
        bind_client_states(object(), ["a"], lambda name: store)  # an IdP without state: no-op
