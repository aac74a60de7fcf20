"""The registry of model tasks: everything that is particular to a task lives in its :class:`TaskSpec`.

``productgen train <task>``, ``productgen evaluate``, the DVC stages, the retrain flow, the promotion gate, the
predictors behind ``enhance`` / ``stylize`` / ``translate`` and the tuner all look a task up here, so adding a
model means adding one :class:`TaskSpec`, not editing a table in each of them. A builder gets the whole
:class:`~productgen.config.Params`, the :class:`~productgen.training.engine.Engine` and what the prepared dataset
looks like, and returns an object implementing the engine's ``Task`` protocol plus ``export(engine)``: the
modules to save as the trained model (weights as safetensors, config as JSON). An evaluator scores any model
folder of the task on a prepared dataset (see :mod:`productgen.evaluation.dispatch`), with a per-category breakdown.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from productgen.common.errors import UserError

if TYPE_CHECKING:
    from productgen.config import Params
    from productgen.training.engine import Engine

Family = Literal["generation", "restoration", "translation", "style"]
Direction = Literal["lower", "higher"]
Bound = Literal["min", "max"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a builder needs to know about the prepared dataset it trains on."""

    resolution: int
    channels: int
    classes: list[str]
    root: str
    content_hash: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: Family
    section: str  # the params.yaml section holding this model's settings (logged to MLflow, hashed for --resume)
    builder: str  # "module:function" with signature (params, engine, info) -> Task; imported lazily
    summary: str
    metric: str  # the primary metric the promotion gate compares (a key of the evaluator's metrics)
    direction: Direction  # which way the primary metric is better
    evaluator: str  # "module:function" (params, task, model_dir, prepared, out, categories, show_progress) -> metrics
    # The absolute bar a model must clear even with no champion to beat: (metrics key, "min" or "max"); the value
    # is registry.<key>_<min|max> in params.yaml (null there switches it off).
    absolute: tuple[str, Bound]
    predictor: str | None = None  # "module:function" (folder, device) -> Predictor for image -> image models
    conditional: bool = False  # generates per category: can only be scored on categories it was trained on
    quick_profile: str | None = None  # the CPU profile of its DVC stages (dvc.yaml train-model / evaluate-model)
    # What the CLI, the pages, serving and the loaders ask of a task (instead of comparing its name or family):
    generator: str | None = None  # "module:function" (folder, device) -> (net, config): generates from categories
    style_input: bool = False  # takes the user's style image when applied (arbitrary style: AdaIN)
    preserves_product: bool = False  # style transfer: can leave the product untouched (option preserve_product)
    paired: bool | None = None  # translation: trained on aligned pairs (True) or on two unpaired domains (False)
    reversible: bool = False  # applies both ways (a -> b and b -> a: CycleGAN)
    page: str | None = None  # the web page that offers its champions: generate, enhance, restyle or sketch (translate)
    flow_profile: str = "quick-cpu"  # the retrain flow's quick profile that trains one (what a page without one says)
    default: bool = False  # the retrain flow's default task (`make run`, `python flows/retrain.py`)

    @property
    def generates(self) -> bool:
        """Generates new images per category (a generator) rather than mapping images to images (a predictor)."""
        return self.generator is not None

    @property
    def maps_images(self) -> bool:
        return self.predictor is not None

    @property
    def translates(self) -> bool:
        """An image-to-image translation model (paired or unpaired): ``paired`` is set for these only."""
        return self.paired is not None

    def loads_with(self, loader: str) -> bool:
        """Its generator or predictor is the ``"module:function"`` ``loader`` (how a loader knows its models)."""
        return loader in (self.generator, self.predictor)

    def build(self, params: Params, engine: Engine, info: DatasetInfo) -> Any:
        return _resolve(self.builder)(params, engine, info)

    def evaluate(
        self,
        params: Params,
        model_dir: Path,
        prepared: Path,
        out: Path,
        categories: list[str] | None = None,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Score the model in ``model_dir`` on ``prepared`` (the ``evaluate.split`` split; only ``categories``
        when given); the metrics hold ``self.metric`` and ``per_category``."""
        return _resolve(self.evaluator)(params, self.name, model_dir, prepared, out, categories, show_progress)

    def load_generator(self, folder: Path, device: Any) -> tuple[Any, dict[str, Any]]:
        """The network that samples ``G(z, labels)`` and the model's config."""
        if self.generator is None:
            raise UserError(
                f"{folder}: holds a {self.name!r} model, which does not generate images from categories "
                f"(generators: {', '.join(t.name for t in TASKS.values() if t.generates)})"
            )
        net, cfg = _resolve(self.generator)(folder, device)
        return net, cfg

    def load_predictor(self, folder: Path, device: Any) -> Any:
        if self.predictor is None:
            raise UserError(f"{folder}: a {self.name} model generates images; it does not map images to images")
        return _resolve(self.predictor)(folder, device)

    def better(self, a: float, b: float) -> float:
        """How much ``a`` is better than ``b`` on the primary metric (negative: worse)."""
        return (b - a) if self.direction == "lower" else (a - b)


def _resolve(ref: str) -> Callable[..., Any]:
    module, func = ref.split(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
    return fn


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


def get(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (choose from {', '.join(sorted(TASKS))})")
    return TASKS[name]


def names() -> list[str]:
    """Every task name, in registration order (CLI choices, the flow's parameter check)."""
    return list(TASKS)


def default() -> TaskSpec:
    """The retrain flow's default task."""
    return next(t for t in TASKS.values() if t.default)


def on_page(page: str) -> list[TaskSpec]:
    """The tasks whose champions a web page offers, in registration order."""
    return [t for t in TASKS.values() if t.page == page]


def for_model(kind: str) -> TaskSpec | None:
    """The task whose models carry ``config["model"] == kind`` (each task exports its own name there)."""
    return TASKS.get(kind)


_E = "productgen.evaluation.dispatch"
_GAN, _VAE = "productgen.training.gan_task", "productgen.training.vae_task"
_TR, _ST = "productgen.training.translate_task", "productgen.training.style_task"
register(
    TaskSpec(
        "gan",
        "generation",
        "gan",
        f"{_GAN}:build",
        "the class-conditional GAN (new product images per category)",
        "fid",
        "lower",
        f"{_E}:generation",
        ("fid", "max"),
        conditional=True,
        generator="productgen.models.gan:load_generator",
        page="generate",
        default=True,
    )
)
register(
    TaskSpec(
        "restore",
        "restoration",
        "restore",
        "productgen.training.restore_task:build",
        "the U-Net restorer (denoise, deblur, JPEG artefacts, 2x/4x super-resolution)",
        "psnr",
        "higher",
        f"{_E}:restoration",
        ("gain_db", "min"),
        predictor="productgen.models.restore:load_predictor",
        quick_profile="flows/profiles/quick-cpu-restore.yaml",
        page="enhance",
        flow_profile="quick-cpu-restore",
    )
)
register(
    TaskSpec(
        "vae",
        "generation",
        "vae",
        f"{_VAE}:build_vae",
        "the conditional VAE (new product images per category, blurrier than the GAN)",
        "fid",
        "lower",
        f"{_E}:generation",
        ("fid", "max"),
        conditional=True,
        quick_profile="flows/profiles/quick-cpu.yaml",
        generator="productgen.models.vae:load_generator",
        page="generate",
    )
)
register(
    TaskSpec(
        "vae-restore",
        "restoration",
        "vae",
        f"{_VAE}:build_restore",
        "the VAE restorer (degraded -> clean through a latent bottleneck; the U-Net's comparison)",
        "psnr",
        "higher",
        f"{_E}:restoration",
        ("gain_db", "min"),
        predictor="productgen.models.vae:load_predictor",
        page="enhance",
        flow_profile="quick-cpu-restore",
    )
)
register(
    TaskSpec(
        "pix2pix",
        "translation",
        "translate",
        f"{_TR}:build_pix2pix",
        "pix2pix, paired image-to-image translation (default: edges -> product, sketch to product)",
        "psnr",
        "higher",
        f"{_E}:translation",
        ("gain_db", "min"),
        predictor="productgen.models.translate:load_predictor",
        quick_profile="flows/profiles/quick-cpu-translate.yaml",
        paired=True,
        page="sketch",
        flow_profile="quick-cpu-translate",
    )
)
register(
    TaskSpec(
        "cyclegan",
        "translation",
        "translate",
        f"{_TR}:build_cyclegan",
        "CycleGAN, unpaired translation between two categories or two image folders",
        "fid",
        "lower",
        f"{_E}:translation",
        ("fid_gain", "min"),
        predictor="productgen.models.translate:load_predictor",
        quick_profile="flows/profiles/quick-cpu-cyclegan.yaml",
        paired=False,
        reversible=True,
        page="sketch",
        flow_profile="quick-cpu-cyclegan",
    )
)
register(
    TaskSpec(
        "style",
        "style",
        "style",
        f"{_ST}:build_style",
        "a fast per-style transfer network (Johnson et al.) for style.style_image",
        "style_score",
        "lower",
        f"{_E}:style",
        ("style_score", "max"),
        predictor="productgen.models.style:load_predictor",
        quick_profile="flows/profiles/quick-cpu-style.yaml",
        preserves_product=True,
        page="restyle",
        flow_profile="quick-cpu-style",
    )
)
register(
    TaskSpec(
        "adain",
        "style",
        "style",
        f"{_ST}:build_adain",
        "an arbitrary-style AdaIN decoder (Huang & Belongie) over style.adain_styles",
        "style_score",
        "lower",
        f"{_E}:style",
        ("style_score", "max"),
        predictor="productgen.models.adain:load_predictor",
        quick_profile="flows/profiles/quick-cpu-style.yaml",
        style_input=True,
        preserves_product=True,
        page="restyle",
        flow_profile="quick-cpu-style",
    )
)
