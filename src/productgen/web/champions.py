"""The champions the page serves: found in the MLflow registry, loaded once, kept warm, reloaded when an alias
moves.

Why not load ``models:/<name>@champion`` per request: loading downloads artifacts and builds networks (hundreds
of ms to seconds); the page must answer in milliseconds. Why not load once at start: a promotion (or rollback)
must reach the page without a restart. So the alias is re-read at most every ``web.alias_check_seconds``;
when it names another version, that version (``models:/<name>/<version>``, immutable) is downloaded into this
server's cache folder and loaded, and the old one is dropped.

Discovery is generic: every registered model with a ``champion`` alias is served; its task comes from the
version's ``task`` tag (set at registration) or the ``productgen-<task>`` name, its family from
:data:`productgen.tasks.TASKS`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productgen.common.errors import UserError

if TYPE_CHECKING:
    from productgen.tasks import TaskSpec

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Champion:
    """A loaded champion: ``model`` is ``(generator, config)`` for generation, a predictor for image models."""

    name: str
    task: str
    family: str
    version: str
    folder: Path
    config: dict[str, Any]
    model: Any
    loaded_at: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes", []))

    @property
    def spec(self) -> TaskSpec:
        """The task's :class:`~productgen.tasks.TaskSpec` (what the pages ask instead of comparing names)."""
        from productgen.tasks import TASKS

        return TASKS[self.task]

    @property
    def view(self) -> str | None:
        """The degradation view an image -> image model was trained on (noise25, blur, jpeg, sr2, ...)."""
        return getattr(self.model, "view", None) if self.spec.maps_images else None


def task_of(name: str, version_tags: dict[str, str]) -> str | None:
    from productgen.tasks import TASKS

    task = version_tags.get("task")
    if task in TASKS:
        return task
    if name.startswith("productgen-") and name[len("productgen-") :] in TASKS:
        return name[len("productgen-") :]
    return None


def client() -> Any:
    import mlflow
    from mlflow import MlflowClient

    from productgen.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def alias_version(c: Any, name: str, alias: str) -> str | None:
    from productgen.registry.promotion import alias_version as registry_alias_version

    return registry_alias_version(c, name, alias)


class Champions:
    """Thread-safe cache of loaded champions, keyed by registered model name."""

    def __init__(self, cache_dir: Path, check_seconds: float, device: str = "cpu") -> None:
        self.cache_dir = cache_dir
        self.check_seconds = check_seconds
        self.device = device
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, Champion] = {}
        self._versions: dict[str, Champion] = {}  # "name/version" -> a version loaded for review
        self._index: dict[str, tuple[str, str]] = {}  # name -> (task, champion version)
        self._index_at = 0.0

    # -- discovery -------------------------------------------------------------------------------------------
    def index(self, refresh: bool = False) -> dict[str, tuple[str, str]]:
        """Registered name -> (task, champion version) for every model with a champion; re-read when stale."""
        with self._lock:
            if not refresh and time.monotonic() - self._index_at < self.check_seconds:
                return dict(self._index)
        found: dict[str, tuple[str, str]] = {}
        c = client()
        for rm in c.search_registered_models(max_results=1000):
            version = (rm.aliases or {}).get(CHAMPION)
            if version is None:
                continue
            tags = c.get_model_version(rm.name, str(version)).tags
            task = task_of(rm.name, tags)
            if task is not None:
                found[rm.name] = (task, str(version))
        with self._lock:
            self._index, self._index_at = found, time.monotonic()
            for name in list(self._loaded):
                if name not in found:  # alias removed or model deleted: stop serving it
                    del self._loaded[name]
            return dict(found)

    def names(self, page: str | None = None, task: str | None = None) -> list[str]:
        """Registered names with a champion, of ``task`` and / or of the tasks ``page`` offers."""
        from productgen.tasks import on_page

        offered = None if page is None else {t.name for t in on_page(page)}
        out = []
        for name, (t, _) in sorted(self.index().items()):
            if (task is None or t == task) and (offered is None or t in offered):
                out.append(name)
        return out

    # -- loading ---------------------------------------------------------------------------------------------
    def get(self, name: str) -> Champion | None:
        """The loaded champion of ``name`` (loading or reloading it if the alias moved); None without one."""
        entry = self.index().get(name)
        if entry is None:
            return None
        task, version = entry
        with self._lock:
            current = self._loaded.get(name)
            if current is not None and current.version == version:
                return current
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # one load per model at a time; other requests for it wait here instead of loading too
            with self._lock:
                current = self._loaded.get(name)
                if current is not None and current.version == version:
                    return current
            champ = self._load(name, task, version)
            with self._lock:
                self._loaded[name] = champ
            return champ

    def version(self, name: str, task: str, version: str) -> Champion:
        """Any version of ``name`` loaded (a waiting challenger under review); the last few are kept."""
        key = f"{name}/{version}"
        with self._lock:
            current = self._loaded.get(name)
            if current is not None and current.version == version:
                return current
            if key in self._versions:
                return self._versions[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._versions:
                    return self._versions[key]
            champ = self._load(name, task, version)
            with self._lock:
                self._versions[key] = champ
                while len(self._versions) > 4:
                    self._versions.pop(next(iter(self._versions)))
            return champ

    def loaded(self) -> list[Champion]:
        with self._lock:
            return list(self._loaded.values())

    def warm(self) -> None:
        """Load every champion now, so no visitor waits for a load."""
        for name in self.index(refresh=True):
            try:
                self.get(name)
            except Exception:  # a broken version must not stop the others; its page shows the error
                import logging

                logging.getLogger("productgen.web").exception("could not load the champion of %s", name)

    def keep_warm(self, stop: threading.Event) -> None:
        """Background loop of the server: re-read the aliases every ``check_seconds`` and load what moved, so a
        promotion (from the page, the CLI or the retrain flow) is loaded before the next visitor asks for it."""
        import logging

        while not stop.is_set():
            try:
                self.warm()
            except Exception:  # the store may be briefly unreachable (team server restart): try again later
                logging.getLogger("productgen.web").warning("could not read the registry; retrying", exc_info=True)
            stop.wait(max(self.check_seconds, 0.5))

    def _load(self, name: str, task: str, version: str) -> Champion:
        from productgen.models.io import read_config
        from productgen.tasks import TASKS
        from productgen.tracking.runs import model_dir_from_uri

        folder = model_dir_from_uri(f"models:/{name}/{version}", self.cache_dir / _safe(name) / version)
        spec = TASKS[task]
        config = read_config(folder)
        model: Any
        if spec.generates:
            from productgen.models.io import load_generator

            model = load_generator(folder, self.device)
        else:
            from productgen.models.predict import load_predictor

            model = load_predictor(folder, self.device)
        return Champion(name, task, spec.family, version, folder, config, model)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def no_champion_message(task: str) -> str:
    """What a page says instead of failing when a task has no champion: the command that trains one."""
    from productgen.tasks import TASKS

    spec = TASKS.get(task)
    profile = spec.flow_profile if spec is not None else "quick-cpu"
    default = spec is not None and spec.default
    flag = "" if default else f"--task {task} "
    return (
        f"No {task} champion in the registry yet. Train, evaluate, register and promote one with: "
        f"python flows/retrain.py {flag}--profile {profile}" + ("   (or: make run)" if default else "")
    )


def require(champion: Champion | None, task: str) -> Champion:
    if champion is None:
        raise UserError(no_champion_message(task))
    return champion
