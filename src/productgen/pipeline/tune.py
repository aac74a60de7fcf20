"""``productgen tune TASK``: Optuna hyperparameter search over a model's settings, for every task of the task
registry (the MLOps layer: it imports Optuna and MLflow, and the core never imports this module).

    <tune.out>/                  artifacts/tune/<task> by default
      study.json                 which study the trial folders belong to (a second study is refused here)
      trial-<n>/                 an ordinary training run folder (samples, metrics.jsonl, model/ when complete)
        eval/                    the last intermediate evaluation (metrics.json, report, grid; not for FID tasks)
      best_params.yaml           the <section>: of the best trial so far, rewritten as the study improves

- The search space is ``tune.space.<task>``: fields of the task's params section (``TaskSpec.section``), each a
  range or a list of choices (checked when params.yaml is read). The objective is the task's primary metric
  (``TaskSpec.metric``), maximised or minimised as ``TaskSpec.direction`` says.
- One study per task in RDB storage (``tune.storage``: SQLite by default, a PostgreSQL URL for several workers;
  ``tune.study`` ``productgen-{task}``), loaded when it exists, so an interrupted search resumes: completed trials
  are kept and new ones continue. The settings that make trial values comparable (steps, evaluation protocol,
  dataset, the fixed ``train:`` / section keys) are stored in the study, and resuming with different ones is
  refused instead of mixing numbers.
- Several workers (``productgen tune`` processes on several machines) share one study in PostgreSQL: Optuna hands
  each new trial to exactly one worker; ``tune.total_trials`` stops them all once the study holds that many
  finished trials. A running trial writes a heartbeat every ``tune.heartbeat_interval`` s; a worker that dies
  (killed, machine lost) leaves its trial RUNNING until the next worker starting a trial finds it silent for
  ``tune.grace_period`` s, fails it and re-queues its parameters (``tune.retries``), so no trial is lost.
- TPE sampler seeded with ``tune.seed`` (a resumed session: with a hash of it and the number of trials already in
  the study, so it does not replay the random start-up points it tried); a median or Hyperband pruner.
- Each trial trains with the shared engine (``productgen.pipeline.train.train`` -> ``engine.fit``) and, through ``fit``'s
  ``on_step`` hook, evaluates the model every ``tune.eval_every`` steps and at the last step on a seeded subset
  of ``tune.eval_split`` (``tune.eval_images`` images); the value is reported with ``trial.report`` and the trial
  is pruned when the pruner says so. The objective is the value at the last step. The evaluation is the task's
  own evaluator (``TaskSpec.evaluate``) run on the model exported into ``trial-<n>/eval/``; the generators
  scored on FID (gan, vae) take the same FID in memory instead, with the feature network loaded and the real
  statistics computed once per process (and cached on disk), not per trial or per step.
- MLflow: one parent run per ``tune`` invocation (experiment ``productgen-<task>``, lineage tags), one nested run
  per trial (its parameters, ``<metric>`` per evaluated step, ``<metric>_final``, tag ``state`` complete / pruned
  / fail); the best parameters of the study and ``best_<metric>`` are logged to the parent at the end.

FID on a few hundred images is biased upwards (README, Metrics), and every figure on a subset is noisier than on
the whole split: the values rank trials of one study, which all use the same images and noise; they are not
numbers to compare with published ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.config import Params, TuneConfig, TuneRange, TuneSpace

SETTINGS_ATTR = "productgen.settings"
# Training settings that change what a trial's value means; the rest (logging, checkpoints, device) may differ.
TRAIN_KEYS = ("batch_size", "seed", "ema_decay", "ema_start", "grad_clip", "split")


@dataclass
class TrialSummary:
    number: int
    state: str  # complete | pruned | fail
    value: float | None
    params: dict[str, Any]
    step: int | None = None  # last evaluated step


@dataclass(eq=False)
class TuneResult(Mapping[str, Any]):
    """What a tune session did. It also reads as the mapping of the best trial's tuned values of the task's
    section (empty when no trial has completed); :meth:`overrides` gives them as load_params overrides
    (``{"restore.lr": ...}``), which is how the retrain flow feeds them to the final training."""

    study: str
    storage: str  # password masked
    trials_in_study: int
    new_trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    best_params_file: Path | None = None
    parent_run_id: str | None = None
    eval_images: int = 0
    task: str = "gan"
    section: str = "gan"  # the params section the tuned fields belong to (TaskSpec.section)
    metric: str = "fid"  # the objective (TaskSpec.metric)
    direction: str = "lower"
    section_fields: tuple[str, ...] = ()

    def _tuned(self) -> dict[str, Any]:
        return {k: v for k, v in (self.best.params if self.best else {}).items() if k in self.section_fields}

    def overrides(self) -> dict[str, Any]:
        """The best trial's values as dotted load_params overrides."""
        return {f"{self.section}.{k}": v for k, v in self._tuned().items()}

    def __getitem__(self, key: str) -> Any:
        return self._tuned()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tuned())

    def __len__(self) -> int:
        return len(self._tuned())


