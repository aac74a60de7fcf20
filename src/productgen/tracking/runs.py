"""MLflow tracking for training and evaluation runs (the MLOps layer: the core never imports this).

Default store: an embedded SQLite file (``mlflow.db``) with artifacts in ``mlartifacts/`` beside it, so it
works offline with no server; ``MLFLOW_TRACKING_URI`` selects a tracking server instead. Every run carries
its lineage as tags: the prepared dataset's content hash, the DVC hashes of the raw data and of the prepared
output, and the git commit (with a flag when the work tree has uncommitted changes).

Tracking never holds training hostage (docs/reliability.md):

- At start, a tracking server is probed (``/health``, a few seconds): when nothing answers, :func:`run` stops in
  one line *before any work* (no half-tracked run, no lineage gap in the registry; ``--no-track`` is the explicit
  way to train without it), instead of MLflow's minutes of retries and a 156-line traceback.
- While a run is open, MLflow's HTTP retries are bounded (:data:`BOUNDED_HTTP`, unless set by the user), so no
  single call can hang for minutes.
- Per-step metrics go through :class:`RunLogger`: a bounded queue drained by a background thread, so a server
  that dies mid-run never blocks the training loop; failed batches are retried with backoff (a bounded number
  of times), and what could not be logged is counted and reported at the end (every value is in
  ``metrics.jsonl`` anyway).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from productgen.common.errors import UserError

DEFAULT_DB = "mlflow.db"
PIP_REQUIREMENTS = ["torch", "numpy", "pillow", "safetensors", "pandas", "mlflow", "productgen"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def _artifact_root(uri: str) -> str | None:
    """For a SQLite store, keep artifacts in ``mlartifacts/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None  # a server decides (``--artifacts-destination``)


class TrackingUnavailable(UserError):
    """The tracking store cannot be used at the start of a run: nothing was done (exit status 2)."""


class TrackingIncomplete(UserError):
    """The run's work is done and on disk, but the tracking server lost part of it (exit status 1)."""

    exit_code = 1


# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) let one call to a dead server take ~4 minutes.
BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PROBE_TIMEOUT_S = 4.0
PROBE_ATTEMPTS = 2


def display_uri(uri: str) -> str:
    """``uri`` without any user:password part (never printed)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def server_problem(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the tracking server at ``uri`` cannot be reached (None when it answers, or for a non-HTTP store).

    Any HTTP answer counts as reachable (a 401 of a server with auth too: MLflow then says what is wrong); only
    no answer at all (refused, unknown host, timed out) is a problem.
    """
    import ssl
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    url = display_uri(uri).rstrip("/") + "/health"
    try:
        # A fresh opener: the proxy settings of now (urlopen's global one keeps those of its first call).
        with urllib.request.build_opener().open(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLError):
            return None  # it answered; TLS settings are MLflow's to judge (MLFLOW_TRACKING_INSECURE_TLS ...)
        return reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    except TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except (OSError, ValueError) as err:
        return str(err) or type(err).__name__


def check_server(uri: str) -> None:
    """Raise :class:`TrackingUnavailable` (one line, within ~10 s) when a tracking server does not answer."""
    problem = None
    for attempt in range(PROBE_ATTEMPTS):
        problem = server_problem(uri)
        if problem is None:
            return
        if attempt + 1 < PROBE_ATTEMPTS:
            time.sleep(1.0)
    raise TrackingUnavailable(
        f"MLflow tracking server {display_uri(uri)} does not answer ({problem}); nothing was "
        "done: start it, point MLFLOW_TRACKING_URI at one that runs, or pass --no-track "
        "to train without tracking"
    )


@contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP retries bounded (:data:`BOUNDED_HTTP`) for the block; values the user set are kept."""
    added = {k: v for k, v in BOUNDED_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _first_line(err: BaseException) -> str:
    """A short reason: MLflow's connection errors are a few hundred characters of urllib3 repr."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("NewConnectionError", "connection refused"),
        ("Read timed out", "timed out"),
        ("ConnectTimeout", "timed out"),
        ("Name or service not known", "unknown host"),
        ("RemoteDisconnected", "connection dropped"),
        ("Connection aborted", "connection dropped"),
        ("Connection reset", "connection dropped"),
    ):
        if needle in text:
            return short
    return text[:200]


