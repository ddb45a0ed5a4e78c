"""The RFC 7592 adapter raises only IdentityProviderError, whatever its state store or the
server's answer does (a fake server through httpx.MockTransport; the real ones are in
test_rotation_rfc7592.py and test_idp_contract.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from providers.idps.rfc7592 import Rfc7592Idp
from rotator.errors import IdentityProviderError, IdpUnavailable, StoreError, StoreUnavailable
from rotator.secrets import Secret

URI = "https://idp.example/register/c1"


class State:
    def __init__(self, *, load_fails: bool = False, save_fails: bool = False) -> None:
        self.value: Secret | None = Secret("rat-" + "a" * 20)
        self.load_fails, self.save_fails, self.saved = load_fails, save_fails, []

    def load(self) -> Secret | None:
        if self.load_fails:
            raise StoreUnavailable("sealed")
        return self.value

    def save(self, value: Secret) -> None:
        if self.save_fails:
            raise StoreUnavailable("sealed")
        self.saved.append(value)
        self.value = value


def _server(new_rat: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {"client_id": "c1", "client_secret": "s" * 24}
        if request.method == "PUT":
            assert "client_secret" not in json.loads(request.content)
            body = {"client_id": "c1", "client_secret": "n" * 24,
                    "registration_access_token": new_rat}
        return httpx.Response(200, json=body)
    return httpx.MockTransport(handle)


def _idp(state: State, new_rat: str = "rat-" + "b" * 20) -> Rfc7592Idp:
    idp = Rfc7592Idp("dcr", {"token_endpoint": None, "tls_verify": True, "ca_file": None,
                             "timeout": 5.0}, transport=_server(new_rat))
    idp.configure_client("c1", {"registration_client_uri": URI,
                                "registration_token_store": "bao",
                                "registration_token_location": "rat/c1"})
    idp.bind_client_state("c1", state)
    idp.start()
    return idp


class TestStateFailures:
    """A state store that fails becomes an IdP error naming what to do; no StoreError escapes."""

    def test_new_rat_saved_before_the_secret_is_returned(self) -> None:
        state = State()
        issued = _idp(state).create_secret("c1", "r-1", None)
        assert issued.value == Secret("n" * 24)
        assert state.saved == [Secret("rat-" + "b" * 20)]

    def test_save_fails(self) -> None:
        with pytest.raises(IdentityProviderError, match="could not be saved") as info:
            _idp(State(save_fails=True)).create_secret("c1", "r-1", None)
        assert not isinstance(info.value, StoreError)

    def test_load_fails(self) -> None:
        with pytest.raises(IdpUnavailable, match="cannot read"):
            _idp(State(load_fails=True)).capabilities("c1")

    def test_hostile_rat_is_not_stored(self) -> None:
        state = State()
        with pytest.raises(IdentityProviderError, match="cannot be stored safely"):
            _idp(state, new_rat="rat\nINJECTED=1").create_secret("c1", "r-1", None)
        assert state.saved == []