def storage_url(value: str) -> str:
    """An SQLAlchemy URL as given, or a file path taken as SQLite (``optuna.db`` -> ``sqlite:///optuna.db``)."""
    return value if "://" in value else f"sqlite:///{value}"


def mask_url(url: str) -> str:
    """The URL with its password replaced, for logs, MLflow tags and messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def suggest(trial: Any, space: TuneSpace, base: Any) -> Any:
    """The trial's section settings: ``base`` (a section dataclass) with every non-null entry of ``space`` sampled
    by Optuna under the field's own name, so a trial's parameters are a partial section as they stand."""
    values: dict[str, Any] = {}
    for name, entry in space.items():
        if entry is None:
            continue
        if isinstance(entry, TuneRange):
            if isinstance(entry.low, int):  # the loader gives an integer field's range integer bounds
                values[name] = trial.suggest_int(name, int(entry.low), int(entry.high), log=entry.log)
            else:
                values[name] = trial.suggest_float(name, float(entry.low), float(entry.high), log=entry.log)
        else:
            values[name] = trial.suggest_categorical(name, list(entry))
    return dataclasses.replace(base, **values)


def tuned_keys(space: TuneSpace) -> list[str]:
    return [name for name, entry in space.items() if entry is not None]


def task_space(cfg: TuneConfig, task: str) -> TuneSpace:
    """The task's search space; a task without one is refused before the study is touched."""
    space = {k: v for k, v in (cfg.space.get(task) or {}).items() if v is not None}
    if not space:
        raise UserError(
            f"tune.space.{task}: no search space for {task} (give fields of its params section, each "
            "{low: .., high: ..} or a list of choices, in params.yaml or a --profile)"
        )
    return space


def make_pruner(cfg: TuneConfig) -> Any:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_steps
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(cfg.eval_every, cfg.steps), max_resource=cfg.steps)
    return optuna.pruners.NopPruner()


