"""The journal's single-process lock: an exclusive ``flock`` on the database file itself.

The kernel releases it even on ``kill -9``, and a hard link or a symlink is the same file, so no path
trick lets a second process in and there is no lock file to delete. SQLite's own locks are POSIX
``fcntl`` locks, which are independent of ``flock`` on Linux and on local filesystems elsewhere, so
the two never interfere; readers (``status``, ``report``) take no ``flock`` and read beside a run.
(On NFS, Linux emulates ``flock`` with ``fcntl`` locks: SQLite on NFS is not supported anyway.)
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from bulkclaim.model import JournalError

__all__ = ["LockHolder", "lock_file", "lock_holder"]


@dataclass(frozen=True)
class LockHolder:
    """Whether a process has the journal open (holds its lock): ``held`` is None where this system
    cannot tell; ``pid`` is the holder's, when known."""

    held: bool | None
    pid: int | None = None


def lock_holder(journal: str | os.PathLike[str], *, expected_pid: int | None = None,
                proc_locks: str | os.PathLike[str] = "/proc/locks") -> LockHolder:
    """Who holds ``journal``'s lock, found *without* taking it (a ``status`` that took the lock even
    for a moment could make a claim starting at that moment refuse the journal).

    Linux lists every ``flock`` in /proc/locks as ``FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode>``.
    Under overlayfs (containers) the device there can differ from ``stat``'s, so an inode-only match
    counts when its pid is ``expected_pid`` (the pid the journal recorded for its latest run).
    Elsewhere (no /proc/locks) the answer is unknown.
    """
    try:
        found = os.stat(journal)  # the lock is on the journal file itself
    except FileNotFoundError:
        return LockHolder(False)
    except OSError:
        return LockHolder(None)
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as handle:
            table = handle.read()
    except OSError:
        return LockHolder(None)
    exact = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:  # "->": a waiter, not the holder
            continue
        pid, where = int(fields[4]), fields[5]
        if where == exact or (where.rsplit(":", 1)[-1] == str(found.st_ino) and pid == expected_pid):
            return LockHolder(True, pid)
    return LockHolder(False)


def lock_file(path: Path) -> int:
    """Open the journal file itself (created 0600 if missing) and take an exclusive ``flock`` on it; the
    descriptor holds the lock until it is closed. A file we may only read is locked through a read-only
    descriptor (SQLite then says it is read-only)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM) or not path.is_file():
            raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {path} is in use by another bulkclaim process; "
                           "wait for it to finish (or stop it) and run again") from None
    return fd