def configure(experiment: str) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; return the experiment id.

    A tracking server that does not answer is a one-line :class:`TrackingUnavailable` within seconds.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with bounded_http():
            found = mlflow.get_experiment_by_name(experiment)
            if found is not None:
                exp_id = found.experiment_id
            else:
                root = _artifact_root(uri)
                exp_id = mlflow.create_experiment(
                    experiment, artifact_location=f"{root}/{experiment}" if root else None
                )
            mlflow.set_experiment(experiment_id=exp_id)
    except UserError:
        raise
    except Exception as err:  # MlflowException, requests errors: the store answered but cannot be used
        raise TrackingUnavailable(
            f"MLflow tracking store {display_uri(uri)}: {_first_line(err)}; nothing was done "
            "(fix the store, or pass --no-track)"
        ) from None
    return exp_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _dvc_hashes(prepared: Path) -> dict[str, str]:
    """md5s DVC recorded for the raw data (data.dvc) and for the prepared output (dvc.lock), where present."""
    tags: dict[str, str] = {}
    try:
        data_dvc = yaml.safe_load(Path("data.dvc").read_text())
        tags["dvc.data_md5"] = str(data_dvc["outs"][0]["md5"])
    except (OSError, KeyError, TypeError, IndexError, yaml.YAMLError):
        pass
    try:
        lock = yaml.safe_load(Path("dvc.lock").read_text())
        target = os.path.normpath(str(prepared))
        for stage in (lock or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                if os.path.normpath(out.get("path", "")) == target:
                    tags["dvc.prepared_md5"] = str(out["md5"])
    except (OSError, AttributeError, TypeError, yaml.YAMLError):
        pass
    return tags


def lineage(dataset_root: Path, content_hash: str) -> dict[str, str]:
    tags = {"dataset.path": str(dataset_root), "dataset.content_hash": content_hash}
    commit = _git("rev-parse", "HEAD")
    tags["git.commit"] = commit or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags["git.dirty"] = "unknown" if status is None else str(bool(status)).lower()
    tags.update(_dvc_hashes(dataset_root))
    return tags


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.0002", ...}`` for ``log_params``."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        text = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
        out[prefix[:-1]] = text[:500]
    return out


class RunLogger:
    """The run's per-step metrics, logged from a background thread; ``log_step`` is the engine's ``on_log``.

    ``log_step`` only appends to a bounded queue (``max_pending`` values; the oldest are dropped and counted
    when it is full), so the training loop never waits for the server. The thread sends batches of up to 1000
    values; a failed batch is retried with backoff, ``attempts`` times at most, then dropped and counted.
    :meth:`close` waits a bounded time for the queue to drain and returns what could not be logged.
    """

    BATCH = 1000

    def __init__(self, run_id: str, max_pending: int = 100_000, attempts: int = 6, backoff_s: float = 0.5) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.uri = tracking_uri()
        self._client = MlflowClient(self.uri)
        self._pending: collections.deque[Any] = collections.deque()
        self._max, self._attempts, self._backoff = max_pending, attempts, backoff_s
        self._cv = threading.Condition()
        self._closing = False
        self._closed = threading.Event()  # backoff sleeps end early only when the run closes
        self._in_flight = 0
        self.lost = 0  # values dropped (queue full or retries exhausted)
        self.failures = 0  # failed requests
        self.down_since: int | None = None  # step of the first value the server refused while it is down
        self.outage_steps: tuple[int, int] | None = None  # first and last step of values that failed at least once
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._work, name="productgen-mlflow-metrics", daemon=True)
        self._thread.start()

    @property
    def down(self) -> bool:
        """Whether the last request failed (the server has not answered since)."""
        return self.down_since is not None

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        with self._cv:
            for k, v in metrics.items():
                self._pending.append(Metric(k, float(v), ts, int(step)))
            while len(self._pending) > self._max:
                self._pending.popleft()
                self.lost += 1
            self._cv.notify()

    def _work(self) -> None:
        with bounded_http():
            tries = 0
            while True:
                with self._cv:
                    while not self._pending and not self._closing:
                        self._cv.wait()
                    if not self._pending:
                        return
                    # taken out of the queue while in flight, so an overflow only ever drops values not yet sent
                    batch = [self._pending.popleft() for _ in range(min(self.BATCH, len(self._pending)))]
                    self._in_flight = len(batch)
                try:
                    self._client.log_batch(self.run_id, metrics=batch)
                except Exception as err:  # noqa: BLE001 - any failure of the store: retry, then count
                    tries += 1
                    with self._cv:
                        self._in_flight = 0
                        self.failures += 1
                        self.last_error = _first_line(err)
                        if self.down_since is None:
                            self.down_since = batch[0].step
                        lo, hi = self.outage_steps or (batch[0].step, batch[-1].step)
                        self.outage_steps = (min(lo, batch[0].step), max(hi, batch[-1].step))
                        if tries >= self._attempts:  # bounded: give this batch up
                            self.lost += len(batch)
                            tries = 0
                        else:  # back to the front, oldest first; the queue bound still holds
                            self._pending.extendleft(reversed(batch))
                            while len(self._pending) > self._max:
                                self._pending.popleft()
                                self.lost += 1
                        if self._closing:
                            return  # the run is over and the server is down: stop at once
                    self._closed.wait(timeout=min(self._backoff * 2 ** max(tries - 1, 0), 10.0))
                    continue
                tries = 0
                with self._cv:
                    self._in_flight = 0
                    self.down_since = None

    def close(self, timeout: float = 10.0) -> int:
        """Stop the thread after the queue drained (``timeout`` at most); returns the number of values not logged."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._closed.set()
        self._thread.join(timeout=timeout)
        with self._cv:
            left = len(self._pending) + (self._in_flight if self._thread.is_alive() else 0)
            self._pending.clear()
            self._in_flight = 0
        self.lost += left
        return self.lost

    def report(self) -> str | None:
        """One line about values that could not be logged (None when all were)."""
        if not self.lost and not self.failures:
            return None
        steps = f" (steps {self.outage_steps[0]}-{self.outage_steps[1]})" if self.outage_steps else ""
        state = "does not answer" if self.down else "answered again"
        return (
            f"MLflow server {display_uri(self.uri)} failed {self.failures} request(s){steps} and {state}: "
            f"{self.lost} metric value(s) not logged, all of them are in metrics.jsonl"
            f"{f' (last error: {self.last_error})' if self.last_error else ''}"
        )


@contextmanager
def run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[RunLogger]:
    """An MLflow run for the block, with a :class:`RunLogger` for its per-step metrics.

    The server is checked before anything happens (:func:`configure`); inside the block MLflow's HTTP retries
    are bounded; the metrics thread is stopped at the end (bounded wait) and the run is ended as FINISHED, or
    FAILED when the block raised, without letting a dead server turn the block's own error into a traceback.
    """
    import mlflow

    configure(experiment)
    with bounded_http():
        try:
            active = mlflow.start_run(run_name=run_name, tags=tags)
            flat = flatten(params)
            for i in range(0, len(flat), 100):  # MLflow caps one batch at 100 params
                mlflow.log_params(dict(list(flat.items())[i : i + 100]))
        except Exception as err:  # noqa: BLE001
            if mlflow.active_run() is not None:
                _end_run(mlflow, "FAILED")
            raise TrackingUnavailable(
                f"MLflow tracking store {display_uri(tracking_uri())}: cannot start a run "
                f"({_first_line(err)}); nothing was done (or pass --no-track)"
            ) from None
        logger = RunLogger(active.info.run_id)
        status = "FAILED"
        try:
            yield logger
            status = "FINISHED"
        finally:
            logger.close(timeout=2.0 if logger.down else 10.0)
            _end_run(mlflow, status, skip_server=logger.down)


def _end_run(mlflow: Any, status: str, skip_server: bool = False) -> None:
    """End the active run; a server that is down (or fails) is not allowed to raise over the caller's outcome."""
    if skip_server:  # one more request to a dead server would only wait; leave the run as it is there
        from mlflow.environment_variables import MLFLOW_RUN_ID
        from mlflow.tracking import fluent

        stack = fluent._active_run_stack.get()
        if stack:
            MLFLOW_RUN_ID.unset()
            stack.pop()  # also keeps MLflow's atexit end_run from waiting on the dead server
        return
    try:
        mlflow.end_run(status=status)
    except Exception:  # noqa: BLE001 - the run stays RUNNING on the server; the caller reports the outage
        pass