class FidProbe:
    """FID of a generator against a fixed real subset: the feature network is loaded and the real statistics are
    computed once (and cached on disk like every real-set statistic, so a resumed session or a second worker
    does not recompute them), then every call generates the same labels from the same noise seed, so successive
    steps and different trials are compared on equal terms."""

    def __init__(self, ds: Any, cfg: TuneConfig, show_progress: bool = False) -> None:
        import hashlib

        import torch

        from productgen.metrics import FeatureStats, StatsCache, cache_key, compute_features, load_extractor
        from productgen.metrics.frechet import feature_factor, psd_factor

        images, labels = ds.tensors(cfg.eval_split)
        n = len(images)
        if n < 2:
            raise UserError(
                f"the {cfg.eval_split} split has {n} images; the intermediate FID needs at least 2 "
                "(set tune.eval_split)"
            )
        subset = cfg.eval_split
        if cfg.eval_images < n:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_images].sort().values
            images, labels = images[pick], labels[pick]
            digest = hashlib.sha256(pick.numpy().tobytes()).hexdigest()[:12]  # the key names the exact images
            subset = f"{cfg.eval_split}-{len(pick)}of{n}-{digest}"
        self.cfg, self.labels = cfg, labels
        self.extractor = net = load_extractor(cfg.extractor, cfg.device)
        store, key = StatsCache(), cache_key(ds.content_hash, subset, net.name, net.sha)
        small = len(labels) <= net.dim  # then the features are the cheap exact factor of sigma: keep them
        real = store.load(key, need_features=small)
        if real is None:
            feats = compute_features(images, net, batch_size=cfg.eval_batch_size, show_progress=show_progress)
            real = FeatureStats.from_features(feats)
            store.save(
                key,
                real,
                {"content_hash": ds.content_hash, "split": subset, "extractor": net.name, "extractor_sha": net.sha},
            )
        self.real = real
        # The real side's factor of sigma once, not per evaluation (a 2048 x 2048 eigh is ~4 s on 2 CPU cores).
        self.real_factor = feature_factor(real)
        if self.real_factor is None:
            self.real_factor = psd_factor(real.sigma)

    @property
    def n(self) -> int:
        return len(self.labels)

    def __call__(self, generator: Any, z_dim: int) -> float:
        import torch

        from productgen.apply.generation import sample
        from productgen.metrics import FeatureStats, compute_features
        from productgen.metrics.frechet import feature_factor, frechet_distance

        device = next(generator.parameters()).device
        fake = sample(generator, z_dim, self.labels.to(device), self.cfg.seed + 1, batch=self.cfg.eval_batch_size)
        feats = compute_features(torch.from_numpy(fake), self.extractor, batch_size=self.cfg.eval_batch_size)
        f = FeatureStats.from_features(feats)
        r = self.real
        return frechet_distance(r.mu, r.sigma, f.mu, f.sigma, "svd", self.real_factor, feature_factor(f))


class EvaluatorProbe:
    """The task's primary metric from its own evaluator (``TaskSpec.evaluate``): the model as it stands is
    exported into ``<trial>/eval/model`` (the weights ``train`` would save, so the evaluator loads it like any
    model folder) and scored on ``tune.eval_images`` images of ``tune.eval_split`` (``evaluate.max_real``, seeded
    by ``tune.seed``); the report, grid and metrics.json of the last evaluation stay in ``<trial>/eval``."""

    def __init__(self, spec: Any, ds: Any, cfg: TuneConfig, n: int) -> None:
        self.spec, self.ds, self.cfg, self.n = spec, ds, cfg, n

    def params(self, p: Params) -> Params:
        c = self.cfg
        e = dataclasses.replace(
            p.evaluate,
            split=c.eval_split,
            max_real=c.eval_images,
            num_fake=c.eval_images,
            seed=c.seed,
            batch_size=c.eval_batch_size,
            device=c.device,
            extractor=c.extractor,
            kid=False,
            per_category=False,
        )
        return dataclasses.replace(p, evaluate=e)

    def __call__(self, p: Params, engine: Any, model: Any, step: int, trial_dir: Path) -> float:
        from productgen.pipeline.train import write_model

        folder = trial_dir / "eval"
        config = {
            **model.config(),
            "step": step,
            "dataset": {"path": str(self.ds.root), "content_hash": self.ds.content_hash},
            "train": dataclasses.asdict(p.train),
            "mlflow_run_id": None,
        }
        write_model(folder / "model", model.export(engine), config)
        m = self.spec.evaluate(self.params(p), folder / "model", self.ds.root, folder, None, False)
        return float(m[self.spec.metric])


