"""Run a BentoML server as a subprocess on a free port: for end-to-end tests and the benchmark.

The tests (``tests/serving_fixtures.py``, ``tests/test_serving_swap.py``) and ``benchmarks.serving``
start servers the same way, through this module.

A server runs in a session of its own, and ``Server.stop`` signals its whole process group. That
does not reach BentoML's workers: the arbiter starts each in a session of its own (circus calls
``setsid``), and once the arbiter is gone they are no longer its children. So the server remembers
its descendants while it can see them, and ``stop`` kills any that outlived it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: ``bentoml serve`` imports targets from it


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recsys_serve_command(*, port: int, options: Sequence[str] = ()) -> list[str]:
    """``recsys serve --host 127.0.0.1 --port PORT ...`` run with this interpreter."""
    return [
        sys.executable, "-c", "from recsys.cli import main; main()",
        "serve", "--host", "127.0.0.1", "--port", str(port), *options,
    ]  # fmt: skip


def bentoml_serve_command(target: str, *, port: int) -> list[str]:
    """``bentoml serve TARGET`` (e.g. ``benchmarks.harness.echo:Echo``) on 127.0.0.1:PORT."""
    return [
        sys.executable, "-m", "bentoml", "serve", target,
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT),
    ]  # fmt: skip


def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


@dataclass
class Server:
    """A server process group started by ``running``."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    descendants: list[Any] = field(default_factory=list)  # psutil.Process: the workers seen so far

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, path: str, status: int = 200, *, timeout: float = 120.0) -> None:
        """Wait until ``GET path`` answers ``status``; fail with the server log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if http_status(self.url + path) == status:
                self.remember_descendants()
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.url}{path} did not answer {status} in {timeout} s:\n{self.log()[-4000:]}")

    def rss_bytes(self) -> int:
        """Resident memory of the server: its process and every child (BentoML's workers)."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_info().rss)
        return total

    def remember_descendants(self) -> None:
        """Note the processes the server started (BentoML's workers, respawned ones included)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                if child not in self.descendants:  # psutil compares pid and start time
                    self.descendants.append(child)

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM the server's group (the arbiter stops its workers), SIGKILL it after ``timeout``,
        then kill every remembered descendant that is still running."""
        import psutil

        if self.process.poll() is None:
            self.remember_descendants()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        left = [p for p in self.descendants if _running(p)]
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs([p for p in left if _running(p)], timeout=timeout)


def _running(proc: Any) -> bool:
    """``proc`` (a ``psutil.Process``) still runs: not exited, not a zombie, its pid not reused since."""
    import psutil

    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    ready_path: str | None = "/readyz",
    timeout: float = 180.0,
    log_dir: Path | None = None,
) -> Iterator[Server]:
    """Start ``command`` (a server on ``port``) in its own process group; stop the group on exit.

    Waits until ``ready_path`` answers 200 (``None``: do not wait).
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="recsys-server-"))
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        if ready_path is not None:
            server.wait_until(ready_path, timeout=timeout)
        yield server
    finally:
        server.stop()
