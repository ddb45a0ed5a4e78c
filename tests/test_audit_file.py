"""How rotator.audit opens the audit log file: no symlink, this user's, private."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.audit import AuditLog
from rotator.errors import ConfigError
from rotator.secrets import Secret

NOBODY = 65534


def _key() -> Secret:
    return Secret(secrets.token_urlsafe(32))


def _refused(file: Path, *reasons: str) -> None:
    with pytest.raises(ConfigError) as info:
        AuditLog(_key(), file=file)
    (problem,) = info.value.problems
    assert problem.key == "audit.file" and str(file) in str(problem)
    for reason in reasons:
        assert reason in problem.reason


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class TestAuditLogFile:
    """The audit log is appended to only when it is this user's file, reached without a
    symlink, in a directory others cannot write, and open to no one else; otherwise the
    error names the file and the audit.file setting."""

    @pytest.mark.usefixtures("umask_zero")
    def test_new_log_and_directory_are_private(self, tmp_path: Path) -> None:
        file = tmp_path / "logs" / "audit.jsonl"
        log = AuditLog(_key(), file=file)
        log.event("rotation_started", outcome="success")
        log.close()
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
        assert "rotation_started" in file.read_text()

    def test_existing_private_log_is_appended(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        file.write_text("earlier\n")
        file.chmod(0o600)
        log = AuditLog(_key(), file=file)
        log.event("rotation_started")
        log.close()
        assert file.read_text().startswith("earlier\n")

    def test_planted_symlink_is_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "victim"
        target.write_text("untouched\n")
        target.chmod(0o600)
        (tmp_path / "audit.jsonl").symlink_to(target)
        _refused(tmp_path / "audit.jsonl", "symbolic link")
        assert target.read_text() == "untouched\n"

    def test_dangling_symlink_creates_nothing(self, tmp_path: Path) -> None:
        (tmp_path / "audit.jsonl").symlink_to(tmp_path / "created-elsewhere")
        _refused(tmp_path / "audit.jsonl", "symbolic link")
        assert not (tmp_path / "created-elsewhere").exists()

    @pytest.mark.parametrize("mode", [0o640, 0o644, 0o660, 0o602], ids=oct)
    def test_log_open_to_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        file = tmp_path / "audit.jsonl"
        file.touch()
        file.chmod(mode)
        _refused(file, "open to other users", "chmod 600")
        assert file.read_text() == ""

    def test_log_of_another_user_is_refused(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        file.touch(mode=0o600)
        os.chown(file, NOBODY, NOBODY)
        _refused(file, "belongs to another user")

    @pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=oct)
    def test_directory_writable_by_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        directory = tmp_path / "logs"
        directory.mkdir()
        directory.chmod(mode)
        _refused(directory / "audit.jsonl", "writable by other users")
        assert not (directory / "audit.jsonl").exists()

    def test_directory_of_another_user_is_refused(self, tmp_path: Path) -> None:
        directory = tmp_path / "logs"
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
        _refused(directory / "audit.jsonl", "belongs to another user")
