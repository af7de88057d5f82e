"""One process per data directory: an exclusive ``flock`` on ``mupdate.lock``.

The master holds it while it runs, so a second master, or an offline import, on the same
directory is refused instead of silently diverging from the running master's index.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryLocked(RuntimeError):
    """Another process holds the data directory."""


class DirectoryLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "mupdate.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLocked(
                f"{self.path.parent} is in use by another mupdate process"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
