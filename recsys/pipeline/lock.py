"""One nightly run at a time: a lock file holding the PID, and the kill points the crash tests name.

``RunLock`` holds ``flock`` on the lock file for the whole run, so the kernel releases it when the
holder dies, even by SIGKILL, and writes the holder's PID (and its start time, to tell a reused PID
from the holder) into the file. A second run finds the lock taken and raises ``LockHeld`` naming the
PID and the file. A lock file whose process is gone is stale and is taken over, quietly and safely:
two runs that race for a stale lock still meet at the ``flock``, and only one wins. A file that names a
live process is respected even without the ``flock`` (written by hand, or by a holder on another
kernel's view of a shared disk), unless that PID now belongs to a younger process.

``die_at`` is the job's crash switch: ``RECSYS_RETRAIN_DIE_AT=<stage>`` makes the run SIGKILL itself
when it reaches that stage, so the kill tests are deterministic rather than timed by sleeps.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "retrain.lock"
>>> with RunLock(path) as lock:
...     int(path.read_text().split()[0]) == os.getpid()
True
>>> path.exists()
False
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path
from types import TracebackType

DIE_AT_ENV = "RECSYS_RETRAIN_DIE_AT"
_PROC = Path("/proc")


def die_at(stage: str) -> None:
    """SIGKILL this process if ``$RECSYS_RETRAIN_DIE_AT`` names ``stage``: a crash point for the tests.

    Nothing is flushed or cleaned up, exactly as when the OOM killer or a scheduler's timeout strikes.
    """
    if os.environ.get(DIE_AT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


class LockHeld(RuntimeError):
    """Another run holds the lock; the message names its PID and the lock file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        who = f"PID {pid}" if pid is not None else "a process that has not written its PID yet"
        super().__init__(
            f"another retrain run is in progress ({who}, lock file {path}); "
            "wait for it to finish, or delete the lock file if that process is not a retrain run"
        )


def _start_token(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later process given the same PID: the boot and the
    start time in clock ticks since boot (Linux ``/proc``); ``None`` where there is no ``/proc``."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields from its closing ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{boot}:{fields[19]}"  # field 22, starttime


def _alive(pid: int, token: str | None) -> bool:
    """Whether the process that wrote ``pid`` (and ``token``) still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    with contextlib.suppress(OSError, IndexError):
        if (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # killed, waiting only to be reaped
    current = _start_token(pid)
    return token is None or current is None or current == token


def _holder(text: str) -> tuple[int | None, str | None]:
    """(PID, start token) from a lock file's text: the PID on the first line, the token on the second."""
    lines = text.split()
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None, None
    return pid, (lines[1] if len(lines) > 1 else None)


class RunLock:
    """Context manager holding ``path`` for one run; see the module docstring.

    ``taken_over`` is the PID of a dead holder whose stale lock this run took over, for the log.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.taken_over: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise ``LockHeld``."""
        if self._fd is not None:
            raise LockHeld(self.path, os.getpid())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self.path, _holder(self._read())[0]) from None
            if self._same_file(fd):
                break
            os.close(fd)  # the holder released (and removed) the file between our open and flock
        pid, token = _holder(self._read())
        if pid is not None and pid != os.getpid() and _alive(pid, token):
            os.close(fd)
            raise LockHeld(self.path, pid)
        self.taken_over = pid
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{_start_token(os.getpid()) or ''}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then let go of the ``flock`` (in that order, so no one else's lock
        file is ever removed)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def _read(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False