def _open_study(cfg: TuneConfig, study_name: str, direction: str) -> Any:
    import optuna
    from optuna.exceptions import ExperimentalWarning

    url = storage_url(cfg.storage)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.retries) if cfg.retries else None
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=retry,
            )
        sampler = optuna.samplers.TPESampler(seed=cfg.seed)
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction=direction,
            load_if_exists=True,
            sampler=sampler,
            pruner=make_pruner(cfg),
        )
    except (ImportError, ValueError) as err:
        raise UserError(f"cannot open the Optuna storage {mask_url(url)}: {err}") from None
    except Exception as err:  # SQLAlchemy errors (unreachable server, bad credentials, read-only file)
        if type(err).__module__.startswith(("sqlalchemy", "optuna")):
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"cannot open the Optuna storage {mask_url(url)}: {reason}") from None
        raise
    want = optuna.study.StudyDirection.MINIMIZE if direction == "minimize" else optuna.study.StudyDirection.MAXIMIZE
    if len(study.directions) != 1 or study.direction != want:
        raise UserError(f"study {study_name!r} in {mask_url(url)} does not {direction} one value; use another --study")
    n_before = len(study.get_trials(deepcopy=False))
    if n_before:  # a fresh seed per session: a resumed search must not replay the start-up points it tried
        study.sampler = optuna.samplers.TPESampler(seed=session_seed(cfg.seed, n_before))
    return study


def check_workers(cfg: TuneConfig) -> None:
    """Refuse settings under which workers would fail each other's live trials or never stop."""
    if cfg.heartbeat_interval < 1:
        raise UserError(f"tune.heartbeat_interval: {cfg.heartbeat_interval}; use at least 1 (seconds)")
    if cfg.grace_period <= cfg.heartbeat_interval:
        raise UserError(
            f"tune.grace_period: {cfg.grace_period} s is not longer than tune.heartbeat_interval "
            f"({cfg.heartbeat_interval} s): live trials would be failed; use several intervals"
        )
    if cfg.retries < 0:
        raise UserError(f"tune.retries: {cfg.retries}; use 0 (never re-run a dead worker's trial) or more")
    if cfg.total_trials is not None and cfg.total_trials < 1:
        raise UserError(f"tune.total_trials: {cfg.total_trials}; use null (no study-wide limit) or at least 1")


FINISHED = ("COMPLETE", "PRUNED")


def finished_trials(study: Any) -> int:
    """Complete and pruned trials of the study, whichever worker ran them."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def session_seed(seed: int, n_before: int) -> int:
    """The sampler seed of a session that starts with ``n_before`` trials in the study. Hashed, not ``seed + n``:
    NumPy's generators seeded with nearby integers start with nearly equal draws (seeds 0 and 3 both begin near
    0.55), which would make a resumed search retry almost the same learning rates."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{n_before}".encode()).digest()[:4], "little")


def _check_settings(study: Any, settings: dict[str, Any], study_name: str) -> str:
    """Store the settings in a new study; refuse to resume one run with different settings. Returns the study id."""
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        saved = {**settings, "id": uuid.uuid4().hex}
        study.set_user_attr(SETTINGS_ATTR, saved)
        saved = study.user_attrs.get(SETTINGS_ATTR, saved)  # another worker may have been first
    diff = sorted(k for k in set(saved) | set(settings) if k != "id" and saved.get(k) != settings.get(k))
    if diff:
        detail = "; ".join(f"{k}: study {saved.get(k)!r}, now {settings.get(k)!r}" for k in diff)
        raise UserError(
            f"study {study_name!r} was run with other settings ({detail}); resume it with the same "
            "params or start a new one with --study"
        )
    return str(saved["id"])


def _claim_out(out: Path, study_id: str, study_name: str, url: str) -> None:
    """Trial folders are named by trial number, so two studies must not share ``out``."""
    marker = out / "study.json"
    if marker.is_file():
        held = json.loads(marker.read_text())
        if held.get("id") != study_id:
            raise UserError(
                f"{out} holds the trials of another study ({held.get('study')!r} in "
                f"{held.get('storage')}); choose another --out or remove that folder"
            )
        return
    atomic.write_json(marker, {"study": study_name, "storage": mask_url(url), "id": study_id})


def _summary(trial: Any) -> TrialSummary:
    state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(trial.state.name, "fail")
    steps = sorted(trial.intermediate_values)
    return TrialSummary(trial.number, state, trial.value, dict(trial.params), steps[-1] if steps else None)


