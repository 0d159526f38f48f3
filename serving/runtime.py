"""What the service holds at run time: its settings, and the current model with atomic hot swap.

The service answers every request from one ``Loaded`` snapshot, read once at the start of the
request, so a response is always tagged with the version that produced it. A swap builds the new
``Loaded`` completely (the bundle is loaded before anything changes) and then replaces one reference,
which is atomic in Python; requests in flight keep the old model until they finish. Nothing waits
for a lock on the request path.

Each bundle is served with its own features: the online store's version named after the bundle
(``Loaded.version``), which ``recsys.pipeline.publish`` loads before it moves the pointer, so
following the pointer switches model and features together. A version whose features the store
does not hold is never swapped in.

The holder follows the registry's *current* pointer (``recsys.pipeline.registry``): a daemon thread
checks ``current_marker()`` (one ``stat``) every ``poll_seconds`` and loads the new current version
when it changes, so ``recsys train`` publishing a version or ``recsys models rollback`` is followed
within about a second, with no restart and no dropped request. A pinned tag is never swapped.
A version that fails to load or to answer a smoke test is not swapped in: the service keeps the
model it has (or stays not ready) and logs why.

Each worker dies with its parent (``die_with_parent``): BentoML's arbiter starts the workers in
sessions of their own, so nothing else would stop them when the arbiter is killed.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.pipeline import registry

if TYPE_CHECKING:
    from feature_store.online import OnlineStore
    from recsys.pipeline.recommender import Recommender

logger = logging.getLogger("recsys.serving")

ENV_MODEL_TAG = "RECSYS_MODEL_TAG"
ENV_STORE_URL = registry.ENV_STORE_URL
ENV_ADMIN_TOKEN = "RECSYS_ADMIN_TOKEN"
ENV_POLL_SECONDS = "RECSYS_POLL_SECONDS"
ENV_WORKERS = "RECSYS_WORKERS"
ENV_THREADS = "RECSYS_THREADS"
ENV_EVENTS_TOKEN = "RECSYS_EVENTS_TOKEN"
ENV_EVENTS_MAX_SKEW = "RECSYS_EVENTS_MAX_SKEW_S"
ENV_COMPILE_RANKER = "RECSYS_COMPILE_RANKER"  # "1": compile each loaded bundle's ranker (lleaves)
ENV_SERVER_PID = "RECSYS_SERVER_PID"  # the arbiter's pid: ``recsys serve`` becomes the arbiter (execve)
DEFAULT_EVENTS_MAX_SKEW_S = 300.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_store_url() -> str:
    """The online store ``recsys train`` loads by default: SQLite in the BentoML home."""
    return registry.default_online_store_url()


@dataclass(frozen=True)
class Settings:
    """The service's configuration, read from the environment (``recsys serve`` sets it).

    >>> Settings.from_env({"RECSYS_MODEL_TAG": "recsys-bundle:v1", "RECSYS_POLL_SECONDS": "0"}).model_tag
    'recsys-bundle:v1'
    >>> Settings.from_env({"RECSYS_POLL_SECONDS": "soon"})
    Traceback (most recent call last):
    ...
    ValueError: RECSYS_POLL_SECONDS must be a number of seconds >= 0, got 'soon'
    """

    model_tag: str | None = None
    store_url: str | None = None
    admin_token: str | None = None
    events_token: str | None = None  # when set, POST /events needs it as a bearer token
    events_max_skew_s: float = DEFAULT_EVENTS_MAX_SKEW_S  # how far in the future an event may be
    poll_seconds: float = 1.0
    threads: int = 2  # batch/explain/similar requests scored at once per worker (events have their own)
    compile_ranker: bool = False  # compile each loaded bundle's ranker before serving it

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        raw_threads = env.get(ENV_THREADS, "2")
        if not raw_threads.isdigit() or int(raw_threads) < 1:
            raise ValueError(f"{ENV_THREADS} must be a whole number >= 1, got {raw_threads!r}")
        return cls(
            threads=int(raw_threads),
            model_tag=env.get(ENV_MODEL_TAG) or None,
            store_url=env.get(ENV_STORE_URL) or None,
            admin_token=env.get(ENV_ADMIN_TOKEN) or None,
            events_token=env.get(ENV_EVENTS_TOKEN) or None,
            events_max_skew_s=_seconds(env, ENV_EVENTS_MAX_SKEW, DEFAULT_EVENTS_MAX_SKEW_S),
            poll_seconds=_seconds(env, ENV_POLL_SECONDS, 1.0),
            compile_ranker=_flag(env, ENV_COMPILE_RANKER),
        )


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name) or "0"
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name) or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ValueError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


def die_with_parent(*, parent_pid: int | None = None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies; return whether it could (Linux only).

    BentoML's arbiter starts each worker in a session of its own (circus calls ``setsid``), so when
    the arbiter is killed (SIGKILL, the OOM killer) neither its death nor a kill of its process group
    reaches the workers: they would go on answering on the port, unsupervised, and a restart would
    find it taken. ``prctl(PR_SET_PDEATHSIG)`` makes the kernel send the signal instead. SIGKILL,
    not SIGTERM: a worker whose arbiter died uncleanly should not wait for requests in flight (an
    event is acknowledged only after its store write committed, so none acknowledged is lost).

    The setting belongs to the calling thread, and the signal comes when the thread that started
    this process exits (the arbiter's main thread): call it from the worker's main thread, which
    lives as long as the worker. A parent that died before the call is caught by comparing
    ``os.getppid()`` with ``parent_pid``. Elsewhere than on Linux nothing is set: a supervisor must
    stop the arbiter with SIGTERM or SIGINT (it then stops its workers), or kill its whole process tree.
    """
    if not sys.platform.startswith("linux"):
        return False
    if threading.current_thread() is not threading.main_thread():
        logger.warning("die_with_parent() called off the main thread: the worker would outlive it")
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        logger.error("the server process %d is gone before this worker started: exiting", parent_pid)
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def server_pid(env: dict[str, str] | None = None) -> int | None:
    """The arbiter's pid as ``recsys serve`` recorded it (``None`` under a plain ``bentoml serve``)."""
    raw = (os.environ if env is None else env).get(ENV_SERVER_PID, "")
    return int(raw) if raw.isdigit() else None


