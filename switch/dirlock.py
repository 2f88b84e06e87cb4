"""One process per directory: an exclusive lock file, held for as long as the process runs.

Used where two processes sharing a directory would destroy each other's files: a
simulator's settlement ``out_dir`` (channels/settlement.py) and the demo's work dir
(loadtests/harness/demo.py), which clears its journal and settlement files at start.

An ``flock``, not a pid file: the kernel drops it when the holder exits, even by kill -9,
so a crashed process never leaves its directory claimed. The holder's pid is written into
the lock file, only so the refusal can name it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["DirInUse", "claim_dir", "release_dir"]


class DirInUse(Exception):
    """Another live process holds the directory's lock."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"{directory}: held by pid {holder}")
        self.directory = directory
        #: The pid the holder wrote ("unknown" if it had not written it yet).
        self.holder = holder


def claim_dir(directory: Path, lock_name: str) -> int:
    """Create ``directory`` and lock ``directory/lock_name`` for this process; returns the
    lock's file descriptor (pass it to :func:`release_dir`). Raises DirInUse."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / lock_name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise DirInUse(directory, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_dir(fd: int) -> None:
    """Give the directory up (closing the descriptor drops the lock)."""
    os.close(fd)