def _best(study: Any) -> Any | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def write_best_params(path: Path, best: Any, base: Any, result: TuneResult, cfg: TuneConfig, url: str) -> Path:
    """A partial params.yaml: the section (``gan:``, ``restore:``, ...) the best trial trained with, tuned keys
    listed in the header, so it can be passed as ``--profile`` or merged into params.yaml."""
    import yaml

    names = set(result.section_fields)
    section = dataclasses.replace(base, **{k: v for k, v in best.params.items() if k in names})
    tuned = ", ".join(sorted(k for k in best.params if k in names)) or "none"
    header = (
        f"# Best trial of Optuna study {result.study!r} ({mask_url(url)}): trial {best.number}, "
        f"{label(result.metric)} {best.value:.4f} ({'higher' if result.direction == 'higher' else 'lower'} is better)\n"
        f"# after {cfg.steps} steps ({result.eval_images} {cfg.eval_split} images). Tuned: {tuned}.\n"
        f"# Use it as a profile over params.yaml (productgen train {result.task} --profile <this file>) or merge\n"
        f"# this {result.section}: section into params.yaml.\n"
    )
    body = yaml.safe_dump({result.section: dataclasses.asdict(section)}, sort_keys=False)
    return atomic.write_text(path, header + body)


def label(metric: str) -> str:
    """How a metric is printed: FID, PSNR; compound names as they are."""
    return metric.upper() if metric.isalpha() else metric


def tune(
    params: Params,
    task: str = "gan",
    trials: int | None = None,
    show_progress: bool = True,
    track: bool = True,
    echo: Callable[[str], None] = print,
) -> TuneResult:
    """Run ``trials`` (default ``tune.trials``) new trials of ``task``'s study (``tune.study``), created or
    resumed; see the module docstring. Prints one line per trial through ``echo``."""
    session = _start(params, task, trials, show_progress, track, echo)
    with contextlib.ExitStack() as stack:
        if track:
            session.result.parent_run_id = stack.enter_context(_parent_run(session)).run_id
        try:
            _optimize(session)
        finally:
            _finish(session)
    return session.result


@dataclass
class _Session:
    """What the trials of one ``tune`` invocation share: the settings, the study, the dataset, the probe that
    scores a model, and the result being filled in."""

    params: Params
    task: str
    spec: Any  # the task's TaskSpec
    cfg: TuneConfig
    space: TuneSpace
    base: Any  # the task's params section the trials vary
    study: Any
    study_name: str
    out: Path
    url: str
    result: TuneResult
    fid_probe: FidProbe | None  # the generators scored on FID: in memory, real side cached
    probe: EvaluatorProbe | None  # everything else: the task's own evaluator
    show_progress: bool
    track: bool
    echo: Callable[[str], None]
    lineage: dict[str, str] = field(default_factory=dict)

    @property
    def best_file(self) -> Path:
        return self.out / "best_params.yaml"

    @property
    def name(self) -> str:
        return label(self.spec.metric)


