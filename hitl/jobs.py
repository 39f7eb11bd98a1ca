"""Training rounds as background processes, one at a time per project.

The app must stay usable while a round runs for minutes, so a round is a separate
``artminer train`` process with its output in ``artminer-data/logs/train-<utc>.log``.
One round at a time is enforced by a lock file, ``artminer-data/train.lock``, holding
the owner's pid (JSON). Both ways of starting a round take it: `start_training` (the
app) and the ``artminer train`` verb (which calls `acquire_training_lock` /
`release_training_lock` itself). A lock whose pid is dead, or now belongs to another
program (its start time differs), is stale and is cleaned up by whoever looks next.

Discovery takes a lock of the same kind, ``artminer-data/discover.lock``
(`acquire_discovery_lock`), so one discovery runs per project at a time, whoever starts
it (the command line, or a training round's re-discovery).

The app reserves the lock under its own pid before it spawns the child and hands it to
the child's pid right after; a child that asks for the lock meanwhile takes it over
because its parent holds it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hitl.progress import STARTING, child_env, phase_line
from hitl.project import ProjectPaths
from hitl.roles import User, require

LOCK_NAME = "train.lock"
DISCOVERY_LOCK_NAME = "discover.lock"
_REPO_ROOT = Path(__file__).resolve().parents[1]
_CHILDREN: dict[int, subprocess.Popen] = {}  # spawned by this process: polled so none stays a zombie


class ProjectBusyError(RuntimeError):
    """Another process holds this project's lock for the same kind of work."""


class TrainingBusyError(ProjectBusyError):
    """A training round is already running for this project."""


class DiscoveryBusyError(ProjectBusyError):
    """A discovery is already running for this project."""


@dataclass(frozen=True)
class Job:
    """A training round process: who runs it, since when, where its output goes."""

    pid: int
    started: datetime
    log_path: Path | None = None
    args: tuple[str, ...] = ()
    proc_start: str | None = field(default=None, repr=False)  # /proc start time: pid reuse guard


def lock_path(paths: ProjectPaths, name: str = LOCK_NAME) -> Path:
    return paths.data_dir / name


def acquire_discovery_lock(paths: ProjectPaths, args: Sequence[str] = ()) -> Job:
    """Take the project's discovery lock for this process (re-entrant).

    Raises:
        DiscoveryBusyError: another live process is discovering on this project.
    """
    return _acquire(paths, DISCOVERY_LOCK_NAME, None, None, args, DiscoveryBusyError,
                    "a discovery")


def release_discovery_lock(paths: ProjectPaths) -> bool:
    return release_training_lock(paths, name=DISCOVERY_LOCK_NAME)


def acquire_training_lock(paths: ProjectPaths, pid: int | None = None,
                          log_path: Path | None = None, args: Sequence[str] = ()) -> Job:
    """Take the project's training lock for ``pid`` (default: this process).

    Re-entrant for the holder, and a child takes over a lock its parent holds.

    Raises:
        TrainingBusyError: another live process holds it.
    """
    return _acquire(paths, LOCK_NAME, pid, log_path, args, TrainingBusyError,
                    "a training round")


