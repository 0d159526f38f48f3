"""``recsys serve`` as a process: its workers die with it whatever kills it, it binds loopback unless
told otherwise, and a bad ``--model`` is a one-line error.

BentoML's arbiter (the process ``recsys serve`` becomes) starts each worker in a session of its own
(circus calls ``setsid``), so neither a SIGKILL of the arbiter nor a kill of its process group reaches
the workers: without a parent-death signal they go on answering on the port, unsupervised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from serving_fixtures import recsys_server, run_cli, server_env, tiny_home

from benchmarks.harness.process import Server, bentoml_serve_command, free_port, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_home(tmp_path_factory.mktemp("serve-process-home"))


def refuses(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (the connection is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie has exited: only its exit status is left)."""
    out = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def wait_for(condition: Any, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


@contextlib.contextmanager
def workers_of(server: Server) -> Iterator[list[psutil.Process]]:
    """The server's worker processes; any still alive at the end are killed, so a failing test leaves
    no orphan listening on the machine."""
    workers = psutil.Process(server.process.pid).children(recursive=True)
    assert workers, "the server has no worker process"
    try:
        yield workers
    finally:
        for proc in alive(workers):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_sigkill_of_recsys_serve_takes_its_workers_with_it(home: Any) -> None:
    with recsys_server(home.path, home.store_url, "--workers", "2") as server, workers_of(server) as workers:
        port = port_of(server)
        assert len(workers) == 2
        os.kill(server.process.pid, signal.SIGKILL)  # the arbiter only: its workers are not in its group
        server.process.wait(10)
        assert wait_for(lambda: not alive(workers), timeout=5), (
            f"workers {[p.pid for p in alive(workers)]} outlived their killed parent"
        )
        assert wait_for(lambda: refuses(port), timeout=5), f"port {port} still answers"

    # the same port is free for the next server
    with running(
        [sys.executable, "-c", "from recsys.cli import main; main()", "serve", "--port", str(port)],
        port=port,
        env=server_env(home.path, home.store_url),
        log_dir=home.path,
    ) as again:
        assert (
            httpx.post(f"{again.url}/recommend", json={"user_id": "1", "n": 2}, timeout=30).status_code == 200
        )


def test_harness_stop_reaps_the_workers_of_a_killed_server(tmp_path: Path) -> None:
    """A server without the parent-death hook (the bare echo service): ``Server.stop`` alone must leave
    no worker behind, even once its parent is gone."""
    port = free_port()
    command = bentoml_serve_command("benchmarks.harness.echo:Echo", port=port)
    with (
        running(command, port=port, ready_path="/readyz", log_dir=tmp_path) as server,
        workers_of(server) as workers,
    ):
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        server.stop()
        assert not alive(workers), f"workers {[p.pid for p in alive(workers)]} outlived Server.stop()"
        # a killed process's listening socket closes as the kernel tears it down, not at once
        assert wait_for(lambda: refuses(port), timeout=5), f"port {port} still answers"


def test_recsys_serve_binds_loopback_unless_told(home: Any) -> None:
    port = free_port()
    command = [sys.executable, "-c", "from recsys.cli import main; main()", "serve", "--port", str(port)]
    with running(command, port=port, env=server_env(home.path, home.store_url), log_dir=home.path) as server:
        listening = {
            c.laddr.ip
            for c in psutil.Process(server.process.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}, listening


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("a:b:c", "--model"),  # malformed
        ("recsys-bundle:", "--model"),  # no version
        ("other-model:v1", "--model"),  # not a recsys bundle
        ("bad version", "--model"),
        ("no-such-version", "not found"),  # well formed, not published
    ],
)
def test_an_invalid_model_tag_is_one_line_and_exit_2(tmp_path: Path, tag: str, words: str) -> None:
    done = run_cli(tmp_path, "serve", "--model", tag)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