def _check_start(params: Params, trials: int | None) -> TuneConfig:
    """The tune settings of this invocation, refused before anything is opened when they cannot work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "tune runs one process per worker: start several 'productgen tune' processes on a shared "
            "PostgreSQL --storage instead of torchrun"
        )
    cfg = params.tune if trials is None else dataclasses.replace(params.tune, trials=trials)
    if cfg.trials < 1:
        raise UserError(f"trials: {cfg.trials}; run at least 1")
    check_workers(cfg)
    return cfg


def _study_settings(
    params: Params, task: str, spec: Any, cfg: TuneConfig, space: TuneSpace, ds: Any, n_eval: int
) -> dict[str, Any]:
    """The settings that make the trial values of one study comparable (stored in the study, checked on resume)."""
    base = getattr(params, spec.section)
    return {
        "task": task,
        "steps": cfg.steps,
        "eval_every": cfg.eval_every,
        "eval_images": n_eval,
        "eval_split": cfg.eval_split,
        "extractor": cfg.extractor,
        "seed": cfg.seed,
        "dataset": ds.content_hash,
        "train": {k: getattr(params.train, k) for k in TRAIN_KEYS},
        f"{spec.section}_fixed": {k: v for k, v in dataclasses.asdict(base).items() if k not in space},
    }


def _start(
    params: Params, task: str, trials: int | None, show_progress: bool, track: bool, echo: Callable[[str], None]
) -> _Session:
    """Check the settings, open (or resume) the study, claim the output folder and set up the probe."""
    import optuna

    from productgen import tasks
    from productgen.data.dataset import PreparedDataset

    spec = tasks.get(task)
    cfg = _check_start(params, trials)
    space = task_space(cfg, task)
    study_name, out = cfg.study_for(task), Path(cfg.out_for(task))
    base = getattr(params, spec.section)
    url = storage_url(cfg.storage)
    ds = PreparedDataset(params.train.prepared or params.data.out)
    n_split = len(ds.arrays(cfg.eval_split)[0])  # also refuses an unknown split before the study is touched
    n_eval = min(cfg.eval_images, n_split)
    settings = _study_settings(params, task, spec, cfg, space, ds, n_eval)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the per-trial lines below say the same, shorter
    study = _open_study(cfg, study_name, "minimize" if spec.direction == "lower" else "maximize")
    study_id = _check_settings(study, settings, study_name)
    _claim_out(out, study_id, study_name, url)
    if n_eval < cfg.eval_images:
        echo(f"note: the {cfg.eval_split} split holds {n_split} images; the evaluations use all of them")
    fid_fast = spec.generates and spec.metric == "fid"  # the generators: FID in memory, real side cached
    fid_probe = FidProbe(ds, cfg, show_progress=show_progress) if fid_fast else None
    probe = None if fid_fast else EvaluatorProbe(spec, ds, cfg, n_eval)
    result = TuneResult(
        study_name,
        mask_url(url),
        len(study.get_trials(deepcopy=False)),
        eval_images=fid_probe.n if fid_probe else n_eval,
        task=task,
        section=spec.section,
        metric=spec.metric,
        direction=spec.direction,
        section_fields=tuple(f.name for f in dataclasses.fields(base)),
    )
    session = _Session(
        params=params,
        task=task,
        spec=spec,
        cfg=cfg,
        space=space,
        base=base,
        study=study,
        study_name=study_name,
        out=out,
        url=url,
        result=result,
        fid_probe=fid_probe,
        probe=probe,
        show_progress=show_progress,
        track=track,
        echo=echo,
    )
    if track:
        from productgen.tracking import runs as tracking

        session.lineage = tracking.lineage(ds.root, ds.content_hash)
    return session


def _parent_run(s: _Session) -> Any:
    """The MLflow parent run of this invocation (a context manager)."""
    from productgen.tracking import runs as tracking

    cfg, task = s.cfg, s.task
    run_params = {
        "tune": {
            **dataclasses.asdict(cfg),
            "storage": mask_url(s.url),
            "study": s.study_name,
            "out": str(s.out),
            "space": {task: _plain(s.space)},
        },
        "train": dataclasses.asdict(s.params.train),
        s.spec.section: dataclasses.asdict(s.base),
    }
    tags = {
        **s.lineage,
        "task": task,
        "kind": "tune",
        "optuna.study": s.study_name,
        "optuna.storage": mask_url(s.url),
        "optuna.trials_before": str(s.result.trials_in_study),
        "metric": s.spec.metric,
        "direction": s.spec.direction,
    }
    return tracking.run(f"productgen-{task}", f"tune-{task}", run_params, tags)


def _optimize(s: _Session) -> None:
    """Run the new trials (up to ``tune.total_trials`` finished in the study, when set)."""
    study, cfg = s.study, s.cfg
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any) -> float:
        return _objective(s, trial, worker)

    def after(study: Any, frozen: Any) -> None:
        _after_trial(s, study, frozen)

    if cfg.total_trials is None or finished_trials(study) < cfg.total_trials:
        study.optimize(objective, n_trials=cfg.trials, timeout=cfg.timeout, callbacks=[after])
    else:
        s.echo(
            f"study {s.study_name!r} already holds {finished_trials(study)} finished trials "
            f"(tune.total_trials {cfg.total_trials}): nothing to do"
        )
    if cfg.total_trials is not None:
        _settle(study, cfg, lambda n: study.optimize(objective, n_trials=n, callbacks=[after]), s.echo)


def _finish(s: _Session) -> None:
    """The study's best trial into the result, ``best_params.yaml`` and (tracked) the parent run."""
    best = _best(s.study)
    s.result.trials_in_study = len(s.study.get_trials(deepcopy=False))
    if best is not None:
        s.result.best = _summary(best)
        s.result.best_params_file = write_best_params(s.best_file, best, s.base, s.result, s.cfg, s.url)
    if s.track:
        _log_best(best, s.best_file, s.result)