@dataclass(frozen=True)
class Loaded:
    """One loaded model version; never mutated, replaced whole on a swap. ``version`` also names the
    online store's version that holds its features."""

    recommender: Recommender
    tag: str
    version: str
    created_at: str
    metadata: dict[str, Any]
    loaded_at: str


def _load_bundle(path: Path, *, compile_ranker: bool = False) -> Recommender:
    from recsys.pipeline.recommender import Recommender

    return Recommender.load(path, compile_ranker=compile_ranker)


def bundle_loader(settings: Settings) -> Callable[[Path], Recommender]:
    """How the service turns a bundle into a recommender: ``Recommender.load``, compiling the
    ranker when ``settings.compile_ranker`` says so. It runs in the loader's thread, so the previous
    model keeps serving while a new one compiles."""
    return functools.partial(_load_bundle, compile_ranker=settings.compile_ranker)


def settle_heap() -> None:
    """Take every object alive now (the modules, the model just loaded) out of the garbage
    collector's sight, after one full collection (which frees the previous model's cycles, unless
    a request still holds it: then the next swap does).

    A full collection walks every tracked object with the GIL held. In the service, where one batch
    allocates tens of thousands of small objects, those collections stopped every thread, the
    event loop and ``/events`` included, for 0.2-0.25 s each (demo bundle, a 250-user batch at
    n=100). The model lives until the next swap, so the collector has nothing to find in it; this
    costs one such pause per swap instead.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def smoke_test(recommender: Recommender) -> None:
    """Answer one request of each kind before serving a model: a bundle that loads but cannot
    answer (e.g. written by an incompatible version) must never replace a working one. It also
    warms the caches, so the first real request after a swap is not slow."""
    popular = recommender.recommend([], n=3)
    if not popular:
        raise RuntimeError("the model recommends nothing to a new user")
    history = [r.item_id for r in popular]
    recommender.recommend(history[:2], n=3)
    recommender.similar_items(history[0], n=3)
    recommender.explain(history[:1], history[-1], top=1)


class ModelHolder:
    """The current model, loaded from the BentoML model store and swapped atomically.

    Parameters
    ----------
    pinned_tag
        Serve exactly this tag (``recsys-bundle:VERSION``) and never follow the current pointer.
    poll_seconds
        How often the background thread checks the registry pointer; 0 disables polling
        (then only ``refresh()``, e.g. ``POST /admin/reload``, swaps).
    load
        Turns a bundle directory into a recommender (``Recommender.load``).
    store
        The online store the service reads: a version is swapped in only if it holds its features.
    """

    def __init__(
        self,
        *,
        pinned_tag: str | None = None,
        poll_seconds: float = 1.0,
        load: Callable[[Path], Recommender] = _load_bundle,
        store: OnlineStore | None = None,
    ) -> None:
        self.pinned_tag = pinned_tag
        self.poll_seconds = poll_seconds
        self._load = load
        self._store = store
        self._current: Loaded | None = None
        self._marker: str | None = None
        self._refresh_lock = threading.Lock()  # one load at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def current(self) -> Loaded | None:
        """The model to answer with, or ``None`` until the first load succeeded."""
        return self._current

    def refresh(self) -> tuple[str | None, str, bool]:
        """Load the registry's current (or the pinned) version if it is not the one loaded.

        Returns ``(previous_tag, current_tag, swapped)``. Raises ``RegistryError`` when nothing is
        published; any load error leaves the previous model in place.
        """
        with self._refresh_lock:
            marker = registry.current_marker()
            version = registry.get(self.pinned_tag) if self.pinned_tag else registry.current()
            previous = self._current
            if previous is not None and previous.tag == version.tag:
                self._marker = marker
                return previous.tag, previous.tag, False
            self._check_features(version)
            recommender = self._load(version.path)
            smoke_test(recommender)
            self._current = Loaded(
                recommender=recommender,
                tag=version.tag,
                version=version.version,
                created_at=version.created_at,
                metadata=dict(getattr(recommender, "metadata", None) or version.metadata),
                loaded_at=datetime.now(UTC).isoformat(),
            )
            self._marker = marker
            self.last_error = None
            logger.info("serving model %s (was %s)", version.tag, previous.tag if previous else "nothing")
            previous_tag = previous.tag if previous else None
            del previous, recommender  # so that settle_heap can collect the old model's cycles
            settle_heap()
            return previous_tag, version.tag, True

    def _check_features(self, version: registry.ModelVersion) -> None:
        if self._store is None:
            return
        held = self._store.versions()
        if version.version not in held:
            raise RuntimeError(
                f"the online store {self._store.url} holds no features for {version.tag} (it holds "
                f"{', '.join(held) or 'none'}): publish a new version, or roll back to one it holds"
            )

    def _try_refresh(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # keep serving the previous model; report why on /readyz logs
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                logger.warning("model (re)load failed, keeping %s: %s", self._tag(), message)
            self.last_error = message

    def _tag(self) -> str:
        return self._current.tag if self._current else "nothing"

    def _run(self) -> None:
        self._try_refresh()
        interval = self.poll_seconds or 1.0
        while not self._stop.wait(interval):
            # Until something loads keep trying; afterwards only when the current pointer moved.
            follow = self.poll_seconds and not self.pinned_tag
            if self._current is None or (follow and registry.current_marker() != self._marker):
                self._try_refresh()

    def start(self) -> None:
        """Load in the background (so ``/livez`` answers at once) and then follow the pointer."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recsys-model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
