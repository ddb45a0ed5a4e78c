"""config check refuses a Vault mount or AppRole mount that would not stay one mount path."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from test_config import Draft, _cli, set_

from rotator.errors import ConfigError

BAD_MOUNTS = [
    pytest.param("secret/../sys", id="dotdot"),
    pytest.param("..", id="only-dotdot"),
    pytest.param("team/./kv", id="dot"),
    pytest.param("team//kv", id="empty-segment"),
    pytest.param("/secret", id="leading-slash"),
    pytest.param("secret//", id="two-trailing-slashes"),
    pytest.param("/", id="only-slash"),
    pytest.param("secret?list=true", id="question-mark"),
    pytest.param("secret#x", id="hash"),
    pytest.param("secret%2f..", id="percent"),
    pytest.param("my secret", id="space"),
    pytest.param("secret\n", id="newline"),
    pytest.param("sec\x00ret", id="nul"),
    pytest.param("sec\\ret", id="backslash"),
]


def _vault(d: Draft, **extra: str) -> None:
    set_("stores.bao", {"type": "vault", "url": "https://bao.test",
                        "token_env": "BAO_TOKEN", **extra})(d)
    d.env["BAO_TOKEN"] = secrets.token_hex(8)


def _problems(d: Draft) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        d.load()
    assert all(p.file == str(d.path) for p in info.value.problems)
    return [(p.key, p.reason) for p in info.value.problems]


class TestVaultMountValidated:
    """A Vault `mount` or `approle_mount` with '..', empty or '.' segments, a leading '/',
    URL-special characters, spaces or control characters is refused, naming file, key and
    reason; plain and nested mounts (one trailing '/' allowed) pass."""

    @pytest.mark.parametrize("key", ["mount", "approle_mount"])
    @pytest.mark.parametrize("mount", BAD_MOUNTS)
    def test_refused(self, tmp_path: Path, key: str, mount: str) -> None:
        d = Draft(tmp_path)
        _vault(d, **{key: mount})
        [(where, reason)] = _problems(d)
        assert where == f"stores.bao.{key}"
        assert "must" in reason

    @pytest.mark.parametrize("mount", ["secret", "secret/", "team/kv", "kv-v2_prod.1"])
    def test_accepted(self, tmp_path: Path, mount: str) -> None:
        d = Draft(tmp_path)
        _vault(d, mount=mount, approle_mount=mount)
        assert d.load().stores["bao"].settings["mount"] == mount

    def test_both_reported_at_once_by_config_check(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        _vault(d, mount="secret/../sys", approle_mount="approle?x")
        d.save()
        code, _, err = _cli("config", "check", "-c", str(d.path))
        assert code == 2
        assert "Traceback" not in err
        for key, reason in [("stores.bao.mount", "'..'"), ("stores.bao.approle_mount", "'?'")]:
            assert re.search(rf"{re.escape(str(d.path))}: {re.escape(key)}: .*"
                             rf"{re.escape(reason)}", err), err
