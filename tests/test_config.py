"""Tests for rotator.config and rotator.settings: loading, every problem reported, the CLI."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from rotator.cli import run
from rotator.config import Config, StoreTarget, load_config
from rotator.errors import ConfigError, ConfigProblem
from rotator.secrets import Secret
from rotator.settings import parse_duration

AUDIT_VAR = "ROTATOR_TEST_AUDIT_KEY"
KC_VAR = "ROTATOR_TEST_KC_SECRET"


# -- writing TOML from a dict (enough for rotator's configuration shape) ----------------------


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _toml(data: dict[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    lines = [f"[{'.'.join(_key(p) for p in path)}]"] if path else []
    lines += [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += _toml(v, (*path, k))
    return lines


def _valid() -> dict[str, Any]:
    return {
        "audit": {"file": "audit.jsonl", "key_env": AUDIT_VAR},
        "stores": {"local": {"type": "env", "file": "creds.env", "read_environ": False}},
        "idps": {"kc": {"type": "keycloak", "url": "https://sso.test", "realm": "r",
                        "admin_client_id": "rotator", "admin_client_secret_env": KC_VAR}},
        "clients": {"app": {"idp": "kc", "client_id": "app-client",
                            "stores": [{"store": "local", "prefix": "APP"}],
                            "scopes": ["read"]}},
    }


@dataclass
class Draft:
    """A configuration about to be written: its data, the environment, its directory."""

    dir: Path
    data: dict[str, Any] = field(default_factory=_valid)
    env: dict[str, str] = field(default_factory=lambda: {
        AUDIT_VAR: secrets.token_urlsafe(32), KC_VAR: secrets.token_urlsafe(32)})
    text: str | None = None  # overrides the serialised data
    write: bool = True

    @property
    def path(self) -> Path:
        return self.dir / "rotator.toml"

    def save(self) -> Path:
        if self.write:
            self.path.write_text(self.text if self.text is not None
                                 else "\n".join(_toml(self.data)) + "\n", encoding="utf-8")
        return self.path

    def load(self) -> Config:
        return load_config(self.save(), environ=self.env)


Edit = Callable[[Draft], None]


def _walk(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    return data, last


def set_(dotted: str, value: Any) -> Edit:
    def edit(d: Draft) -> None:
        table, key = _walk(d.data, dotted)
        table[key] = value
    return edit


def del_(dotted: str) -> Edit:
    def edit(d: Draft) -> None:
        table, key = _walk(d.data, dotted)
        del table[key]
    return edit


def unset_env(var: str) -> Edit:
    def edit(d: Draft) -> None:
        del d.env[var]
    return edit


def key_file(name: str, mode: int) -> Edit:
    def edit(d: Draft) -> None:
        f = d.dir / name
        f.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        f.chmod(mode)
    return edit


def raw_text(text: str) -> Edit:
    def edit(d: Draft) -> None:
        d.text = text
    return edit


def no_file(d: Draft) -> None:
    d.write = False


def copy_client(src: str, dst: str) -> Edit:
    def edit(d: Draft) -> None:
        d.data["clients"][dst] = copy.deepcopy(d.data["clients"][src])
    return edit


def _case(case_id: str, edits: list[Edit], key: str, *reasons: str) -> Any:
    return pytest.param(edits, key, reasons, id=case_id)


BROKEN = [
    _case("unknown-section", [set_("bogus", {"x": 1})], "bogus", "unknown section"),
    _case("missing-audit", [del_("audit")], "audit", "required section", "key_env"),
    _case("audit-key-env-not-set", [unset_env(AUDIT_VAR)], "audit.key_env",
          f"environment variable {AUDIT_VAR} is not set"),
    _case("audit-key-file-world-readable",
          [del_("audit.key_env"), set_("audit.key_file", "audit.key"),
           key_file("audit.key", 0o644)],
          "audit.key_file", "open to other users", "644", "chmod 600"),
    _case("audit-key-file-world-writable",
          [del_("audit.key_env"), set_("audit.key_file", "audit.key"),
           key_file("audit.key", 0o602)],
          "audit.key_file", "chmod 600"),
    _case("audit-key-file-missing",
          [del_("audit.key_env"), set_("audit.key_file", "missing.key")],
          "audit.key_file", "missing.key", "does not exist"),
    _case("audit-key-file-empty",
          [del_("audit.key_env"), set_("audit.key_file", "audit.key"),
           key_file("audit.key", 0o600), lambda d: (d.dir / "audit.key").write_text("\n")],
          "audit.key_file", "is empty"),
    _case("audit-key-env-and-file",
          [set_("audit.key_file", "audit.key"), key_file("audit.key", 0o600)],
          "audit.key", "key_env", "key_file", "not both"),
    _case("audit-no-destination", [del_("audit.file")], "audit.file", "stdout = true"),
    _case("store-unknown-type", [set_("stores.local.type", "nosuch")], "stores.local.type",
          "unknown store type 'nosuch'", "known: aws_secrets_manager, env, vault"),
    _case("store-missing-type", [del_("stores.local.type")], "stores.local.type", "required"),
    _case("store-unknown-key", [set_("stores.local.colour", "blue")], "stores.local.colour",
          "unknown key", "file", "read_environ"),
    _case("store-bad-bool", [set_("stores.local.read_environ", "no")],
          "stores.local.read_environ", "true or false"),
    _case("idp-unknown-type", [set_("idps.kc.type", "okta-ish")], "idps.kc.type",
          "unknown idp type 'okta-ish'", "known: ", "hydra, keycloak"),
    _case("idp-secret-env-not-set", [unset_env(KC_VAR)], "idps.kc.admin_client_secret_env",
          f"{KC_VAR} is not set"),
    _case("idp-missing-required", [del_("idps.kc.realm")], "idps.kc.realm", "required"),
    _case("client-unknown-idp", [set_("clients.app.idp", "nope")], "clients.app.idp",
          "no identity provider named 'nope'"),
    _case("client-unknown-store",
          [set_("clients.app.stores", [{"store": "nope", "prefix": "APP"}])],
          "clients.app.stores[0].store", "no store named 'nope'"),
    _case("client-stores-missing", [del_("clients.app.stores")], "clients.app.stores",
          "required"),
    _case("client-stores-empty", [set_("clients.app.stores", [])], "clients.app.stores",
          "required"),
    _case("client-store-missing-location", [set_("clients.app.stores", [{"store": "local"}])],
          "clients.app.stores[0].prefix", "required"),
    _case("client-store-wrong-location-key",
          [set_("clients.app.stores", [{"store": "local", "prefix": "APP", "path": "x"}])],
          "clients.app.stores[0].path", "unknown key", "'prefix'"),
    _case("client-store-bad-env-prefix",
          [set_("clients.app.stores", [{"store": "local", "prefix": "APP-1"}])],
          "clients.app.stores[0].prefix", "must be letters, digits"),
    _case("client-store-listed-twice",
          [set_("clients.app.stores", [{"store": "local", "prefix": "APP"}] * 2)],
          "clients.app.stores[1].prefix", "listed twice"),
    _case("client-missing-client-id", [del_("clients.app.client_id")], "clients.app.client_id",
          "required"),
    _case("client-bad-auth-method", [set_("clients.app.auth_method", "private_key_jwt")],
          "clients.app.auth_method", "client_secret_basic, client_secret_post",
          "'private_key_jwt'"),
    _case("client-bad-duration", [set_("clients.app.grace_period", "soon")],
          "clients.app.grace_period", "expected a duration", "'soon'"),
    _case("client-duration-nan", [set_("clients.app.grace_period", math.nan)],
          "clients.app.grace_period", "finite"),
    _case("client-verify-attempts-zero", [set_("clients.app.verify_attempts", 0)],
          "clients.app.verify_attempts", "at least 1"),
    _case("client-verify-attempts-not-int", [set_("clients.app.verify_attempts", "3")],
          "clients.app.verify_attempts", "whole number"),
    _case("client-scopes-not-a-list", [set_("clients.app.scopes", "read write")],
          "clients.app.scopes", "must be a list"),
    _case("client-unknown-key", [set_("clients.app.scope", ["read"])], "clients.app.scope",
          "unknown key", "scopes"),
    _case("client-bad-name", [copy_client("app", "bad name!"), del_("clients.app")],
          "clients.bad name!", "letters, digits"),
    _case("duplicate-client-id", [copy_client("app", "app2")], "clients.app2.client_id",
          "'app-client'", "'kc'", "already configured as 'app'"),
    _case("no-clients", [del_("clients")], "clients", "no clients configured"),
    _case("section-not-a-table", [set_("stores", "local")], "stores", "must be a table"),
    _case("invalid-toml", [raw_text("[audit\nkey_env = 'X'\n")], "-", "not valid TOML"),
    _case("file-does-not-exist", [no_file], "-", "file does not exist"),
]


def _find(problems: list[ConfigProblem], key: str, reasons: tuple[str, ...]) -> ConfigProblem:
    for p in problems:
        if p.key == key and all(r in p.reason for r in reasons):
            return p
    raise AssertionError(f"no problem at {key!r} saying {reasons}; got:\n"
                         + "\n".join(map(str, problems)))


class TestValidConfig:
    """A complete configuration loads into typed settings with defaults filled in."""

    def test_loads(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        cfg = d.load()
        assert cfg.path == d.path
        assert cfg.state_dir == tmp_path.resolve() / "state"
        assert cfg.audit.key == Secret(d.env[AUDIT_VAR])
        assert cfg.audit.file == tmp_path.resolve() / "audit.jsonl"
        assert cfg.stores["local"].type == "env"
        assert cfg.stores["local"].settings["file"] == str(tmp_path.resolve() / "creds.env")
        assert cfg.idps["kc"].type == "keycloak"
        assert cfg.idps["kc"].settings["admin_client_secret"] == Secret(d.env[KC_VAR])
        app = cfg.clients["app"]
        assert app.client_id == "app-client"
        assert app.targets == (StoreTarget("local", "APP"),)
        assert app.primary == StoreTarget("local", "APP")
        assert app.scopes == ("read",)
        assert app.auth_method == "client_secret_basic"
        assert app.grace_period == 86400.0
        assert app.verify_attempts == 5
        assert app.rotate_every is None
        assert app.tls_verify is True

    def test_loading_does_no_io_beyond_reading(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.load()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rotator.toml"]

    def test_audit_key_from_a_private_file(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        for edit in (del_("audit.key_env"), set_("audit.key_file", "audit.key"),
                     key_file("audit.key", 0o600)):
            edit(d)
        cfg = d.load()
        assert cfg.audit.key.reveal() == (tmp_path / "audit.key").read_text().strip()

    def test_durations_and_state_dir(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["rotator"] = {"state_dir": "var/state"}
        d.data["clients"]["app"].update(grace_period="2h", rotate_every="30d",
                                        verify_timeout=5, auth_method="client_secret_post")
        cfg = d.load()
        assert cfg.state_dir == tmp_path.resolve() / "var" / "state"
        app = cfg.clients["app"]
        assert (app.grace_period, app.rotate_every, app.verify_timeout) == (7200, 2592000, 5)
        assert app.auth_method == "client_secret_post"

    def test_the_same_client_id_at_two_idps_is_fine(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["idps"]["kc2"] = dict(d.data["idps"]["kc"], realm="other")
        d.data["clients"]["app2"] = dict(d.data["clients"]["app"], idp="kc2")
        assert set(d.load().clients) == {"app", "app2"}

    def test_secrets_never_appear_in_the_config_repr(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        text = repr(d.load())
        assert d.env[AUDIT_VAR] not in text
        assert d.env[KC_VAR] not in text


class TestBrokenConfigs:
    """Each broken configuration raises ConfigError naming the file, the key path and why."""

    @pytest.mark.parametrize(("edits", "key", "reasons"), BROKEN)
    def test_reports_the_problem(self, tmp_path: Path, edits: list[Edit], key: str,
                                 reasons: tuple[str, ...]) -> None:
        d = Draft(tmp_path)
        for edit in edits:
            edit(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        problem = _find(info.value.problems, key, reasons)
        assert all(p.file == str(d.path) for p in info.value.problems)
        assert str(problem) in str(info.value)

    def test_three_independent_problems_are_reported_at_once(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        for edit in (set_("bogus", {"x": 1}), unset_env(AUDIT_VAR),
                     set_("clients.app.auth_method", "magic")):
            edit(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        problems = info.value.problems
        assert sorted(p.key for p in problems) == [
            "audit.key_env", "bogus", "clients.app.auth_method"]
        assert all(p.file == str(d.path) for p in problems)
        message = str(info.value)
        assert message.startswith("3 configuration problem(s):")
        for p in problems:
            assert f"{d.path}: {p.key}: {p.reason}" in message

    def test_secret_values_are_never_in_problems(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        set_("clients.app.auth_method", "magic")(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        assert d.env[AUDIT_VAR] not in str(info.value)
        assert d.env[KC_VAR] not in str(info.value)


class TestParseDuration:
    """parse_duration turns numbers and unit strings into seconds and rejects anything else."""

    @pytest.mark.parametrize(("value", "seconds"), [
        pytest.param(0, 0.0, id="zero"),
        pytest.param(90, 90.0, id="int"),
        pytest.param(1.5, 1.5, id="float"),
        pytest.param("90", 90.0, id="bare-string"),
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("1.5h", 5400.0, id="fractional-hours"),
        pytest.param("24h", 86400.0, id="hours"),
        pytest.param("30d", 2592000.0, id="days"),
        pytest.param("2w", 1209600.0, id="weeks"),
        pytest.param(" 5 m ", 300.0, id="whitespace"),
    ])
    def test_accepts(self, value: object, seconds: float) -> None:
        assert parse_duration(value) == seconds

    @pytest.mark.parametrize("value", [
        pytest.param("soon", id="word"),
        pytest.param("", id="empty"),
        pytest.param("-5s", id="negative-string"),
        pytest.param(-1, id="negative-number"),
        pytest.param("5 minutes", id="long-unit"),
        pytest.param("5M", id="upper-case-unit"),
        pytest.param("1h30m", id="compound"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
        pytest.param([5], id="list"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
    ])
    def test_rejects(self, value: object) -> None:
        with pytest.raises(ValueError, match="duration"):
            parse_duration(value)


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment the CLI reads (it has no environ parameter); structlog reset after."""
    env = {AUDIT_VAR: secrets.token_urlsafe(32), KC_VAR: secrets.token_urlsafe(32)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env
    structlog.reset_defaults()


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def _broken(tmp_path: Path) -> Draft:
    d = Draft(tmp_path)
    for edit in (set_("bogus", {"x": 1}), set_("clients.app.auth_method", "magic"),
                 set_("stores.local.type", "nosuch")):
        edit(d)
    d.save()
    return d


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None,
                                         st.st_mtime_ns, st.st_mode)
    return out


