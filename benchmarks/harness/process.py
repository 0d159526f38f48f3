"""Run a BentoML server as a subprocess on a free port: for end-to-end tests and the benchmark.

The tests (``tests/serving_fixtures.py``, ``tests/test_serving_swap.py``) and ``benchmarks.serving``
start servers the same way, through this module.
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
from dataclasses import dataclass
from pathlib import Path

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, path: str, status: int = 200, *, timeout: float = 120.0) -> None:
        """Wait until ``GET path`` answers ``status``; fail with the server log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if http_status(self.url + path) == status:
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

    def stop(self, *, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the group: BentoML's arbiter and its workers
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


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
