"""The versions of one model a worker serves, and how they change without a restart.

A version is *serving* (new work may go to it), *draining* (unloaded: no new work,
but entries that asked for it exactly still run on it), or gone. A draining version
is dropped once no unfinished entry is pinned to it. Entries that asked for no
version run on the newest serving one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from batching.model_config import TensorSpec
from worker.generation.runtime import GenerationRuntime
from worker.repository import ModelFiles, load_model_files
from worker.runtime import ModelRuntime

log = logging.getLogger(__name__)

Runtime = ModelRuntime | GenerationRuntime


def open_runtime(files: ModelFiles, version: int) -> Runtime:
    """What a version of ``files`` runs on: a classifier's session, or generation's two."""
    if files.config.generation is not None:
        return GenerationRuntime(files, version)
    return ModelRuntime(files, version)


class ModelVersions:
    def __init__(
        self, files: ModelFiles, load: Callable[[ModelFiles, int], Runtime] = open_runtime
    ):
        self.files = files
        self._load = load
        self._serving: dict[int, Runtime] = {}
        self._draining: dict[int, Runtime] = {}
        self._lock = threading.Lock()
        self.signature: tuple[list[TensorSpec], list[TensorSpec]] | None = None
        """Inputs and outputs of the last version loaded: still published once none is."""

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def serving(self) -> list[int]:
        with self._lock:
            return sorted(self._serving)

    @property
    def draining(self) -> list[int]:
        with self._lock:
            return sorted(self._draining)

    def newest(self) -> Runtime | None:
        with self._lock:
            return self._serving[max(self._serving)] if self._serving else None

    def runtime_for(self, version: int) -> Runtime | None:
        """The runtime an entry runs on: its exact version, else the newest serving one."""
        with self._lock:
            if version:
                return self._serving.get(version) or self._draining.get(version)
            return self._serving[max(self._serving)] if self._serving else None

    def policy_target(self) -> list[int]:
        """Re-read the model's directory and config; the versions its policy selects."""
        self.files = load_model_files(self.files.directory)
        return self.files.config.version_policy.select(list(self.files.versions))

    def apply(self, target: list[int]) -> bool:
        """Serve exactly ``target``: load what is missing, put the rest to draining."""
        missing = [v for v in target if v not in self._serving]
        loaded = {}
        for v in missing:  # sessions load outside the lock: batches keep running meanwhile
            loaded[v] = self._draining.get(v) or self._load(self.files, v)
            self.signature = (loaded[v].inputs, loaded[v].outputs)
        with self._lock:
            before = set(self._serving)
            for v in missing:
                self._draining.pop(v, None)
                self._serving[v] = loaded[v]
            for v in [v for v in self._serving if v not in target]:
                self._draining[v] = self._serving.pop(v)
            changed = set(self._serving) != before
        if changed:
            log.info("%s: serving versions %s, draining %s", self.name, self.serving, self.draining)
        return changed

    def drop_drained(self, pinned: Callable[[int], int]) -> list[int]:
        """Drop draining versions that no unfinished entry asks for any more."""
        with self._lock:
            done = [v for v in self._draining if pinned(v) <= 0]
            for v in done:
                del self._draining[v]
        for v in done:
            log.info("%s: version %d drained and dropped", self.name, v)
        return done
