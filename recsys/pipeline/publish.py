"""Publishing a bundle, and rolling back: the model and its online features switch in one step.

The service serves one bundle and reads the online store's version named after it
(``feature_store.online``), so moving the registry's *current* pointer switches model and features
together. A publish, inside ``registry.publishing()`` (one at a time; what a killed publish left is
removed first):

1. drops the online versions that no kept bundle names (``registry.kept``: the current one and the
   one a rollback returns to), and what an unfinished load left;
2. copies the bundle into the BentoML model store, not current;
3. loads its feature snapshot into the online store under the bundle's version: readers of the
   served version see no change, and from the end of the load every event reaches both versions;
4. moves the pointer (``registry.set_current``): the switch;
5. tidies again: the version now two publishes old is dropped, and the event log is pruned through
   the new snapshot's ``events_through`` (the events its training data contains).

A failure or a kill before step 4 leaves the previous model and its features serving; from step 4
on, the new ones. A failure removes the new model from the model store and its features from the
online store at once; a kill leaves them to the next publish. ``rollback`` loads the features of the
version it returns to when they were dropped (so only a rollback past ``ROLLBACK_DEPTH`` takes a
load), then moves the pointer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.pipeline import registry

if TYPE_CHECKING:
    from feature_store.online import OnlineStore

logger = logging.getLogger("recsys.publish")
FEATURES = "features"  # the bundle's feature snapshot folder (recsys.pipeline.train)


class PublishError(RuntimeError):
    """A publish or rollback failed; the message says which step, why, and what is still served."""


@contextlib.contextmanager
def _opened(store_url: str | None) -> Iterator[OnlineStore]:
    from feature_store.online import open_store

    store = open_store(store_url or registry.default_online_store_url())
    try:
        yield store
    finally:
        store.close()


def _serving() -> str:
    try:
        return f"{registry.current().tag} is still current"
    except Exception:  # only a message: it must never hide the error being reported
        return "nothing is published yet"


def tidy(store: OnlineStore) -> list[str]:
    """Drop the online versions no kept bundle names, and prune the event log through the current
    snapshot's ``events_through``. Returns the dropped versions."""
    from feature_store.offline import Snapshot

    kept = registry.kept()
    dropped = store.retain([v.version for v in kept])
    if kept:
        through = Snapshot.open(kept[0].path / FEATURES).events_through
        if through is not None:
            store.prune_events(through=through)
    if dropped:
        logger.info("dropped the online features of %s", ", ".join(dropped))
    return dropped


def publish_bundle(bundle: Path, *, store_url: str | None = None) -> registry.ModelVersion:
    """Publish ``bundle``: its features into the online store (``store_url``, default
    ``registry.default_online_store_url()``), then make it current. Raises ``PublishError``."""
    from feature_store.offline import Snapshot

    step = "opening the online store"
    try:
        with registry.publishing(), _opened(store_url) as store:
            step = "dropping unused online versions"
            tidy(store)
            try:
                step = "copying the bundle into the model store"
                published = registry.publish(bundle)
                step = "loading its features into the online store"
                store.load(Snapshot.open(published.path / FEATURES), name=published.version)
                step = "moving the current pointer"
                registry.set_current(published.tag)
            except BaseException:
                _undo(store)
                raise
            step = "tidying up after the switch"
            registry.tidy()
            tidy(store)
    except Exception as exc:
        raise PublishError(f"publishing {bundle} failed while {step}: {exc}; {_serving()}") from exc
    return published


def _undo(store: OnlineStore) -> None:
    """After a failure before the switch: remove the new model and its features now, best effort
    (whatever fails here, the next publish removes; the original error is the one to report)."""
    try:
        registry.tidy()
        tidy(store)
    except Exception as exc:  # reported, and repeated by the next publish
        logger.warning("could not clean up after the failed publish (the next one will): %s", exc)


def rollback(*, store_url: str | None = None) -> tuple[registry.ModelVersion, registry.ModelVersion]:
    """Make the previous version current again, with its features; returns (was, now).

    Its online version is normally still live (``registry.ROLLBACK_DEPTH``); otherwise its snapshot
    is loaded again first, which replays the event log above its ``events_through`` (refused, with a
    ``StaleSnapshot`` reason, when the log was pruned past it). Raises ``registry.RegistryError``
    when there is nothing to roll back to, ``PublishError`` when loading fails.
    """
    with registry.publishing(), _opened(store_url) as store:
        before = registry.current()
        target = registry.previous()
        _with_features(store, target, before, action="roll back")
        return before, registry.rollback()


def switch(tag: str, *, store_url: str | None = None) -> tuple[registry.ModelVersion, registry.ModelVersion]:
    """Make the published version ``tag`` current, with its features; returns (was, now).

    As ``rollback``, but to any version in the model store (the service's ``POST /admin/switch``):
    its features are loaded again first unless the online store still holds them. The version left
    becomes the one a rollback returns to. Raises ``registry.RegistryError`` for an unknown tag,
    ``PublishError`` when loading fails.
    """
    with registry.publishing(), _opened(store_url) as store:
        before = registry.current()
        target = registry.get(tag)
        _with_features(store, target, before, action="switch")
        registry.set_current(target.tag)
        return before, target


def _with_features(
    store: OnlineStore, target: registry.ModelVersion, before: registry.ModelVersion, *, action: str
) -> None:
    """Load ``target``'s feature snapshot into ``store`` unless it holds them (call it publishing)."""
    from feature_store.offline import Snapshot

    if target.version in store.versions():
        return
    try:
        store.load(Snapshot.open(target.path / FEATURES), name=target.version)
    except Exception as exc:
        raise PublishError(
            f"cannot {action} to {target.tag}: loading its features failed: {exc}; "
            f"{before.tag} is still current"
        ) from exc
