"""Folders and files in shared places that another local user cannot hijack, and
writes that are never left half done.

The rank logs live in `$TMPDIR/harness-ranks-$UID` and the GPU lease locks in
`$TMPDIR/harness-gpu-leases-$UID` (or `HARNESS_LEASE_DIR`). Anyone may create those
names first in a shared /tmp. As pytest does for its own base temp dir
(`_pytest/tmpdir.py`), a folder is created 0700 and then checked without following
symlinks: a link, a non-folder, another owner (root excepted) or a mode that lets
others write is refused, since whatever another user could have written in it cannot
be trusted. A folder of ours that others may only read is narrowed to 0700, as pytest
does. A lease folder may be shared with a group on purpose: setgid and group-writable
(`install -d -m 2770 -g GROUP DIR`); lock files in it are then 0660, else 0600.

Files inside are opened with O_NOFOLLOW (and O_EXCL when new), so a planted link
never turns a truncation or a lock into one of a file the attacker chose.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

# The harness's per-user folders in the temp dir.
RANK_LOGS_DIR = "harness-ranks"
LEASES_DIR = "harness-gpu-leases"
PRIVATE_FILE_MODE = 0o600
GROUP_FILE_MODE = 0o660


class UnsafePathError(OSError):
    """A folder or file that another user could have planted or could still change."""


def user_temp_dir(name: str) -> Path:
    """`$TMPDIR/<name>-<uid>`: the per-user folder name, not yet created or checked."""
    return Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"


def _group_shared(mode: int) -> bool:
    return bool(mode & stat.S_ISGID and mode & stat.S_IWGRP)


def secure_dir(path: Path, allow_group: bool = False) -> Path:
    """Create `path` with mode 0700 when missing, then refuse it unless only this user
    (and, with `allow_group`, a group chosen by setgid) can change what is in it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise UnsafePathError(f"{path} exists and is not a directory") from None
    except OSError as error:
        raise UnsafePathError(f"{path}: cannot create the directory: {error.strerror}") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{path} is a symbolic link; remove it (or choose another path)")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path} exists and is not a directory")
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise UnsafePathError(
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {me}) or root: another user "
            "may have created it; remove it or choose another path"
        )
    shared = allow_group and _group_shared(info.st_mode)
    writable_by_others = info.st_mode & (stat.S_IWOTH | (0 if shared else stat.S_IWGRP))
    if writable_by_others:
        raise UnsafePathError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: others can write in it; it must be 0700"
            + (" (or setgid 2770 to share it with a group)" if allow_group else "")
        )
    wanted = stat.S_IMODE(info.st_mode) & (0o2770 if shared else 0o700)
    if info.st_uid == me and stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(path, wanted)  # readable by others only: narrow it, as pytest does
    return path


def open_new(path: Path | str, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """A file descriptor of a file this call creates (0600): never an existing file or a link."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)


def truncate(path: Path | str) -> None:
    """Empty a file the harness made; a symlink in its place is refused (ELOOP), not followed."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def open_lock(path: Path) -> int:
    """A read-write descriptor of a lock file, created when missing, never through a link.

    flock works through any descriptor, read-only ones included, so a lock file others
    can read is one they can hold forever: it is made 0600 (0660 in a group-shared
    folder), older ones of ours too.
    """
    mode = GROUP_FILE_MODE if _group_shared(os.stat(path.parent).st_mode) else PRIVATE_FILE_MODE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file")
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader, or a run killed half-way, sees
    the old content or the new, never a part (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(scratch, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
