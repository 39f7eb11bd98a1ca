"""Sharing one DuckDB project file between threads and processes.

DuckDB lets one process at a time open a file read-write, and connections inside a
process share one database instance. The app serves several experts from threads of
one process while a discovery run or training round writes from another process, so:

* A process holds the file only while operations run: the first operation opens it,
  the last one to finish closes it. Between operations other processes get their turn.
* Processes take turns through an advisory lock on a sidecar file (``<file>.lock``),
  polled with jittered backoff for up to ``busy_timeout`` seconds; DuckDB's own
  "Conflicting lock" error (a process that does not use this lock, e.g. the duckdb CLI)
  is retried the same way. Only after the timeout does the caller see `StoreBusyError`.
* Threads share the open connection, each with its own ``.cursor()``; reads run side
  by side (DuckDB's MVCC), writes go one at a time through a lock, so they never hit
  write-write conflicts.
* A burst of operations keeps the file open (and it lingers ``LINGER_S`` after the
  last one), but never longer than ``MAX_HOLD_S`` at a stretch: then new operations
  wait, the file closes, and the process pauses briefly so a waiting process can take
  the lock.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb

try:  # POSIX advisory locks; elsewhere DuckDB's own lock plus retry does the job.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

BUSY_TIMEOUT_S = 60.0
"""How long an operation waits for another process before giving up."""

MAX_HOLD_S = 0.5
"""Longest stretch a busy process keeps the file before letting others in."""

YIELD_GAP_S = 0.03
"""Pause after a forced release, longer than a waiter's poll interval."""

LINGER_S = 0.1
"""An idle file stays open this long, so a page's run of queries opens it once."""

_POLL_S = (0.002, 0.015)
"""Jittered poll interval for the sidecar lock: short, so a released file is taken fast."""


class StoreBusyError(RuntimeError):
    """The project file stayed locked by another process for longer than the timeout."""


def is_lock_error(err: BaseException) -> bool:
    """Whether a DuckDB error means "someone else has the file or the rows": retry it."""
    if isinstance(err, duckdb.TransactionException):
        return True  # write-write conflict; the transaction was rolled back
    if isinstance(err, duckdb.IOException):
        text = str(err).lower()
        return "lock" in text
    return False


def backoff(attempt: int, base: float = 0.005, cap: float = 0.25) -> float:
    """Full-jitter exponential backoff, so retrying processes do not move in step."""
    return random.uniform(0.0, min(cap, base * 2**attempt))


class ConnectionGate:
    """One per project file per process: opens, shares and closes the connection.

    Args:
        path: the ``.duckdb`` file, or None for an in-memory database (held open until
            `close`, since closing it would lose it).
        on_open: called with each fresh connection before use (schema check/upgrade).
        busy_timeout: seconds to wait for another process before `StoreBusyError`.
    """

    def __init__(
        self,
        path: str | None,
        on_open: Callable[[duckdb.DuckDBPyConnection], None],
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._on_open = on_open
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._lock_fd: int | None = None
        self._active = 0
        self._waiting = 0
        self._draining = False
        self._opened_at = 0.0
        self._reopen_after = 0.0
        self._generation = 0  # bumped by every enter/leave: cancels a pending idle close
        if path is None:
            self._conn = duckdb.connect(":memory:")
            on_open(self._conn)

    @contextmanager
    def cursor(self, write: bool, busy_timeout: float | None = None,
               ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for one operation; writers hold the process's write lock.

        Args:
            busy_timeout: this caller's patience with other processes (default: the
                gate's).
        """
        cur = self._enter(self.busy_timeout if busy_timeout is None else busy_timeout)
        try:
            if write:
                with self._write_lock:
                    yield cur
            else:
                yield cur
        finally:
            try:
                cur.close()
            finally:
                self._leave()

    def close(self) -> None:
        """Close an idle connection now (in-memory databases are lost)."""
        with self._cond:
            self._generation += 1
            if self._active == 0 and self._conn is not None:
                self._close()

    def _enter(self, busy_timeout: float) -> duckdb.DuckDBPyConnection:
        with self._cond:
            self._waiting += 1
            try:
                while self._draining or self._overdue():
                    if self._active > 0:
                        self._draining = True  # no newcomers until the file is released
                        self._cond.wait()
                    else:
                        self._close()
                        self._draining = False
                        self._reopen_after = time.monotonic() + YIELD_GAP_S
                if self._conn is None:
                    self._open(busy_timeout)
                self._active += 1
                self._generation += 1
                return self._conn.cursor()
            finally:
                self._waiting -= 1

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._generation += 1
            if self._active == 0 and self.path is not None:
                self._draining = False
                if self._overdue():
                    self._close()
                    self._reopen_after = time.monotonic() + YIELD_GAP_S
                elif self._waiting == 0:
                    self._schedule_idle_close()
            self._cond.notify_all()

    def _schedule_idle_close(self) -> None:
        timer = threading.Timer(LINGER_S, self._close_if_idle, args=(self._generation,))
        timer.daemon = True
        timer.start()

    def _close_if_idle(self, generation: int) -> None:
        with self._cond:
            if generation == self._generation and self._active == 0 and self._conn is not None:
                self._close()

    def _overdue(self) -> bool:
        return (
            self.path is not None
            and self._conn is not None
            and time.monotonic() - self._opened_at > MAX_HOLD_S
        )

    def _open(self, busy_timeout: float) -> None:
        pause = self._reopen_after - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        deadline = time.monotonic() + busy_timeout
        self._lock_fd = _take_file_lock(self.path + ".lock", deadline)
        try:
            conn = _connect(self.path, deadline)
            try:
                self._on_open(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._release_file_lock()
            raise
        self._conn = conn
        self._opened_at = time.monotonic()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()  # checkpoints the WAL and drops DuckDB's own file lock
        finally:
            self._release_file_lock()

    def _release_file_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def forget_after_fork(self) -> None:
        """In a forked child: drop inherited handles without closing the parent's."""
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._conn = None
        self._lock_fd = None
        self._active = self._waiting = 0
        self._draining = False


def _take_file_lock(lock_path: str, deadline: float) -> int | None:
    """Exclusive advisory lock on ``lock_path``, polled until ``deadline``."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None  # read-only folder: fall back on DuckDB's own lock and retries
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StoreBusyError(
                    f"project file {lock_path[:-5]} is busy: another process held it for "
                    f"more than the timeout; try again when its run has finished"
                ) from None
            time.sleep(random.uniform(*_POLL_S))


def _connect(path: str, deadline: float) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying while a process outside our lock protocol holds it."""
    attempt = 0
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as err:
            if not is_lock_error(err):
                raise
            if time.monotonic() > deadline:
                raise StoreBusyError(
                    f"project file {path} is held open by another program: {err}"
                ) from err
            time.sleep(backoff(attempt))
            attempt += 1