def log_gan_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log the trained GAN as a pyfunc model from code (no pickle); return its ``models:/`` URI."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from productgen.models.io import read_config

    code = Path(__file__).parent.parent / "serving" / "gan_pyfunc.py"
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "category"), ColSpec("long", "count"), ColSpec("long", "seed")]),
        outputs=Schema(
            [
                ColSpec("string", "category"),
                ColSpec("long", "seed"),
                ColSpec("long", "index"),
                ColSpec("string", "image"),
            ]
        ),
    )
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(code),
        artifacts={"model_dir": str(model_dir)},
        signature=signature,
        input_example=pd.DataFrame({"category": [read_config(model_dir)["classes"][0]], "count": [2], "seed": [0]}),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
    return info.model_uri


def log_image_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log an image -> image model (restoration, translation, style) as a pyfunc from code; return its URI."""
    import base64
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from PIL import Image

    from productgen.models.io import read_config
    from productgen.tasks import for_model

    spec = for_model(str(read_config(model_dir).get("model")))
    style_input = spec is not None and spec.style_input  # the user's style image travels in a column of its own
    code = Path(__file__).parent.parent / "serving" / "image_pyfunc.py"
    cols = [ColSpec("string", "image")]
    if style_input:
        cols.append(ColSpec("string", "style", required=False))
    signature = ModelSignature(
        inputs=Schema(cols),
        outputs=Schema([ColSpec("string", "image"), ColSpec("long", "width"), ColSpec("long", "height")]),
    )
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8)).save(buf, format="PNG")
    example = {"image": [base64.b64encode(buf.getvalue()).decode("ascii")]}
    if style_input:
        example["style"] = example["image"]
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(code),
        artifacts={"model_dir": str(model_dir)},
        signature=signature,
        input_example=pd.DataFrame(example),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
    return info.model_uri


def log_trained_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log the model in ``model_dir`` with the pyfunc flavour that fits it (generators: the generator pyfunc, which
    samples per category; everything else: the image -> image pyfunc); return its URI."""
    from productgen.models.io import read_config
    from productgen.tasks import for_model

    spec = for_model(str(read_config(model_dir).get("model")))
    if spec is not None and spec.generates:
        return log_gan_model(model_dir, registered_name)
    return log_image_model(model_dir, registered_name)