def _step_hook(
    s: _Session, trial: Any, tp: Params, trial_dir: Path, values: dict[int, float]
) -> Callable[[int, Any, Any], None]:
    """``fit``'s ``on_step``: every ``tune.eval_every`` steps and at the last, score the model, report the value
    to Optuna (and MLflow) and raise ``TrialPruned`` when the pruner says so."""
    import optuna

    cfg, metric = s.cfg, s.spec.metric

    def on_step(step: int, engine: Any, model: Any) -> None:
        if step % cfg.eval_every and step != cfg.steps:
            return
        if s.fid_probe is not None:
            generator = model.export(engine)["generator"]
            value = s.fid_probe(generator, int(model.config()["gan"]["z_dim"]))
        else:
            assert s.probe is not None
            value = s.probe(tp, engine, model, step, trial_dir)
        values[step] = value
        trial.report(value, step)
        if s.track:
            import mlflow

            mlflow.log_metric(metric, value, step=step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{s.name} {value:.4g} at step {step}")

    return on_step


def _start_trial_run(s: _Session, trial: Any, section: Any, stack: contextlib.ExitStack) -> None:
    """Start the nested MLflow run of one trial (ended by ``stack``) and log its parameters."""
    import mlflow

    from productgen.tracking import runs as tracking

    run = stack.enter_context(
        mlflow.start_run(
            run_name=f"trial-{trial.number}",
            nested=True,
            tags={
                **s.lineage,
                "task": s.task,
                "kind": "tune-trial",
                "optuna.study": s.study_name,
                "optuna.trial_number": str(trial.number),
                "tuned": ",".join(tuned_keys(s.space)),
            },
        )
    )
    mlflow.log_params(
        tracking.flatten(
            {
                s.spec.section: dataclasses.asdict(section),
                "train": {"max_steps": s.cfg.steps},
                "trial": dict(trial.params),
            }
        )
    )
    trial.set_user_attr("mlflow_run_id", run.info.run_id)


def _objective(s: _Session, trial: Any, worker: str) -> float:
    """Train one trial with the sampled section, evaluated along the way; its value at the last step."""
    import optuna

    from productgen.pipeline.train import train
    from productgen.training.engine import TrainingDiverged

    cfg = s.cfg
    section = suggest(trial, s.space, s.base)
    trial_dir = s.out / f"trial-{trial.number}"
    trial.set_user_attr("out", str(trial_dir))
    trial.set_user_attr("worker", worker)  # which process ran it: one worker per trial, dead ones identifiable
    train_cfg = dataclasses.replace(s.params.train, out=str(trial_dir), max_steps=cfg.steps)
    tp = dataclasses.replace(s.params, train=train_cfg, **{s.spec.section: section})
    values: dict[int, float] = {}
    on_step = _step_hook(s, trial, tp, trial_dir, values)

    with contextlib.ExitStack() as stack:
        if s.track:
            _start_trial_run(s, trial, section, stack)
        state, pruned = "fail", None
        try:
            res = train(tp, s.task, show_progress=s.show_progress, track=False, on_step=on_step)
            state = "complete"
        except optuna.TrialPruned as err:
            state, pruned = "pruned", err
        except TrainingDiverged as err:  # a diverging trial (NaN loss) ends alone, as pruned; the study goes on
            state, pruned = "diverged", optuna.TrialPruned(str(err))
        finally:
            shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)  # a trial is never resumed
            shutil.rmtree(trial_dir / "eval" / "model", ignore_errors=True)  # a copy; model/ is the trial's
            if s.track:
                import mlflow

                mlflow.set_tag("state", state)
                if state == "pruned" and values:
                    mlflow.log_metric("pruned_at_step", max(values))
        if pruned is None and s.track:
            import mlflow

            final = {f"final_{k}": v for k, v in res.final_losses.items()}
            mlflow.log_metrics({f"{s.spec.metric}_final": values[cfg.steps], **final})
            if not math.isfinite(values[cfg.steps]):  # Optuna fails a trial whose value is NaN
                mlflow.set_tag("state", "fail")
    if pruned is not None:
        raise pruned  # after the nested run ended as FINISHED with state=pruned, not as a crashed run
    return values[cfg.steps]


