"""Files that hold secrets or state: private directories, safe opens, atomic writes.

Threat model (``docs/security.md``): other local users on a shared host are not trusted. So a
file rotator writes is opened without following symlinks, must belong to this user and must
not be open to the group or others; a directory rotator keeps state in must belong to this
user and must not be writable by others. A secret file rotator only reads may be a symlink
(a Kubernetes secret volume is a chain of them): it is followed only when nobody else could
swap a link or a directory on the way (see :func:`read_private_file`).

Every function raises :class:`UnsafeFile` (an ``OSError``) with a message that names the path
and says what to do, never a secret.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class UnsafeFile(OSError):
    """A file or directory is not safe to hold secrets or state; the message says why."""


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):o}"


def check_private_dir(path: Path) -> None:
    """Refuse a directory that another user owns or that the group or others may write.

    A sticky, world-writable directory such as ``/tmp`` is refused too: rotator's files
    would sit among everyone else's.
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(f"{path} is a symbolic link; point the setting at the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeFile(f"{path} belongs to another user (uid {info.st_uid}); use a "
                         "directory of the user rotator runs as")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"{path} is writable by other users (mode {_mode(info)}); chmod 700 it")


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if missing, then :func:`check_private_dir`.

    Each missing parent gets 0700 too (``mkdir(parents=True)`` would give it 0755): the
    audit spool, made first, must not leave the state directory readable by others.
    """
    missing = []
    for part in (path, *path.parents):
        if part.exists():
            break
        missing.append(part)
    for part in reversed(missing):
        part.mkdir(exist_ok=True, mode=0o700)
    check_private_dir(path)


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` without following a symlink; refuse it unless this user owns it and
    neither group nor others have any access. Returns the descriptor (close-on-exec).

    ``flags`` are ``os.open`` flags (``O_CREAT`` creates the file with ``mode``).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UnsafeFile(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise UnsafeFile(f"{path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise UnsafeFile(f"{path} is open to other users (mode {_mode(info)}); "
                             "chmod 600 it")
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Symlinks followed at most while resolving one path (Linux's own limit).
_MAX_LINKS = 40
_TRUSTED_OWNERS = "this user or root"


def _resolve(path: Path) -> tuple[Path, list[Path]]:
    """The real path of ``path`` and the real directory holding each symlink on the way.

    Walks one component at a time, as the kernel does, so every link is seen, including
    one in the middle of the path (Kubernetes' ``..data``).
    """
    pending = list(Path(os.path.abspath(path)).parts[1:])
    done = Path("/")
    link_dirs: list[Path] = []
    while pending:
        name = pending.pop(0)
        if name == "..":
            done = done.parent
            continue
        if name in ("", "."):
            continue
        candidate = done / name
        if not stat.S_ISLNK(os.lstat(candidate).st_mode):
            done = candidate
            continue
        if len(link_dirs) == _MAX_LINKS:
            raise UnsafeFile(f"{path} goes through more than {_MAX_LINKS} symbolic links")
        link_dirs.append(done)
        target = Path(os.readlink(candidate))
        if target.is_absolute():
            done = Path("/")
        pending = [part for part in target.parts if part != "/"] + pending
    return done, link_dirs


def _dirs_between(top: Path, bottom: Path) -> list[Path]:
    """``bottom`` and its ancestors up to where it meets ``top``'s ancestry, inclusive."""
    common = Path(os.path.commonpath([top, bottom]))
    dirs = [bottom]
    while dirs[-1] != common:
        dirs.append(dirs[-1].parent)
    return dirs


def _check_link_dir(path: Path, directory: Path) -> None:
    info = os.stat(directory)
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafeFile(f"{path} is a symbolic link through {directory}, which belongs to "
                         f"another user (uid {info.st_uid}); every directory on the way must "
                         f"belong to {_TRUSTED_OWNERS}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"{path} is a symbolic link through {directory}, which other users "
                         f"may write (mode {_mode(info)}), so they could swap the link; "
                         "chmod go-w it or point the setting at the real file")


def _open_through_links(path: Path) -> int:
    """Open a symlinked secret file for reading when nobody else can redirect the links."""
    real, link_dirs = _resolve(path)
    own_dir = Path(os.path.realpath(path.parent))
    checked: set[Path] = set()
    for end in [*link_dirs, real.parent]:
        for directory in _dirs_between(own_dir, end):
            if directory not in checked:
                checked.add(directory)
                _check_link_dir(path, directory)
    if not stat.S_ISREG(os.lstat(real).st_mode):
        raise UnsafeFile(f"{path} is a symbolic link to {real}, which is not a regular file")
    # O_NONBLOCK: should a FIFO appear after the check, opening it must not hang.
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is a symbolic link to {real}, which is not a regular file")
        if info.st_uid not in (os.geteuid(), 0):
            raise UnsafeFile(f"{path} is a symbolic link to {real}, which belongs to another "
                             f"user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise UnsafeFile(f"{path} is a symbolic link to {real}, which is open to other "
                             f"users (mode {_mode(info)}); chmod 600 it (Kubernetes: "
                             "defaultMode 0400)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(path: Path) -> bytes:
    """Read a whole file of secrets: through :func:`open_private` (checked on the opened
    descriptor), or, when ``path`` is a symlink, through :func:`_open_through_links`.

    A symlink is followed only when nobody else could swap it: the final file must be a
    regular file of this user's or root's that neither the group nor others may open, and
    every directory on the way (from the link's own directory down to the file, and each
    directory holding a link followed) must belong to this user or root and be writable by
    neither the group nor others.
    """
    if stat.S_ISLNK(os.lstat(path).st_mode):
        fd = _open_through_links(path)
    else:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_private_file(path: Path, data: bytes, *, tmp: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; the file is created with mode 0600.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path``
    and fsyncs the directory, so a crash leaves either the old or the new file, whole.
    ``tmp`` names the temporary file (a stale one is replaced; it is created exclusively and
    without following a symlink), so a writer that holds a lock can sweep what a killed
    predecessor left; without it a random name is used.
    """
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
