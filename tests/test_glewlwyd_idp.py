"""The Glewlwyd adapter against the real Glewlwyd, beyond the IdP contract: a rotation keeps
every other property of the client, an answer that is not the client changes nothing, and the
configuration refuses what would leak the API key."""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_glewlwyd import GLEWLWYD_SCOPE, Glewlwyd

from providers.idps.glewlwyd import GlewlwydIdp
from rotator.config import load_config
from rotator.errors import ConfigError, IdentityProviderError
from rotator.registry import load_adapter_class
from rotator.secrets import Secret, generate_secret


def _settings(glewlwyd: Glewlwyd) -> dict[str, Any]:
    return {"url": glewlwyd.url, "api_key": Secret(glewlwyd.admin_api_key), "api_prefix": "api",
            "oidc_plugin": "oidc", "tls_verify": True, "ca_file": None, "timeout": 10.0}


class Rewriting(httpx.BaseTransport):
    """Forwards to the real server; GET answers pass through ``rewrite``; counts PUTs."""

    def __init__(self, rewrite: Callable[[dict[str, Any]], Any]) -> None:
        self._rewrite, self.puts = rewrite, 0
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.puts += 1
        response = self._inner.handle_request(request)
        if request.method != "GET" or response.status_code != 200:
            return response
        response.read()
        return httpx.Response(200, json=self._rewrite(response.json()))

    def close(self) -> None:
        self._inner.close()


@pytest.mark.server
class TestRotationKeepsTheClient:
    """Setting a new secret changes client_secret and nothing else Glewlwyd stores."""

    def test_other_properties_survive(self, glewlwyd: Glewlwyd) -> None:
        client_id = glewlwyd.create_client(secrets.token_urlsafe(24))
        with glewlwyd.admin() as admin:
            before = admin.get(f"/client/{client_id}").json()
        idp = GlewlwydIdp("glw", _settings(glewlwyd))
        idp.start()
        try:
            new = generate_secret()
            assert idp.create_secret(client_id, "r-test", new).value == new
            assert idp.current_secret(client_id) == new
        finally:
            idp.close()
        with glewlwyd.admin() as admin:
            after = admin.get(f"/client/{client_id}").json()
        assert {k: v for k, v in after.items() if k != "client_secret"} == {
            k: v for k, v in before.items() if k != "client_secret"}
        assert glewlwyd.token_status(client_id, new.reveal()) == 200

    def test_default_token_endpoint_is_the_oidc_plugin(self, glewlwyd: Glewlwyd) -> None:
        assert GlewlwydIdp("glw", _settings(glewlwyd)).default_token_endpoint() == (
            glewlwyd.token_endpoint)


@pytest.mark.server
class TestAnswerThatIsNotTheClient:
    """A read that does not describe the asked-for confidential client is refused before any
    write, so the client keeps its secret and its properties."""

    @pytest.mark.parametrize("rewrite", [
        lambda body: {},
        lambda body: {**body, "client_id": "someone-else"},
        lambda body: {"client_id": body["client_id"], "confidential": True},
        lambda body: {**body, "confidential": False},
        lambda body: [body],
    ], ids=["empty", "other-client", "stripped", "public", "list"])
    def test_nothing_is_written(self, glewlwyd: Glewlwyd,
                                rewrite: Callable[[dict[str, Any]], Any]) -> None:
        old = secrets.token_urlsafe(24)
        client_id = glewlwyd.create_client(old)
        transport = Rewriting(rewrite)
        idp = GlewlwydIdp("glw", _settings(glewlwyd), transport=transport)
        idp.start()
        try:
            with pytest.raises(IdentityProviderError):
                idp.create_secret(client_id, "r-test", generate_secret())
        finally:
            idp.close()
        assert transport.puts == 0
        assert glewlwyd.token_status(client_id, old) == 200

    def test_public_client_has_no_capabilities(self, glewlwyd: Glewlwyd) -> None:
        client_id = f"public-{secrets.token_hex(4)}"
        with glewlwyd.admin() as admin:
            admin.post("/client/", json={"client_id": client_id, "enabled": True,
                                         "confidential": False, "scope": [GLEWLWYD_SCOPE]}
                       ).raise_for_status()
        idp = GlewlwydIdp("glw", _settings(glewlwyd))
        idp.start()
        try:
            with pytest.raises(IdentityProviderError, match="not confidential"):
                idp.capabilities(client_id)
        finally:
            idp.close()


def _config(tmp_path: Path, idp_table: str) -> Path:
    (tmp_path / "audit.key").write_text(secrets.token_urlsafe(32))
    (tmp_path / "glw.key").write_text(secrets.token_urlsafe(24))
    for name in ("audit.key", "glw.key"):
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "rotator.toml"
    path.write_text(textwrap.dedent("""
        [rotator]
        state_dir = "state"

        [audit]
        file = "audit.jsonl"
        key_file = "audit.key"

        [stores.envfile]
        type = "env"
        file = "creds.env"
        read_environ = false

        [idps.glw]
        type = "glewlwyd"
        api_key_file = "glw.key"
        """) + textwrap.dedent(idp_table) + textwrap.dedent("""
        [clients.svc]
        idp = "glw"
        client_id = "svc"
        stores = [{store = "envfile", prefix = "SVC"}]
        """))
    return path


class TestConfiguration:
    """A Glewlwyd table is checked like every other: cleartext to a remote host and odd
    paths are refused, naming the key."""

    def test_registered_as_a_builtin(self) -> None:
        assert load_adapter_class("idp", "glewlwyd") is GlewlwydIdp

    def test_http_to_a_remote_host_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_config(_config(tmp_path, 'url = "http://sso.example.com"\n'), environ={})
        assert any(p.key == "idps.glw.url" and "cleartext" in p.reason
                   for p in info.value.problems)

    def test_http_allowed_by_name(self, tmp_path: Path) -> None:
        config = load_config(_config(tmp_path, 'url = "http://sso.example.com"\n'
                                               "allow_insecure_http = true\n"), environ={})
        assert "glw" in config.idps

    def test_https_loads_with_defaults(self, tmp_path: Path) -> None:
        config = load_config(_config(tmp_path, 'url = "https://sso.example.com"\n'), environ={})
        assert "glw" in config.idps

    def test_api_prefix_must_be_a_path(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_config(_config(tmp_path, 'url = "https://sso.example.com"\n'
                                          'api_prefix = "../admin?x"\n'), environ={})
        assert any(p.key == "idps.glw.api_prefix" for p in info.value.problems)
