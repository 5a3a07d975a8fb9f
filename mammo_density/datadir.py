"""The data directory of a node: private file modes and one ``serve`` at a time.

Everything under the data directory can identify a patient (spooled images, SRs with
name, ID and birth date, the state and outbox databases), so:

- the processes that write there (``serve``, ``worker``) run with umask 077: files are
  created 0600 and folders 0700 whatever the umask they were started with;
- the data directory itself is made 0700 at start, and the databases (with their WAL and
  shared-memory files) are brought back to 0600 if an older version left them wider;
- ``serve`` holds an exclusive lock (``flock``) on ``<data_dir>/serve.lock`` for its
  whole life: a second ``serve`` on the same directory stops with a clear error instead of
  sharing the spool, the state and the outbox. The lock goes with the process (also on
  SIGKILL), so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

PRIVATE_UMASK = 0o077
LOCK_NAME = "serve.lock"
_DB_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal")


class DataDirBusy(RuntimeError):
    """Another process holds the data directory's lock."""


def private_umask() -> int:
    """Set the process umask to 077; return the previous one."""
    return os.umask(PRIVATE_UMASK)


def secure(data_dir: Path) -> Path:
    """Create ``data_dir`` (0700) or tighten it to 0700, and its databases to 0600."""
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(data_dir.stat().st_mode) & 0o077:
        data_dir.chmod(0o700)
    for path in data_dir.iterdir():
        if path.name.endswith(_DB_SUFFIXES) and path.is_file() \
                and stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
    return data_dir


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory, held until :meth:`release`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(
                f"data directory {self.path.parent} is in use by another `mammo-density "
                f"serve` (pid {holder}); stop it first or give this one its own "
                "--data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()




def connect_readonly(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """Open a SQLite database for reading only: never creates, migrates or writes anything
    (``status`` on a full or read-only disk).

    With a write-ahead log present (a ``serve`` running, or killed), ``mode=ro``, which
    reads what is in the log too; without one (everything checkpointed), or where
    ``mode=ro`` cannot work (a read-only file system), ``immutable=1``, which reads the
    main file without locking and creates no ``-wal``/``-shm`` file.
    """
    path = Path(path).resolve()
    uri = "file:" + quote(str(path))
    last: sqlite3.Error | None = None
    modes = ["?mode=ro&immutable=1"]
    if Path(str(path) + "-wal").exists():
        modes.insert(0, "?mode=ro")
    for query in modes:
        try:
            conn = sqlite3.connect(uri + query, uri=True, timeout=timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as err:
            last = err
    assert last is not None
    raise last


__all__ = ["LOCK_NAME", "PRIVATE_UMASK", "DataDirBusy", "DataDirLock", "connect_readonly",
           "private_umask", "secure"]
