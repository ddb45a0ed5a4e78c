"""Tests for the env store's dotenv format and file safety (the store contract is elsewhere)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.stores.env import EnvStore, parse_env, render_env
from rotator.errors import StoreAccessDenied, StoreError, StoreUnavailable
from rotator.interfaces import Credentials, Stage
from rotator.secrets import Secret

TRICKY_VALUES = [
    pytest.param('say "hi"', id="double-quotes"),
    pytest.param("it's", id="single-quote"),
    pytest.param("'wrapped'", id="wrapped-in-single-quotes"),
    pytest.param('"wrapped"', id="wrapped-in-double-quotes"),
    pytest.param("a # not a comment", id="hash-after-space"),
    pytest.param("#leading-hash", id="leading-hash"),
    pytest.param("$HOME ${PATH} $(id) `id`", id="dollar-and-backticks"),
    pytest.param("a=b==c", id="equals"),
    pytest.param("back\\slash\\n\\", id="backslashes"),
    pytest.param("line1\nline2\n", id="newlines"),
    pytest.param("crlf\r\nend", id="carriage-return"),
    pytest.param("tab\there", id="tab"),
    pytest.param("ünïcødé ✓ 秘密 🔑", id="unicode"),
    pytest.param("  padded  ", id="surrounding-spaces"),
    pytest.param("", id="empty"),
    pytest.param("export X=1", id="looks-like-a-line"),
]


def _random_tricky() -> str:
    return f"{secrets.token_urlsafe(16)}\"'#$=\\\n ü{secrets.token_urlsafe(8)}"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0 so only rotator's own chmod can make a file private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _store(path: Path, **settings: object) -> EnvStore:
    return EnvStore("env-test", {"file": str(path), "read_environ": False, **settings})


def _creds(secret: str | None = None) -> Credentials:
    return Credentials("svc-app", Secret(secret or secrets.token_urlsafe(32)))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestValueRoundTrip:
    """Any value rendered by render_env parses back to itself with parse_env."""

    @pytest.mark.parametrize("value", TRICKY_VALUES)
    def test_render_then_parse(self, value: str) -> None:
        text = render_env("", {"KEY": value})
        assert parse_env(text) == {"KEY": value}

    @pytest.mark.parametrize("value", TRICKY_VALUES)
    def test_rendered_value_is_one_line(self, value: str) -> None:
        assert render_env("", {"KEY": value}).count("\n") == 1

    @pytest.mark.parametrize("value", TRICKY_VALUES)
    def test_update_in_place_round_trips(self, value: str) -> None:
        text = render_env("KEY=old\nOTHER=1\n", {"KEY": value})
        assert parse_env(text) == {"KEY": value, "OTHER": "1"}

    def test_through_the_store(self, tmp_path: Path) -> None:
        secret = _random_tricky()
        store = _store(tmp_path / "creds.env")
        store.stage_pending("APP", _creds(secret), "r-1")
        pending = store.read("APP", Stage.PENDING)
        assert pending is not None
        assert pending.credentials.client_secret.reveal() == secret


class TestParseEnv:
    """parse_env reads the common dotenv forms and skips comments and blank lines."""

    def test_forms(self) -> None:
        text = (
            "# a comment\n"
            "\n"
            "PLAIN=value\n"
            "export EXPORTED=yes\n"
            "  SPACED  =  around  \n"
            "SINGLE='no $escapes \\n here'\n"
            'DOUBLE="tab\\there\\nnext \\$HOME"\n'
            "INLINE=value # comment\n"
            "HASH=a#b\n"
            "EMPTY=\n"
            "   # indented comment\n"
            "not a line\n"
        )
        assert parse_env(text) == {
            "PLAIN": "value",
            "EXPORTED": "yes",
            "SPACED": "around",
            "SINGLE": "no $escapes \\n here",
            "DOUBLE": "tab\there\nnext $HOME",
            "INLINE": "value",
            "HASH": "a#b",
            "EMPTY": "",
        }

    def test_later_assignment_wins(self) -> None:
        assert parse_env("K=1\nK=2\n") == {"K": "2"}

    def test_quoted_value_with_inline_comment(self) -> None:
        assert parse_env('K="value" # comment\n') == {"K": "value"}
        assert parse_env("K='va # lue'   # comment\n") == {"K": "va # lue"}
        assert parse_env('K="a\\"b" # c\n') == {"K": 'a"b'}


ORIGINAL = (
    "# Credentials for the payments worker\n"
    "export OTHER_TOKEN=keep-me\n"
    "\n"
    "UNRELATED='single quoted # not a comment'\n"
    "   # an indented comment\n"
    "APP_CLIENT_ID=svc-app\n"
    "export APP_CLIENT_SECRET=\"old\"\n"
    "RAW=unquoted value # trailing comment\n"
    "not even an assignment\n"
)


class TestRewriteKeepsEverythingElse:
    """A rewrite changes only the updated keys; comments, other keys and export lines stay."""

    def test_untouched_lines_survive_byte_for_byte(self) -> None:
        out = render_env(ORIGINAL, {"APP_CLIENT_SECRET": "new", "APP_ROTATION_ID": "r-1"})
        old_lines = ORIGINAL.splitlines()
        new_lines = out.splitlines()
        changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=False))
                   if a != b]
        assert changed == [old_lines.index('export APP_CLIENT_SECRET="old"')]
        assert new_lines[len(old_lines):] == ['APP_ROTATION_ID="r-1"']
        assert out.endswith("\n")

    def test_export_prefix_is_kept_on_an_updated_line(self) -> None:
        out = render_env(ORIGINAL, {"APP_CLIENT_SECRET": "new"})
        assert 'export APP_CLIENT_SECRET="new"' in out.splitlines()
        assert parse_env(out)["APP_CLIENT_SECRET"] == "new"

    def test_delete_removes_only_that_line(self) -> None:
        out = render_env(ORIGINAL, {"APP_CLIENT_SECRET": None, "ABSENT": None})
        assert out.splitlines() == [
            line for line in ORIGINAL.splitlines() if "APP_CLIENT_SECRET" not in line]

    def test_duplicate_key_is_rewritten_once(self) -> None:
        text = "K=first\nOTHER=1\nK=second\n"
        out = render_env(text, {"K": "new"})
        assert parse_env(out) == {"K": "new", "OTHER": "1"}
        assert out == 'K="new"\nOTHER=1\n'
        assert render_env(text, {"K": None}) == "OTHER=1\n"

    def test_no_updates_keeps_the_text(self) -> None:
        assert render_env(ORIGINAL, {}) == ORIGINAL

    def test_empty_result_is_an_empty_file(self) -> None:
        assert render_env("K=1\n", {"K": None}) == ""

    def test_store_write_keeps_other_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        path.write_text(ORIGINAL, encoding="utf-8")
        _store(path).stage_pending("APP", _creds(), "r-1")
        new_lines = path.read_text(encoding="utf-8").splitlines()
        for line in ORIGINAL.splitlines():
            assert line in new_lines


class TestFileMode:
    """After any write the file is mode 0600, whatever the umask and the file's old mode."""

    @pytest.mark.usefixtures("umask_zero")
    def test_new_file_is_private(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        _store(path).stage_pending("APP", _creds(), "r-1")
        assert _mode(path) == 0o600
        assert _mode(tmp_path / "creds.env.lock") == 0o600

    @pytest.mark.usefixtures("umask_zero")
    @pytest.mark.parametrize("old_mode", [0o644, 0o666, 0o640], ids=oct)
    def test_existing_readable_file_becomes_private(self, tmp_path: Path, old_mode: int) -> None:
        path = tmp_path / "creds.env"
        path.write_text("APP_CLIENT_ID=svc-app\n", encoding="utf-8")
        path.chmod(old_mode)
        store = _store(path)
        store.stage_pending("APP", _creds(), "r-1")
        assert _mode(path) == 0o600
        store.promote("APP", "r-1")
        assert _mode(path) == 0o600


class TestAtomicWrite:
    """A write that fails midway leaves the old file whole and no temporary file behind."""

    @pytest.mark.parametrize(("failure", "expected"), [
        pytest.param(OSError(errno.EIO, "I/O error"), StoreUnavailable, id="io-error"),
        pytest.param(OSError(errno.ENOSPC, "No space left on device"), StoreUnavailable,
                     id="disk-full"),
        pytest.param(PermissionError(errno.EACCES, "Permission denied"), StoreAccessDenied,
                     id="permission"),
    ])
    @pytest.mark.parametrize("target", ["replace", "fsync"])
    def test_failed_write_leaves_original(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: OSError,
        expected: type[StoreError], target: str,
    ) -> None:
        path = tmp_path / "creds.env"
        path.write_text(ORIGINAL, encoding="utf-8")
        path.chmod(0o600)
        before = path.read_bytes()
        secret = secrets.token_urlsafe(32)

        def fail(*args: object) -> None:
            raise failure

        monkeypatch.setattr(os, target, fail)
        with pytest.raises(expected) as info:
            _store(path).stage_pending("APP", _creds(secret), "r-1")
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.env", "creds.env.lock"]
        assert secret not in str(info.value)

    def test_successful_write_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        _store(path).stage_pending("APP", _creds(), "r-1")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.env", "creds.env.lock"]


class TestProcessEnvironment:
    """Without a file the store reads the process environment and refuses every write."""

    def test_reads_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        secret = secrets.token_urlsafe(32)
        monkeypatch.setenv("ENVTEST_CLIENT_ID", "svc-env")
        monkeypatch.setenv("ENVTEST_CLIENT_SECRET", secret)
        store = EnvStore("proc", {"file": None})
        found = store.read("ENVTEST")
        assert found is not None
        assert found.credentials == Credentials("svc-env", Secret(secret))
        assert store.facts("ENVTEST").extra == {"source": "environment"}

    def test_stage_pending_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ENVTEST_CLIENT_ID", "svc-env")
        store = EnvStore("proc", {"file": None})
        with pytest.raises(StoreAccessDenied, match="process environment"):
            store.stage_pending("ENVTEST", _creds(), "r-1")
        with pytest.raises(StoreAccessDenied):
            store.check_writable("ENVTEST")
        assert "ENVTEST_CLIENT_SECRET_PENDING" not in os.environ

    def test_file_wins_over_environment(self, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ENVTEST_CLIENT_ID", "from-environ")
        monkeypatch.setenv("ENVTEST_CLIENT_SECRET", secrets.token_urlsafe(32))
        path = tmp_path / "creds.env"
        path.write_text("ENVTEST_CLIENT_ID=from-file\n", encoding="utf-8")
        found = _store(path, read_environ=True).read("ENVTEST")
        assert found is not None
        assert found.credentials.client_id == "from-file"

    def test_read_environ_false_ignores_environment(self, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ENVTEST_CLIENT_ID", "from-environ")
        monkeypatch.setenv("ENVTEST_CLIENT_SECRET", secrets.token_urlsafe(32))
        assert _store(tmp_path / "creds.env").read("ENVTEST") is None


class TestPrefix:
    """A prefix must be a valid variable-name prefix; anything else is refused before any I/O."""

    @pytest.mark.parametrize("prefix", ["1X", "A-B", "", "A B", "A.B", "Ä", "A\nB", "APP\n"])
    def test_invalid_prefix_is_rejected(self, tmp_path: Path, prefix: str) -> None:
        path = tmp_path / "creds.env"
        store = _store(path)
        with pytest.raises(StoreError, match="must be letters, digits"):
            store.read(prefix)
        with pytest.raises(StoreError, match="must be letters, digits"):
            store.stage_pending(prefix, _creds(), "r-1")
        with pytest.raises(StoreError, match="must be letters, digits"):
            store.check_writable(prefix)
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("prefix", ["APP", "_X", "a1", "SVC_2_B"])
    def test_valid_prefix_is_accepted(self, tmp_path: Path, prefix: str) -> None:
        store = _store(tmp_path / "creds.env")
        store.stage_pending(prefix, _creds(), "r-1")
        assert store.read(prefix, Stage.PENDING) is not None
