"""Adapters found by entry point, and the per-client settings an IdP declares."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_config import KC_VAR, Draft

from rotator.config import AdapterConfig
from rotator.errors import ConfigError
from rotator.registry import BUILTIN, adapter_entry_points, load_adapter_class
from rotator.secrets import Secret

PLUGIN = '''
from rotator.settings import Setting

class AppIdp:
    """A third party's IdP that needs an application id and a token per client."""

    SETTINGS = (Setting("url", required=True),)
    CLIENT_SETTINGS = (
        Setting("application_id", required=True),
        Setting("registration_token", secret=True, required=True),
        Setting("weight", "int", default=3),
    )

    @staticmethod
    def validate_client_settings(settings):
        app = settings.get("application_id")
        return [("application_id", "must not contain '/'")] if app and "/" in app else []

    def __init__(self, name, settings):
        self.name = name
        self.clients = {}

    def configure_client(self, client_id, settings):
        self.clients[client_id] = dict(settings)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install a distribution 'acme-idp' registering IdP type 'acme' by entry point."""
    site = tmp_path / "site"
    (site / "acme_idp_mod").mkdir(parents=True)
    (site / "acme_idp_mod" / "__init__.py").write_text(PLUGIN)
    info = site / "acme_idp-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-idp\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [rotator.idps]
        acme = acme_idp_mod:AppIdp
        """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_idp_mod", raising=False)
    return "acme"


def _acme_draft(tmp_path: Path, **client: Any) -> Draft:
    d = Draft(tmp_path)
    d.data["idps"]["acme"] = {"type": "acme", "url": "https://acme.test"}
    d.data["clients"]["app"].update({"idp": "acme", **client})
    d.env["ACME_RAT"] = "registration-token-value"
    return d


class TestEntryPoints:
    """Adapter types come from entry points; the built-ins are registered the same way."""

    def test_builtins_are_registered_in_pyproject(self) -> None:
        text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
        for group, table in BUILTIN.items():
            assert f'[project.entry-points."{group}"]' in text
            for name, value in table.items():
                assert f'{name} = "{value}"' in text

    def test_builtins_resolve(self) -> None:
        assert load_adapter_class("idp", "hydra").__name__ == "HydraIdp"
        assert set(adapter_entry_points("store")) >= {"vault", "env", "aws_secrets_manager"}

    def test_third_party_type_is_found(self, plugin: str) -> None:
        assert load_adapter_class("idp", plugin).__name__ == "AppIdp"

    def test_unknown_type_lists_the_known(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["idps"]["kc"]["type"] = "nonesuch"
        with pytest.raises(ConfigError) as info:
            d.load()
        assert any(p.key == "idps.kc.type" and "hydra" in p.reason and "keycloak" in p.reason
                   for p in info.value.problems)

    def test_entry_point_to_a_missing_attribute_is_a_config_problem(
            self, plugin: str, tmp_path: Path) -> None:
        info = next((tmp_path / "site").glob("*.dist-info"))
        (info / "entry_points.txt").write_text("[rotator.idps]\nacme = acme_idp_mod:Nope\n")
        d = _acme_draft(tmp_path)
        with pytest.raises(ConfigError) as raised:
            d.load()
        assert any(p.key == "idps.acme.type" and "Nope" in p.reason
                   for p in raised.value.problems)


class TestClientSettings:
    """An IdP's CLIENT_SETTINGS are accepted in its clients' tables, checked with the rest
    (every problem at once) and handed to the adapter per client."""

    def test_declared_settings_reach_the_adapter(self, plugin: str, tmp_path: Path) -> None:
        d = _acme_draft(tmp_path, application_id="0oa1", registration_token_env="ACME_RAT")
        config = d.load()
        client = config.clients["app"]
        assert client.idp_settings == {"application_id": "0oa1", "weight": 3,
                                       "registration_token": Secret("registration-token-value")}
        adapter: Any = config.idps["acme"].build()
        assert adapter.clients == {"app-client": dict(client.idp_settings)}

    def test_every_problem_is_reported_at_once(self, plugin: str, tmp_path: Path) -> None:
        d = _acme_draft(tmp_path, weight="heavy", registration_token_env="UNSET_VAR",
                        typo_key=1)
        d.data["clients"]["app"]["auth_method"] = "magic"
        with pytest.raises(ConfigError) as info:
            d.load()
        keys = {p.key for p in info.value.problems}
        assert keys >= {"clients.app.application_id", "clients.app.weight",
                        "clients.app.registration_token_env", "clients.app.typo_key",
                        "clients.app.auth_method"}
        assert all(p.file == str(d.path) for p in info.value.problems)

    def test_adapter_validation_is_reported(self, plugin: str, tmp_path: Path) -> None:
        d = _acme_draft(tmp_path, application_id="a/b", registration_token_env="ACME_RAT")
        with pytest.raises(ConfigError) as info:
            d.load()
        assert [p.key for p in info.value.problems] == ["clients.app.application_id"]

    def test_keys_of_another_idp_are_refused(self, plugin: str, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["clients"]["app"]["application_id"] = "0oa1"  # a keycloak client
        with pytest.raises(ConfigError) as info:
            d.load()
        assert [p.key for p in info.value.problems] == ["clients.app.application_id"]

    def test_secret_is_not_read_for_a_consumer(self, plugin: str, tmp_path: Path) -> None:
        from rotator.config import load_config

        d = _acme_draft(tmp_path, application_id="0oa1", registration_token_env="ACME_RAT")
        d.save()
        env = {k: v for k, v in d.env.items() if k not in ("ACME_RAT", KC_VAR)}
        config = load_config(d.path, environ=env, consumer="app")
        assert "registration_token" not in config.clients["app"].idp_settings

    def test_build_returns_the_protocol_type(self) -> None:
        # mypy checks the annotation; at run time the built adapter satisfies the protocol.
        from rotator.interfaces import IdentityProvider

        cfg: AdapterConfig[IdentityProvider] = AdapterConfig(
            "h", "hydra", load_adapter_class("idp", "hydra"),
            {"admin_url": "http://127.0.0.1:1", "public_url": None, "admin_token": None,
             "admin_token_header": "Authorization", "rotate_endpoint": "auto",
             "tls_verify": True, "ca_file": None, "timeout": 1.0})
        assert isinstance(cfg.build(), IdentityProvider)