@pytest.mark.usefixtures("cli_env")
class TestCliConfigCheck:
    """`rotator config check` prints every problem (file, key, reason) and exits 2, no traceback."""

    def test_broken_config_lists_every_problem(self, tmp_path: Path) -> None:
        d = _broken(tmp_path)
        code, out, err = _cli("config", "check", "-c", str(d.path))
        assert code == 2
        assert out == ""
        assert "Traceback" not in err
        assert "3 configuration problem(s)" in err
        for key, reason in [("bogus", "unknown section"),
                            ("clients.app.auth_method", "must be one of"),
                            ("stores.local.type", "unknown store type 'nosuch'")]:
            assert re.search(rf"{re.escape(str(d.path))}: {re.escape(key)}: .*"
                             rf"{re.escape(reason)}", err), err

    def test_json_lists_every_problem(self, tmp_path: Path) -> None:
        d = _broken(tmp_path)
        code, out, err = _cli("config", "check", "--json", "-c", str(d.path))
        assert code == 2
        assert "Traceback" not in err
        doc = json.loads(out)
        assert doc["ok"] is False
        problems = doc["problems"]
        assert isinstance(problems, list)
        assert sorted(p["key"] for p in problems) == [
            "bogus", "clients.app.auth_method", "stores.local.type"]
        assert all(p["file"] == str(d.path) and p["reason"] for p in problems)

    def test_missing_file_exits_2(self, tmp_path: Path) -> None:
        code, _, err = _cli("config", "check", "-c", str(tmp_path / "nope.toml"))
        assert code == 2
        assert "file does not exist" in err
        assert "Traceback" not in err

    def test_valid_config_exits_0(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.save()
        code, out, err = _cli("config", "check", "-c", str(d.path))
        assert (code, err) == (0, "")
        assert "ok (1 client(s), 1 store(s), 1 IdP(s))" in out


@pytest.mark.usefixtures("cli_env")
class TestCliUsage:
    """Usage mistakes exit 2 with a clear message, before anything is touched."""

    def test_rotate_without_a_client(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.save()
        code, out, err = _cli("rotate", "-c", str(d.path))
        assert code == 2
        assert out == ""
        assert "name at least one client or pass --all" in err
        assert "configured: app" in err
        assert not (tmp_path / "state").exists()

    def test_unknown_client(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.save()
        code, _, err = _cli("rotate", "ghost", "-c", str(d.path))
        assert code == 2
        assert "unknown client(s) ghost" in err
        assert not (tmp_path / "state").exists()

    def test_names_and_all_together(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.save()
        code, _, err = _cli("rotate", "app", "--all", "-c", str(d.path))
        assert code == 2
        assert "not both" in err

    def test_no_command(self) -> None:
        code, _, err = _cli()
        assert code == 2
        assert "rotator --help" in err

    def test_unknown_option(self) -> None:
        code, _, err = _cli("rotate", "--frobnicate")
        assert code == 2
        assert "--frobnicate" in err

    @pytest.mark.parametrize("argv", [["--help"], ["rotate", "--help"],
                                      ["config", "check", "--help"]])
    def test_help_exits_0(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = _cli(*argv)
        assert code == 0
        assert "usage: rotator" in out
        assert capsys.readouterr().out == ""  # the given stream, not the process's stdout


@pytest.mark.usefixtures("cli_env")
class TestCliBrokenConfigTouchesNothing:
    """A command run against a broken configuration changes nothing on disk."""

    @pytest.mark.parametrize("argv", [["rotate", "app"], ["rotate", "--all"],
                                      ["retire", "--all", "--now"], ["status", "--all"]])
    def test_nothing_changes(self, tmp_path: Path, argv: list[str]) -> None:
        d = _broken(tmp_path)
        env_file = tmp_path / "creds.env"
        env_file.write_text(f"APP_CLIENT_ID=app-client\n"
                            f"APP_CLIENT_SECRET={secrets.token_urlsafe(32)}\n")
        os.chmod(env_file, 0o600)
        before = _snapshot(tmp_path)
        code, _, err = _cli(*argv, "-c", str(d.path))
        assert code == 2
        assert "Traceback" not in err
        assert _snapshot(tmp_path) == before
        assert not (tmp_path / "state").exists()


class TestExampleConfig:
    """The documented example config uses only keys rotator knows; only its files are absent."""

    def test_example_has_no_problem_but_missing_files(self) -> None:
        example = Path(__file__).parent.parent / "config" / "rotator.toml"
        with pytest.raises(ConfigError) as info:
            load_config(example, environ={"ROTATOR_KEYCLOAK_SECRET": secrets.token_hex(8)})
        reasons = {(p.key, p.reason) for p in info.value.problems}
        assert reasons, "the example should name files that do not exist here"
        for key, reason in reasons:
            assert key.endswith("_file") and "does not exist" in reason, (key, reason)


class TestConsumerLoad:
    """A load for one consuming client resolves only that client's store secrets."""

    def test_other_secrets_are_not_read(self, tmp_path: Path) -> None:
        (tmp_path / "rotator.toml").write_text("""
[audit]
file = "audit.jsonl"
key_env = "NOT_SET_AUDIT_KEY"
[stores.bao]
type = "vault"
url = "https://bao.test"
token_env = "APP_VAULT_TOKEN"
[stores.admin-bao]
type = "vault"
url = "https://bao.test"
token_env = "NOT_SET_OTHER_TOKEN"
[idps.kc]
type = "keycloak"
url = "https://kc.test"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "NOT_SET_ADMIN_SECRET"
[clients.app]
idp = "kc"
client_id = "app"
stores = [{store = "bao", path = "apps/app"}]
""")
        env = {"APP_VAULT_TOKEN": secrets.token_hex(8)}
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "rotator.toml", environ=env)
        assert {p.key for p in info.value.problems} == {
            "audit.key_env", "stores.admin-bao.token_env", "idps.kc.admin_client_secret_env"}
        config = load_config(tmp_path / "rotator.toml", environ=env, consumer="app")
        assert config.audit.key is None
        assert config.stores["bao"].settings["token"].reveal() == env["APP_VAULT_TOKEN"]
        assert "token" not in config.stores["admin-bao"].settings
        assert "admin_client_secret" not in config.idps["kc"].settings
        with pytest.raises(ConfigError, match="no audit key"):
            config.audit.require_key(config.path)

    def test_unknown_consumer(self, tmp_path: Path) -> None:
        (tmp_path / "rotator.toml").write_text('[clients.app]\nidp = "x"\n')
        with pytest.raises(ConfigError, match=r"clients\.nope: no such client"):
            load_config(tmp_path / "rotator.toml", consumer="nope")


def _insecure_draft(tmp_path: Path) -> Draft:
    d = Draft(tmp_path)
    d.data["stores"]["bao"] = {"type": "vault", "url": "https://bao.test", "token_env": "BT"}
    d.data["stores"]["aws"] = {"type": "aws_secrets_manager", "region": "eu-west-1"}
    d.env["BT"] = secrets.token_hex(8)
    return d


class TestInsecureHttp:
    """http:// to a host other than this machine is refused unless allow_insecure_http says so."""

    @pytest.mark.parametrize("key", ["idps.kc.url", "stores.bao.url", "stores.aws.endpoint_url",
                                     "clients.app.token_endpoint"])
    def test_cleartext_to_a_remote_host_is_refused(self, tmp_path: Path, key: str) -> None:
        d = _insecure_draft(tmp_path)
        set_(key, "http://remote.example:8080/x")(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        problem = _find(info.value.problems, key, ("cleartext", "allow_insecure_http"))
        assert "remote.example" in problem.reason and len(info.value.problems) == 1

    @pytest.mark.parametrize("key", ["idps.kc.url", "stores.bao.url", "stores.aws.endpoint_url",
                                     "clients.app.token_endpoint"])
    def test_allowed_by_name(self, tmp_path: Path, key: str) -> None:
        d = _insecure_draft(tmp_path)
        set_(key, "http://remote.example:8080/x")(d)
        set_(key.rsplit(".", 1)[0] + ".allow_insecure_http", True)(d)
        d.load()

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "[::1]", "localhost",
                                      "LOCALHOST"])
    def test_loopback_is_fine(self, tmp_path: Path, host: str) -> None:
        d = _insecure_draft(tmp_path)
        for key in ("idps.kc.url", "stores.bao.url", "stores.aws.endpoint_url",
                    "clients.app.token_endpoint"):
            set_(key, f"http://{host}:8080")(d)
        d.load()

    @pytest.mark.parametrize("url", ["sso.example.com", "ftp://sso.example.com", "https://",
                                     "https://sso.example.com:port"])
    def test_not_a_url(self, tmp_path: Path, url: str) -> None:
        d = _insecure_draft(tmp_path)
        set_("idps.kc.url", url)(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        assert [p.key for p in info.value.problems] == ["idps.kc.url"]

    def test_every_insecure_url_reported_at_once(self, tmp_path: Path) -> None:
        d = _insecure_draft(tmp_path)
        for key in ("idps.kc.url", "stores.bao.url", "stores.aws.endpoint_url",
                    "clients.app.token_endpoint"):
            set_(key, "http://10.0.0.8")(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        assert {p.key for p in info.value.problems} == {
            "idps.kc.url", "stores.bao.url", "stores.aws.endpoint_url",
            "clients.app.token_endpoint"}

    def test_only_tables_with_a_url_take_the_setting(self, tmp_path: Path) -> None:
        d = _insecure_draft(tmp_path)
        set_("stores.local.allow_insecure_http", True)(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        _find(info.value.problems, "stores.local.allow_insecure_http", ("unknown key",))

    def test_consumer_load_refuses_too(self, tmp_path: Path) -> None:
        d = _insecure_draft(tmp_path)
        set_("clients.app.token_endpoint", "http://idp.example/token")(d)
        with pytest.raises(ConfigError, match="cleartext"):
            load_config(d.save(), environ=d.env, consumer="app")


# -- security review: secret files, the audit key, state and audit directories ----------------


NOBODY = 65534


def _with_key_file(d: Draft, mode: int = 0o600, text: str | None = None) -> Path:
    del d.data["audit"]["key_env"]
    d.data["audit"]["key_file"] = "audit.key"
    path = d.dir / "audit.key"
    path.write_text(text if text is not None else secrets.token_urlsafe(32) + "\n")
    path.chmod(mode)
    return path


def _problems(d: Draft) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        d.load()
    return info.value.problems


class TestSecretFilePermissions:
    """A secret file is refused unless it is this user's own regular file that neither the
    group nor others may open, checked on the opened file."""

    @pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o644, 0o660, 0o400 | 0o040],
                             ids=oct)
    def test_group_or_other_access_refused(self, tmp_path: Path, mode: int) -> None:
        d = Draft(tmp_path)
        _with_key_file(d, mode)
        _find(_problems(d), "audit.key_file", ("open to other users", f"{mode:o}", "chmod 600"))

    @pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
    def test_private_file_accepted(self, tmp_path: Path, mode: int) -> None:
        d = Draft(tmp_path)
        path = _with_key_file(d, mode)
        assert d.load().audit.key.reveal() == path.read_text().strip()

    def test_file_of_another_user_refused(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        os.chown(_with_key_file(d), NOBODY, NOBODY)
        _find(_problems(d), "audit.key_file", ("belongs to another user",))

    def test_symlink_to_a_private_file_in_a_private_directory_is_read(
            self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        real = _with_key_file(d)
        real.rename(tmp_path / "real.key")
        real.symlink_to(tmp_path / "real.key")
        assert d.load().audit.key.reveal() == (tmp_path / "real.key").read_text().strip()

    def test_symlink_to_a_group_readable_file_refused(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        real = _with_key_file(d, 0o640)
        real.rename(tmp_path / "real.key")
        real.symlink_to(tmp_path / "real.key")
        _find(_problems(d), "audit.key_file", ("symbolic link", "open to other users", "640"))

    def test_idp_secret_file_too(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        del d.data["idps"]["kc"]["admin_client_secret_env"]
        d.data["idps"]["kc"]["admin_client_secret_file"] = "kc.secret"
        (tmp_path / "kc.secret").write_text(secrets.token_urlsafe(32))
        (tmp_path / "kc.secret").chmod(0o640)
        _find(_problems(d), "idps.kc.admin_client_secret_file", ("open to other users", "640"))


class TestAuditKeyLength:
    """An audit key shorter than 32 bytes is a configuration problem, whichever way it is given."""

    @pytest.mark.parametrize("length", [1, 16, 31])
    def test_short_key_from_env(self, tmp_path: Path, length: int) -> None:
        d = Draft(tmp_path)
        d.env[AUDIT_VAR] = "Q" * length  # a letter the reason never holds
        problem = _find(_problems(d), "audit.key_env", ("at least 32 bytes",))
        assert d.env[AUDIT_VAR] not in problem.reason

    def test_short_key_from_file(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        _with_key_file(d, text="k\n")
        _find(_problems(d), "audit.key_file", ("at least 32 bytes",))

    def test_32_bytes_accepted(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.env[AUDIT_VAR] = secrets.token_hex(16)
        assert d.load().audit.key == Secret(d.env[AUDIT_VAR])


class TestPrivateDirectories:
    """An existing state or audit directory that another user owns or others may write, and
    an existing audit log open to others, are configuration problems; a consumer load, which
    keeps no state, checks neither."""

    def _state(self, d: Draft) -> Path:
        d.data["rotator"] = {"state_dir": "state"}
        path = d.dir / "state"
        path.mkdir(mode=0o700)
        return path

    @pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o720], ids=oct)
    def test_state_dir_writable_by_others(self, tmp_path: Path, mode: int) -> None:
        d = Draft(tmp_path)
        self._state(d).chmod(mode)
        _find(_problems(d), "rotator.state_dir", ("writable by other users", "chmod 700"))

    def test_default_state_dir_checked_too(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        (tmp_path / "state").mkdir()
        (tmp_path / "state").chmod(0o777)
        _find(_problems(d), "rotator.state_dir", ("writable by other users",))

    def test_state_dir_of_another_user(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        os.chown(self._state(d), NOBODY, NOBODY)
        _find(_problems(d), "rotator.state_dir", ("belongs to another user",))

    def test_state_dir_symlink(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        (tmp_path / "real").mkdir(mode=0o700)
        d.data["rotator"] = {"state_dir": "state"}
        (tmp_path / "state").symlink_to(tmp_path / "real")
        _find(_problems(d), "rotator.state_dir", ("symbolic link",))

    def test_missing_dirs_are_fine(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["rotator"] = {"state_dir": "not/yet"}
        d.data["audit"]["file"] = "logs/audit.jsonl"
        d.load()

    def test_audit_dir_writable_by_others(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        d.data["audit"]["file"] = "logs/audit.jsonl"
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs").chmod(0o777)
        _find(_problems(d), "audit.file", ("writable by other users",))

    @pytest.mark.parametrize("mode", [0o640, 0o644, 0o606], ids=oct)
    def test_audit_log_open_to_others(self, tmp_path: Path, mode: int) -> None:
        d = Draft(tmp_path)
        (tmp_path / "audit.jsonl").touch()
        (tmp_path / "audit.jsonl").chmod(mode)
        _find(_problems(d), "audit.file", ("open to other users", f"{mode:o}"))

    def test_audit_log_symlink_or_foreign(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        (tmp_path / "audit.jsonl").symlink_to(tmp_path / "elsewhere")
        _find(_problems(d), "audit.file", ("symbolic link",))
        (tmp_path / "audit.jsonl").unlink()
        (tmp_path / "audit.jsonl").touch(mode=0o600)
        os.chown(tmp_path / "audit.jsonl", NOBODY, NOBODY)
        _find(_problems(d), "audit.file", ("belongs to another user",))

    def test_every_problem_at_once(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        self._state(d).chmod(0o777)
        d.env[AUDIT_VAR] = "short"
        (tmp_path / "audit.jsonl").touch(mode=0o644)
        (tmp_path / "audit.jsonl").chmod(0o644)
        keys = {p.key for p in _problems(d)}
        assert {"rotator.state_dir", "audit.key_env", "audit.file"} <= keys

    def test_consumer_load_checks_neither(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        os.chown(self._state(d), NOBODY, NOBODY)
        (tmp_path / "audit.jsonl").touch(mode=0o644)
        (tmp_path / "audit.jsonl").chmod(0o644)
        config = load_config(d.save(), environ=d.env, consumer="app")
        assert config.state_dir == tmp_path.resolve() / "state"
