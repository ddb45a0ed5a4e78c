"""Tests for the env store's dotenv format and file safety (the store contract is elsewhere)."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.stores.env import EnvStore, UnsafeValue, parse_env, render_env
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
    pytest.param("it's 'quoted' '\\''", id="single-quotes-and-shell-escape"),
    pytest.param("a\x85LD_PRELOAD=/tmp/evil.so", id="next-line-character"),
    pytest.param("a\u2028B=1\u2029C=2", id="unicode-line-separators"),
    pytest.param("a\x0bB=1\x0cC=2\x1cD=3\x1eE", id="vertical-tab-form-feed-separators"),
]


def _random_tricky() -> str:
    """A secret the store accepts (printable ASCII) holding every character a shell treats
    specially."""
    return f"{secrets.token_urlsafe(16)}\"'#$=\\`id`$(id)${{HOME}}!;&|<>{secrets.token_urlsafe(8)}"


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
        assert new_lines[len(old_lines):] == ["APP_ROTATION_ID='r-1'"]
        assert out.endswith("\n")

    def test_export_prefix_is_kept_on_an_updated_line(self) -> None:
        out = render_env(ORIGINAL, {"APP_CLIENT_SECRET": "new"})
        assert "export APP_CLIENT_SECRET='new'" in out.splitlines()
        assert parse_env(out)["APP_CLIENT_SECRET"] == "new"

    def test_delete_removes_only_that_line(self) -> None:
        out = render_env(ORIGINAL, {"APP_CLIENT_SECRET": None, "ABSENT": None})
        assert out.splitlines() == [
            line for line in ORIGINAL.splitlines() if "APP_CLIENT_SECRET" not in line]

    def test_duplicate_key_is_rewritten_once(self) -> None:
        text = "K=first\nOTHER=1\nK=second\n"
        out = render_env(text, {"K": "new"})
        assert parse_env(out) == {"K": "new", "OTHER": "1"}
        assert out == "K='new'\nOTHER=1\n"
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


# -- security review: shell sourcing, line splitting, unsafe values --------------------------


def _source(path: Path, *names: str) -> tuple[dict[str, str], str]:
    """Source ``path`` with /bin/sh as a service would (``set -a; . file``); return the
    values of ``names`` and the whole exported environment as text."""
    script = 'set -a; . "$1"; ' + "".join(f'printf "%s\\0" "${n}"; ' for n in names) + "env"
    done = subprocess.run(["/bin/sh", "-c", script, "sh", str(path)], capture_output=True,
                          env={"PATH": os.environ["PATH"]}, cwd=path.parent, check=True)
    fields = done.stdout.split(b"\0")
    values = {n: fields[i].decode("utf-8") for i, n in enumerate(names)}
    return values, fields[-1].decode("utf-8", "replace")


class TestSourcedByAShell:
    """A file the store writes, sourced by a shell, runs no command and sets each variable
    to exactly the value written."""

    @pytest.mark.parametrize("template", [
        pytest.param("a`touch {m}`b", id="backticks"),
        pytest.param("a$(touch {m})b", id="command-substitution"),
        pytest.param("a${{X:=$(touch {m})}}b", id="parameter-expansion"),
        pytest.param("it's'`touch {m}`'", id="single-quotes"),
        pytest.param('"; touch {m}; "\\', id="double-quote-and-backslash"),
        pytest.param("a'\\''`touch {m}`", id="quote-escape-sequence"),
    ])
    def test_no_expansion(self, tmp_path: Path, template: str) -> None:
        marker = tmp_path / "ran"
        value = template.format(m=marker)
        path = tmp_path / "creds.env"
        store = _store(path)
        store._write("", {"APP_CLIENT_SECRET": value})  # the low-level writer: no value check
        got, _ = _source(path, "APP_CLIENT_SECRET")
        assert not marker.exists()
        assert got["APP_CLIENT_SECRET"] == value
        assert parse_env(path.read_text(encoding="utf-8"))["APP_CLIENT_SECRET"] == value

    def test_through_stage_and_promote(self, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        secret = f"{secrets.token_urlsafe(8)}`touch {marker}`$(touch {marker})'\"\\"
        secret = secret.replace(" ", "")  # the store takes no spaces
        path = tmp_path / "creds.env"
        store = _store(path)
        store.stage_pending("APP", _creds(secret), "r-1")
        store.promote("APP", "r-1")
        got, _ = _source(path, "APP_CLIENT_SECRET", "APP_CLIENT_ID")
        assert not marker.exists()
        assert got == {"APP_CLIENT_SECRET": secret, "APP_CLIENT_ID": "svc-app"}

    def test_unicode_line_break_plants_no_variable(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        value = "x\x85LD_PRELOAD=/tmp/evil.so\u2028EVIL=1"
        store = _store(path)
        store._write("", {"APP_CLIENT_SECRET": value})
        store._write(path.read_text(encoding="utf-8"), {"APP_ROTATION_ID": "r-1"})
        assert set(parse_env(path.read_text(encoding="utf-8"))) == {
            "APP_CLIENT_SECRET", "APP_ROTATION_ID"}
        got, environment = _source(path, "APP_CLIENT_SECRET")
        assert got["APP_CLIENT_SECRET"] == value
        assert "\nLD_PRELOAD=" not in "\n" + environment
        assert "\nEVIL=" not in "\n" + environment

    def test_value_with_newline_still_expands_nothing(self, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        value = f"line1\n`touch {marker}`$(touch {marker})\r\n"
        path = tmp_path / "creds.env"
        _store(path)._write("", {"OLD_SECRET": value})
        _source(path, "OLD_SECRET")
        assert not marker.exists()
        assert parse_env(path.read_text(encoding="utf-8")) == {"OLD_SECRET": value}


class TestLinesSplitOnNewlineOnly:
    """Only "\\n" ends a line; other characters Python counts as line breaks stay in the value."""

    @pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85",
                                     "\u2028", "\u2029"], ids=lambda c: f"U+{ord(c):04X}")
    def test_parse(self, sep: str) -> None:
        assert parse_env(f"K='a{sep}LD_PRELOAD=/x'\n") == {"K": f"a{sep}LD_PRELOAD=/x"}
        assert "LD_PRELOAD" not in parse_env(f"K=a{sep}LD_PRELOAD=/x\n")

    @pytest.mark.parametrize("sep", ["\x85", "\u2028"], ids=lambda c: f"U+{ord(c):04X}")
    def test_rewrite_keeps_one_line(self, sep: str) -> None:
        text = f"K='a{sep}LD_PRELOAD=/x'\nOTHER=1\n"
        out = render_env(text, {"OTHER": "2"})
        assert out.count("\n") == 2
        assert parse_env(out) == {"K": f"a{sep}LD_PRELOAD=/x", "OTHER": "2"}


class TestReadsFilesWrittenBefore:
    """Files written by earlier versions (double-quoted, escaped) still read the same."""

    def test_double_quoted(self) -> None:
        old = 'export APP_CLIENT_SECRET="a\\"b\\\\c\\$d`e\\nf"\nAPP_ROTATION_ID="r-1"\n'
        assert parse_env(old) == {"APP_CLIENT_SECRET": 'a"b\\c$d`e\nf',
                                  "APP_ROTATION_ID": "r-1"}

    def test_rewritten_in_the_new_form(self) -> None:
        old = 'APP_CLIENT_SECRET="a\\$b"\nAPP_ROTATION_ID="r-1"\n'
        out = render_env(old, {"APP_ROTATION_ID": "r-2"})
        assert out == "APP_CLIENT_SECRET=\"a\\$b\"\nAPP_ROTATION_ID='r-2'\n"
        assert parse_env(out) == {"APP_CLIENT_SECRET": "a$b", "APP_ROTATION_ID": "r-2"}


class TestRefusesUnsafeValues:
    """The store refuses a client id or secret that is not printable ASCII without spaces,
    naming the location and never the value, and writes nothing."""

    @pytest.mark.parametrize("bad", [
        " ", "\n", "\r", "\t", "\x00", "\x0b", "\x85", "\u2028", "é", "\x7f",
    ], ids=repr)
    @pytest.mark.parametrize("field", ["secret", "client_id"])
    def test_refused(self, tmp_path: Path, bad: str, field: str) -> None:
        path = tmp_path / "creds.env"
        path.write_text("APP_CLIENT_ID=svc-app\n", encoding="utf-8")
        before = path.read_bytes()
        value = f"{secrets.token_urlsafe(12)}{bad}LD_PRELOAD=/tmp/evil.so"
        creds = (Credentials("svc-app", Secret(value)) if field == "secret"
                 else Credentials(value, Secret(secrets.token_urlsafe(32))))
        with pytest.raises(UnsafeValue) as info:
            _store(path).stage_pending("APP", creds, "r-1")
        assert isinstance(info.value, StoreError)
        message = str(info.value)
        assert "APP" in message and "printable ASCII" in message
        assert value not in message and "LD_PRELOAD" not in message
        assert path.read_bytes() == before

    def test_empty_secret_refused(self, tmp_path: Path) -> None:
        with pytest.raises(UnsafeValue, match="empty"):
            _store(tmp_path / "creds.env").stage_pending(
                "APP", Credentials("svc-app", Secret("")), "r-1")


# -- files in shared directories: symlinks, foreign owners, a lock held forever ---------------


NOBODY = 65534


class TestNoSymlinkNoForeignFile:
    """The store follows no planted symlink and refuses a lock file another user owns."""

    def test_env_file_symlink_is_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "elsewhere.env"
        target.write_text(f"APP_CLIENT_ID=svc-app\nAPP_CLIENT_SECRET={secrets.token_hex(8)}\n")
        before = target.read_bytes()
        path = tmp_path / "creds.env"
        path.symlink_to(target)
        store = _store(path)
        with pytest.raises(StoreUnavailable, match="symbolic link"):
            store.read("APP")
        with pytest.raises(StoreUnavailable, match="symbolic link"):
            store.stage_pending("APP", _creds(), "r-1")
        assert target.read_bytes() == before and path.is_symlink()

    def test_lock_file_symlink_is_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "victim"
        (tmp_path / "creds.env.lock").symlink_to(target)
        with pytest.raises(StoreAccessDenied, match="symbolic link"):
            _store(tmp_path / "creds.env").stage_pending("APP", _creds(), "r-1")
        assert not target.exists()
        assert not (tmp_path / "creds.env").exists()

    def test_lock_file_of_another_user_is_refused(self, tmp_path: Path) -> None:
        lock = tmp_path / "creds.env.lock"
        lock.touch(mode=0o600)
        os.chown(lock, NOBODY, NOBODY)
        with pytest.raises(StoreAccessDenied, match="another user"):
            _store(tmp_path / "creds.env").stage_pending("APP", _creds(), "r-1")
        assert not (tmp_path / "creds.env").exists()

    def test_planted_temp_symlink_is_replaced_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "victim"
        target.write_text("untouched\n")
        (tmp_path / ".creds.env.rotator-tmp").symlink_to(target)
        store = _store(tmp_path / "creds.env")
        store.stage_pending("APP", _creds(), "r-1")
        assert target.read_text() == "untouched\n"
        assert store.read("APP", Stage.PENDING) is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "creds.env", "creds.env.lock", "victim"]


class TestLockTimeout:
    """A write waits a bounded time for a lock another holder keeps, then fails naming it."""

    def test_held_lock_times_out(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        lock_path = tmp_path / "creds.env.lock"
        holder = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            with pytest.raises(StoreUnavailable, match=str(lock_path)) as info:
                _store(path, lock_timeout=0.2).stage_pending("APP", _creds(), "r-1")
            assert info.value.retryable
        finally:
            os.close(holder)
        assert not path.exists()
        _store(path, lock_timeout=0.2).stage_pending("APP", _creds(), "r-1")
        assert path.exists()

    def test_setting_is_checked(self) -> None:
        names = {s.key: s for s in EnvStore.SETTINGS}
        assert names["lock_timeout"].kind == "duration"
        assert names["lock_timeout"].default == 30.0


# -- a writer killed mid-write -----------------------------------------------------------------


_KILLED_WRITER = """
import os, signal, sys
from providers.stores.env import EnvStore
from rotator.interfaces import Credentials
from rotator.secrets import Secret