def _acquire(paths: ProjectPaths, name: str, pid: int | None, log_path: Path | None,
             args: Sequence[str], error: type[ProjectBusyError], what: str) -> Job:
    pid = os.getpid() if pid is None else pid
    job = Job(pid, _now(), log_path, tuple(args), _process_start(pid))
    path = lock_path(paths, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a stale lock removed under us by another cleaner: try again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = running_job(paths, name)
            if held is None:
                continue  # was stale and is gone now
            if held.pid not in (pid, os.getppid() if pid == os.getpid() else -1):
                raise error(
                    f"{what} is already running (pid {held.pid}, started "
                    f"{held.started:%Y-%m-%d %H:%M} UTC, lock {path})") from None
            # re-entrant, or a child taking over from its parent: the round's start and the
            # log the app opened for it stay (else the page would follow no log at all)
            job = Job(pid, held.started, log_path or held.log_path, tuple(args) or held.args,
                      job.proc_start)
            _write_lock(path, job)
            return job
        with os.fdopen(fd, "w") as f:
            f.write(_encode(job))
        return job
    raise error(f"could not take the lock {path}")


def release_training_lock(paths: ProjectPaths, pid: int | None = None,
                          name: str = LOCK_NAME) -> bool:
    """Remove the lock if ``pid`` (default: this process) holds it; True if removed."""
    pid = os.getpid() if pid is None else pid
    held = read_lock(paths, name)
    if held is None or held.pid != pid:
        return False
    lock_path(paths, name).unlink(missing_ok=True)
    return True


def read_lock(paths: ProjectPaths, name: str = LOCK_NAME) -> Job | None:
    """The lock's content as written, alive or not (None if absent, unreadable or invalid).

    A lock is data, not trust (anyone who can write ``artminer-data/`` can write one): a
    pid below 2 (``killpg`` would hit our own group or everything) or a log outside the
    project's data folder makes the lock invalid, hence stale.
    """
    try:
        data = json.loads(lock_path(paths, name).read_text())
        job = Job(int(data["pid"]), datetime.fromisoformat(data["started"]),
                  Path(data["log"]) if data.get("log") else None,
                  tuple(str(a) for a in data.get("args", ())), data.get("proc_start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if job.pid < 2:
        return None
    if job.log_path is not None and not job.log_path.resolve().is_relative_to(
            paths.data_dir.resolve()):
        return None
    return job


def running_job(paths: ProjectPaths, name: str = LOCK_NAME) -> Job | None:
    """The round (or, by ``name``, discovery) running now, or None; a stale lock is removed."""
    path = lock_path(paths, name)
    if not path.exists():
        return None
    job = read_lock(paths, name)
    if job is not None and _alive(job):
        return job
    if job is None and _younger_than(path, 2.0):
        return None  # being written right now; not stale, just not readable yet
    path.unlink(missing_ok=True)
    return None


def settle_orphan_rounds(store, paths: ProjectPaths) -> list[int]:
    """Mark rounds left ``running`` by a process that is gone as ``failed``; returns their ids.

    A round killed outright (SIGKILL, power cut) cannot record its end. Whoever holds
    the lock, or finds it free, knows no other process runs a round of this project, so
    a ``running`` round then is an orphan. Rounds run without the lock (`run_round`
    called directly) are not protected from this: go through ``artminer train``.
    """
    job = running_job(paths)
    if job is not None and job.pid != os.getpid():
        return []
    orphans = [r.round_id for r in store.list_rounds() if r.status == "running"]
    for round_id in orphans:
        store.update_round(round_id, status="failed",
                           error="ended without finishing: its process is gone (killed?)")
    return orphans


def train_command(project: Path, args: Sequence[str] = ()) -> list[str]:
    """The ``artminer train`` command line for ``project``."""
    return [sys.executable, "-m", "hitl.cli", "train", "--project", str(project), *args]


def start_training(project: str | os.PathLike, args: Sequence[str] = (),
                   command: Sequence[str] | None = None, *, actor: User | None = None) -> Job:
    """Start a training round in the background; returns at once.

    Args:
        project: the project file.
        args: extra ``artminer train`` arguments (``--iterations 50``, ...).
        command: the full command to run instead of ``artminer train`` (tests).

    Raises:
        TrainingBusyError: a round is already running for this project.
        Forbidden: ``actor`` is not an admin (`hitl.roles`).
    """
    require(actor, "train")
    paths = ProjectPaths(Path(project).resolve())
    cmd = list(command) if command is not None else train_command(paths.project, args)
    acquire_training_lock(paths, args=cmd)  # reserve under our pid before spawning
    try:
        paths.logs.mkdir(parents=True, exist_ok=True)
        log_path = paths.logs / f"train-{_now():%Y%m%dT%H%M%S%fZ}.log"
        with open(log_path, "ab") as log:
            # the page's first news, before the child has even imported its libraries
            log.write((phase_line(0, 0, STARTING) + "\n").encode())
            log.flush()
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=_REPO_ROOT,
                                     env={**os.environ, **child_env()},  # bars as log lines
                                     start_new_session=True)  # outlives an app restart
    except BaseException:
        release_training_lock(paths)
        raise
    _CHILDREN[child.pid] = child
    job = Job(child.pid, _now(), log_path, tuple(cmd), _process_start(child.pid))
    held = read_lock(paths)
    if held is not None and held.pid in (os.getpid(), child.pid):  # the child may have it already
        _write_lock(lock_path(paths), job)
    return job


def stop_training(job: Job, *, actor: User | None = None) -> bool:
    """Ask a running round to stop (SIGTERM to its process group); True if signalled.

    Only a process this app started, or an ``artminer train`` process with the recorded
    start time, is signalled: a hand-written lock naming another pid signals nothing.

    Raises:
        Forbidden: ``actor`` is not an admin (`hitl.roles`).
    """
    require(actor, "stop_training")
    if not (_alive(job) and _is_training_process(job)):
        return False
    os.killpg(job.pid, signal.SIGTERM)
    return True


def tail_log(job: Job | Path | None, n: int = 40) -> str:
    """The last ``n`` lines of a job's log ('' if there is none yet)."""
    path = job.log_path if isinstance(job, Job) else job
    if path is None or not Path(path).is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        start = max(0, f.tell() - 200 * max(n, 1))  # enough bytes for n typical lines
        f.seek(start)
        lines = f.read().decode("utf-8", errors="replace").rstrip("\n").split("\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut
    # a progress bar rewrites its line with '\r': show only its latest state
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines[-n:])


def latest_log(paths: ProjectPaths) -> Path | None:
    """The newest training log of the project, finished or not."""
    logs = sorted(p for p in paths.logs.glob("train-*.log")  # a planted link shows nothing
                  if not p.is_symlink()) if paths.logs.is_dir() else []
    return logs[-1] if logs else None


# ---------------------------------------------------------------------- helpers


def _alive(job: Job) -> bool:
    child = _CHILDREN.get(job.pid)
    if child is not None and child.poll() is not None:  # reaps our own finished child
        del _CHILDREN[job.pid]
        return False
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    start = _process_start(job.pid)
    if start == "zombie":
        return False
    return job.proc_start is None or start is None or start == job.proc_start


def _is_training_process(job: Job) -> bool:
    """Started by this process, or running ``artminer train`` / ``hitl.cli train``."""
    if job.pid in _CHILDREN:
        return True
    if job.proc_start is None or _process_start(job.pid) != job.proc_start:
        return False  # no start time to vouch for the pid
    try:
        argv = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    launcher = any(a == "hitl.cli" or Path(a).name == "artminer" for a in argv)
    return launcher and "train" in argv


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), "zombie", or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces
    return "zombie" if fields[0] == "Z" else fields[19]


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return datetime.now().timestamp() - path.stat().st_mtime < seconds
    except OSError:
        return False


def _write_lock(path: Path, job: Job) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(_encode(job))
    os.replace(tmp, path)  # atomic: readers never see half a file


def _encode(job: Job) -> str:
    return json.dumps({"pid": job.pid, "started": job.started.isoformat(),
                       "log": str(job.log_path) if job.log_path else None,
                       "args": list(job.args), "proc_start": job.proc_start})


def _now() -> datetime:
    return datetime.now(UTC)
