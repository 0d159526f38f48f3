"""The run lock (recsys.pipeline.lock): a live holder is refused with its PID and the lock file named,
a stale lock from a dead process is taken over, and ``die_at`` kills exactly at the named stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.pipeline.lock import DIE_AT_ENV, LockHeld, RunLock

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys
from recsys.pipeline.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``tmp_path/retrain.lock``."""
    process = python(HOLD, str(tmp_path / "retrain.lock"))
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = python("pass")
    process.communicate()
    return process.pid


def test_a_second_live_run_is_refused_naming_the_pid_and_the_file(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / "retrain.lock"
    with pytest.raises(LockHeld, match=f"PID {holder.pid}") as refused:
        RunLock(path).acquire()
    assert str(path) in str(refused.value) and refused.value.pid == holder.pid
    assert int(path.read_text().split()[0]) == holder.pid  # the holder's lock is untouched
    assert holder.stdin is not None
    holder.stdin.close()  # the holder finishes and removes its lock
    assert holder.wait(timeout=30) == 0
    assert not path.exists()
    with RunLock(path) as lock:
        assert lock.taken_over is None


def test_the_same_process_cannot_hold_it_twice(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    with RunLock(path), pytest.raises(LockHeld, match=str(os.getpid())):
        RunLock(path).acquire()
    assert not path.exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    path = tmp_path / "retrain.lock"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert int(path.read_text().split()[0]) == holder.pid  # SIGKILL left the file behind
    with RunLock(path) as lock:
        assert lock.taken_over == holder.pid
        assert int(path.read_text().split()[0]) == os.getpid()


@pytest.mark.parametrize("content", ["{dead}\n", "", "garbage\n", "{live}\nanother-boot:1\n"])
def test_stale_lock_files_are_taken_over(tmp_path: Path, content: str) -> None:
    """A dead PID, an empty or unreadable file, and a live PID that belongs to a younger process than
    the one that wrote the lock (the PID was reused)."""
    path = tmp_path / "retrain.lock"
    path.write_text(content.format(dead=dead_pid(), live=os.getppid()))
    with RunLock(path):
        assert int(path.read_text().split()[0]) == os.getpid()


def test_a_lock_file_naming_a_live_process_is_respected(tmp_path: Path) -> None:
    """Written by hand, or by a holder whose ``flock`` this kernel does not see (a shared disk)."""
    path = tmp_path / "retrain.lock"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(LockHeld, match=f"PID {os.getppid()}"):
        RunLock(path).acquire()


@pytest.mark.parametrize("stage", ["ingest-after-write", None])
def test_die_at_kills_at_the_named_stage_only(stage: str | None) -> None:
    code = "from recsys.pipeline.lock import die_at\ndie_at('ingest-after-write')\nprint('survived')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(DIE_AT_ENV, None)
    if stage:
        env[DIE_AT_ENV] = stage
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == ((-signal.SIGKILL, "") if stage else (0, "survived\n"))