def die(*args: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = die  # the temporary file is written and synced; die before the rename
store = EnvStore("env", {"file": sys.argv[1], "read_environ": False})
store.stage_pending("APP", Credentials("svc-app", Secret(os.environ["NEW_SECRET"])), "r-1")
"""


class TestKilledWrite:
    """A write killed between its temporary file and the rename leaves no copy of the
    secrets once the store is used again."""

    def _kill_a_write(self, path: Path) -> str:
        old = secrets.token_urlsafe(32)
        path.write_text(f"APP_CLIENT_ID=svc-app\nAPP_CLIENT_SECRET={old}\n")
        path.chmod(0o600)
        new = secrets.token_urlsafe(32)
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(
            [sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=root, capture_output=True,
            env={**os.environ, "NEW_SECRET": new, "PYTHONPATH": str(root)})
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()
        left = [p for p in path.parent.iterdir() if p.name not in (path.name, f"{path.name}.lock")]
        assert len(left) == 1 and new in left[0].read_text()  # the window is real
        assert path.read_text() == f"APP_CLIENT_ID=svc-app\nAPP_CLIENT_SECRET={old}\n"
        return new

    def _left(self, path: Path) -> list[str]:
        return sorted(p.name for p in path.parent.iterdir())

    def test_next_write_removes_it(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        self._kill_a_write(path)
        _store(path).stage_pending("APP", _creds(), "r-2", replace_foreign=True)
        assert self._left(path) == ["creds.env", "creds.env.lock"]

    def test_store_start_removes_it(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        self._kill_a_write(path)
        _store(path).start()
        assert self._left(path) == ["creds.env", "creds.env.lock"]

    def test_leftover_of_an_earlier_version_is_removed(self, tmp_path: Path) -> None:
        path = tmp_path / "creds.env"
        legacy = tmp_path / ".creds.env.k3j_9x2a.tmp"  # tempfile.mkstemp's name
        legacy.write_text(f"APP_CLIENT_SECRET={secrets.token_urlsafe(32)}\n")
        unrelated = tmp_path / ".other.env.k3j_9x2a.tmp"
        unrelated.write_text("not ours\n")
        _store(path).start()
        assert self._left(path) == [".other.env.k3j_9x2a.tmp", "creds.env.lock"]