def _after_trial(s: _Session, study: Any, frozen: Any) -> None:
    """One line per finished trial; ``best_params.yaml`` rewritten when it is the new best; the study stopped
    once it holds ``tune.total_trials`` finished trials."""
    t = _summary(frozen)
    s.result.new_trials.append(t)
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in t.params.items())
    if t.state == "complete":
        s.echo(f"trial {t.number} complete: {s.name} {t.value:.4g} ({shown})")
    elif t.state == "pruned" and t.step is not None:
        s.echo(f"trial {t.number} pruned at step {t.step}: {s.name} {frozen.intermediate_values[t.step]:.4g} ({shown})")
    elif t.state == "pruned":
        s.echo(f"trial {t.number} pruned before its first evaluation ({shown})")
    else:
        s.echo(f"trial {t.number} failed ({shown})")
    best = _best(study)
    if t.state == "complete" and best is not None and best.number == t.number:
        write_best_params(s.best_file, best, s.base, s.result, s.cfg, s.url)
    if s.cfg.total_trials is not None and finished_trials(study) >= s.cfg.total_trials:
        study.stop()  # the other workers stop after their current trial


def _plain(space: TuneSpace) -> dict[str, Any]:
    """The space as plain data (MLflow params)."""
    return {k: dataclasses.asdict(v) if isinstance(v, TuneRange) else v for k, v in space.items()}


def _settle(study: Any, cfg: TuneConfig, run: Callable[[int], None], echo: Callable[[str], None]) -> None:
    """Before the last worker leaves a shared study: trials still RUNNING under another worker either finish (a
    live worker) or fall silent (a dead one); a silent one is failed once its grace period has passed and its
    re-queued copy is run here, so the study is never left with a trial RUNNING for ever or a retry WAITING.
    Waits at most grace_period + 2 heartbeat intervals (a live worker's trial keeps its own worker busy)."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    deadline = time.monotonic() + cfg.grace_period + 2 * cfg.heartbeat_interval
    announced = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if states.count("WAITING"):
            run(states.count("WAITING"))
            continue
        if not states.count("RUNNING") or time.monotonic() > deadline:
            return
        if not announced:
            echo(f"waiting for {states.count('RUNNING')} running trial(s) of other workers to finish or time out")
            announced = True
        time.sleep(min(cfg.heartbeat_interval, max(0.0, deadline - time.monotonic())) or 0.1)


def _log_best(best: Any | None, best_file: Path, result: TuneResult) -> None:
    """The study's best trial (possibly from an earlier session or another worker) on the parent run."""
    import mlflow

    counts = {s: sum(t.state == s for t in result.new_trials) for s in ("complete", "pruned", "fail")}
    mlflow.log_metrics({f"trials_{k}": v for k, v in counts.items()} | {"trials_in_study": result.trials_in_study})
    if best is None:
        return
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    mlflow.log_metric(f"best_{result.metric}", best.value)
    mlflow.set_tags(
        {
            "best.trial_number": str(best.number),
            "best.mlflow_run_id": str(best.user_attrs.get("mlflow_run_id")),
            "best.out": str(best.user_attrs.get("out")),
        }
    )
    mlflow.log_artifact(str(best_file))