def log_vae_model(model_dir: Path, registered_name: str | None = None) -> str:
    """The conditional VAE samples per category like the GAN, so it is served by the same generator pyfunc."""
    return log_gan_model(model_dir, registered_name)


def model_dir_from_uri(uri: str, dest: Path | None = None) -> Path:
    """The weights folder (safetensors + config.json) of a logged productgen model, downloaded from MLflow.

    ``uri`` is any MLflow model URI: ``models:/productgen-restore@champion``, ``models:/name/3``, ``runs:/<id>/model``.
    Downloads go to ``dest`` (default: a cache folder per URI under ~/.cache/productgen/models) and are refreshed
    on every call, so an alias that moved gives the new version.
    """
    import hashlib

    import mlflow
    from mlflow.exceptions import MlflowException

    from productgen.common.errors import UserError

    mlflow.set_tracking_uri(tracking_uri())
    if dest is None:
        key = hashlib.sha256(f"{tracking_uri()}|{uri}".encode()).hexdigest()[:16]
        dest = Path.home() / ".cache" / "productgen" / "models" / key
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except MlflowException as err:
        raise UserError(
            f"{uri}: cannot load from the MLflow store {tracking_uri()} ({str(err).splitlines()[0]})"
        ) from None
    # The pyfunc stores the weights folder under artifacts/ (the name of the folder it was logged from).
    found = next(
        (p.parent for p in sorted((local / "artifacts").rglob("config.json")) if any(p.parent.glob("*.safetensors"))),
        None,
    )
    if found is None:
        raise UserError(f"{uri}: not a productgen model (no weights folder with config.json among its artifacts)")
    return found


def resolve_model(ref: str | Path) -> Path:
    """A model given by the user: a local model folder, or an MLflow model URI (``models:/...``, ``runs:/...``)."""
    from productgen.common.errors import UserError

    text = str(ref)
    if text.startswith(("models:/", "runs:/")):
        return model_dir_from_uri(text)
    path = Path(text).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise UserError(
            f"{ref}: no model here (expected a folder with config.json and *.safetensors, "
            f"or an MLflow URI such as models:/productgen-restore@champion)"
        )
    return path
