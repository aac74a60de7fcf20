"""The training loop shared by every model: the model-specific part is a :class:`Task`.

A task owns its networks and optimizers and implements one training step; the engine does everything else
the same way for all of them: device and precision (bf16 autocast on CUDA and native-bf16 CPUs, channels_last, fused Adam,
optional ``torch.compile``), GPU-resident batches, gradient averaging under DDP
(``torch.nn.parallel.DistributedDataParallel``: bucketed all-reduce overlapping the backward pass), clipping, EMA,
a progress bar with live losses and images/s, sample grids, verified checkpoints and exact resume.

Exact resume: everything random is drawn from RNGs whose states are in the checkpoint, and the data order is
a pure function of (seed, step), so on CPU a run interrupted at a checkpoint and resumed ends bit-identical
to an uninterrupted run of the same seed. Under DDP the wrappers are rebuilt after every checkpoint (unless
compiled), so a resumed run reduces gradients in the same bucket layout, step for step, as an uninterrupted one.

Faults (docs/reliability.md): ``--resume`` verifies checkpoints and falls back to the newest intact one; a
non-finite loss or weight stops the run with one line naming the step, before anything of that step is saved;
temp files of an interrupted run are removed at start; a torn last line of ``metrics.jsonl`` is dropped.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.common.grids import make_grid, save_png
from productgen.config import TrainConfig
from productgen.training.checkpoint import (
    checkpoint_path,
    checkpoints,
    latest_checkpoint,
    load_latest_intact,
    prune_checkpoints,
    remove_orphans,
    save_state,
)
from productgen.training.data import DeviceBatches
from productgen.training.device import Runtime
from productgen.training.ema import EMA


class TrainingDiverged(UserError):
    """A loss or weight became NaN/inf: the run stopped before saving anything of that step (exit status 1)."""

    exit_code = 1


def warn(line: str) -> None:
    """One line on stderr (rank 0 calls it): a fault was met and handled."""
    print(line, file=sys.stderr, flush=True)


class _Method(nn.Module):
    """Calls ``module.<method>`` as its forward, so DDP can wrap a task's training entry point that is not
    ``forward`` (the VAE restorer's ``train_forward``)."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.inner, self.method = module, method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, self.method)(*args, **kwargs)


class Task(Protocol):
    """What a model contributes to the engine."""

    name: str
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_module: str | None

    def config(self) -> dict[str, Any]: ...

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray: ...


@dataclass
class TrainResult:
    out: Path
    step: int
    images_per_second: float
    final_losses: dict[str, float]
    checkpoints: list[str] = field(default_factory=list)
    run_id: str | None = None  # set by the MLflow layer when the run was tracked
    model_uri: str | None = None


class Engine:
    def __init__(self, cfg: TrainConfig, rt: Runtime, out: Path) -> None:
        self.cfg, self.rt, self.out = cfg, rt, out
        self.step = 0
        self.generator = torch.Generator(device=rt.device).manual_seed(cfg.seed * 7919 + rt.rank)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
        self.ema: EMA | None = None
        self._fast: dict[tuple[str, str | None], Any] = {}

    @property
    def channels_last(self) -> bool:
        """NHWC activations: faster convolutions on CUDA and on CPU (oneDNN: 62 -> 79 img/s fp32 on the 2-core
        EPYC, 132 with bf16); MPS gains nothing from it."""
        return self.cfg.channels_last and self.rt.device.type in ("cuda", "cpu")

    # ---- helpers for tasks -------------------------------------------------------------------------------
    def autocast(self) -> Any:
        return self.rt.autocast()

    def adam(self, params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
        """Adam, fused on CUDA when enabled (one kernel per step instead of one per tensor)."""
        fused = self.cfg.fused_optimizer and self.rt.device.type == "cuda"
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.rt.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.rt.distributed:  # identical start on every rank
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)
        return module

    def fast(self, name: str, module: nn.Module, method: str | None = None) -> Any:
        """The module to call in the hot loop: DDP-wrapped under ``torchrun``, compiled when ``train.compile`` is on.

        Under DDP every forward pass whose loss trains ``module`` must go through this wrapper (that is where
        DDP hooks the gradient all-reduce into the backward pass); ``method`` names a training entry point other
        than ``forward``. Forward passes under ``no_grad`` or with the module frozen (``requires_grad_(False)``)
        may use it too: they trigger no reduction. The wrapped module keeps its own parameter names, so
        checkpoints and exported weights are the same with and without DDP.
        """
        key = (name, method)
        if key in self._fast:
            return self._fast[key]
        trainable = any(p.requires_grad for p in module.parameters())
        if self.rt.distributed and trainable:
            from torch.nn.parallel import DistributedDataParallel as DDP

            target: nn.Module = _Method(module, method) if method else module
            cuda = self.rt.device.type == "cuda"
            # init_sync=False: prepare_module already gave every rank rank 0's weights (and a rewrap after a
            # checkpoint finds them in sync). broadcast_buffers=False as before DDP: running statistics stay per
            # rank and rank 0's are exported; the in-sync check covers the parameters.
            import inspect

            kw: dict[str, Any] = {"init_sync": False}
            # forward_sync_buffers replaced broadcast_buffers in recent PyTorch (the GPU machines run older ones)
            if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
                kw["forward_sync_buffers"] = False
            else:
                kw["broadcast_buffers"] = False
            wrapped: Any = DDP(target, device_ids=[self.rt.device.index] if cuda else None, **kw)
            fn = torch.compile(wrapped) if self.cfg.compile else wrapped
        else:
            fn = torch.compile(module) if self.cfg.compile else module
            if method:
                fn = getattr(fn, method)
        self._fast[key] = fn
        return fn

    def rewrap(self) -> None:
        """Drop the DDP wrappers (rebuilt at the next call of :meth:`fast`); see the module docstring."""
        if self.rt.distributed and not self.cfg.compile:
            self._fast.clear()

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float in [-1, 1] on the device (channels_last on CUDA and CPU)."""
        x = images.to(self.rt.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """zero_grad -> backward (DDP averages the gradients across ranks as they are produced) -> clip -> step,
        with the grad scaler when fp16."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    # ---- state ---------------------------------------------------------------------------------------------
    def _rng(self) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state(), "step": self.generator.get_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        return rng

    def gather_rng(self) -> list[dict[str, torch.Tensor]] | None:
        """Every rank's RNG states (a collective: all ranks call it), for rank 0's checkpoint.

        Each rank draws its own noise and augmentations; a checkpoint holding only rank 0's states made every
        DDP resume inexact (the other ranks continued from rank 0's generator).
        """
        if not self.rt.distributed:
            return None
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.rt.world_size)]
        nccl = dist.get_backend() == "nccl"
        for key, t in self._rng().items():
            mine = t.to(self.rt.device) if nccl else t
            parts = [torch.empty_like(mine) for _ in range(self.rt.world_size)]
            dist.all_gather(parts, mine)
            for r, part in enumerate(parts):
                out[r][key] = part.cpu()
        return out

    def state(
        self, task: Task, config: dict[str, Any], rng_ranks: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "config": json.dumps(config, sort_keys=True),
            "modules": {k: m.state_dict() for k, m in task.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "step": self.generator.get_state()},
        }
        if self.ema is not None:
            state["ema"] = self.ema.shadow.state_dict()
        if self.rt.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        return state

    def load(self, task: Task, state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
        saved = json.loads(state["config"])
        if saved != config:
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise UserError(
                f"{path}: checkpoint was trained with different settings ({', '.join(diff)}); "
                "resume with the same params or start a new --out"
            )
        for k, m in task.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in task.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow.load_state_dict(state["ema"])
        self.step = int(state["step"])
        ranks = state.get("rng_ranks")
        rng = state["rng"]
        if self.rt.distributed and isinstance(ranks, list) and len(ranks) == self.rt.world_size:
            rng = ranks[self.rt.rank]  # this rank's own streams: the resume is exact
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["step"])
        if "cuda" in rng and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.rt.device)
        if self.rt.distributed and rng is state["rng"] and self.rt.rank > 0:
            # another world size than the checkpoint's: distinct streams per rank (valid, though not exact)
            self.generator.manual_seed(self.cfg.seed * 7919 + self.rt.rank + 1_000_003 * self.step)


def _resume_config(cfg: TrainConfig, task: Task) -> dict[str, Any]:
    """Settings that must match for a resume to be exact (max_steps and bookkeeping may change)."""
    keep = {"batch_size", "seed", "precision", "ema_decay", "ema_start", "grad_clip", "split", "channels_last"}
    return {"train": {k: v for k, v in asdict(cfg).items() if k in keep}, "task": task.config()}


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be logged again), and any line
    that is not valid JSON: a power cut during an append leaves a torn last line, which used to make every
    later ``--resume`` die of a ``JSONDecodeError``."""
    if not log.is_file():
        return
    kept: list[str] = []
    torn: list[int] = []
    for i, ln in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
            if not isinstance(row, dict):
                raise ValueError(ln)
        except ValueError:
            torn.append(i)
            continue
        if int(row.get("step", 0)) <= step:
            kept.append(ln)
    if torn:
        which = "its last line" if len(torn) == 1 else f"{len(torn)} lines ({', '.join(map(str, torn[:5]))})"
        warn(f"warning: {log}: dropped {which}, torn by an interrupted write (line {torn[0]})")
    atomic.write_text(log, "".join(ln + "\n" for ln in kept))


ORPHAN = re.compile(r"^\..+\.tmp-\d+$")
ORPHAN_DIR = re.compile(r"^\.model\.(staging|old)-\d+$")


def remove_temp_files(out: Path) -> list[str]:
    """Temp files and folders left by an interrupted run (killed mid-write); only ever called with the run
    folder's lock held, so no live writer owns them."""
    removed = [p.relative_to(out).as_posix() for p in remove_orphans(out / "checkpoints")]
    for folder in (out, out / "samples", out / "model"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if ORPHAN.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
            elif folder == out and ORPHAN_DIR.match(p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                continue
            removed.append(p.relative_to(out).as_posix())
    return removed


NEVER = 2**62  # "no non-finite step seen" in the per-step divergence tracker


def _finite_weights(task: Task) -> bool:
    for module in task.modules.values():
        tensors = [t.detach() for t in module.parameters()] + [
            b.detach() for b in module.buffers() if b.is_floating_point()
        ]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            return False
    return True


def _last_good(ckpt_dir: Path) -> str:
    found = checkpoints(ckpt_dir)
    return f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint had been written yet"


def fit(
    task: Task,
    engine: Engine,
    images: torch.Tensor,
    labels: torch.Tensor,
    resume: bool = False,
    show_progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, Engine, Task], None] | None = None,
) -> TrainResult:
    """Train ``task`` on uint8 ``images`` / ``labels`` up to ``cfg.max_steps``; see the module docstring.

    ``on_step(step, engine, task)`` runs on rank 0 after every step (after that step's samples and checkpoint),
    so outside code can evaluate mid-training without a second loop (the Optuna tuner reports intermediate
    FIDs and prunes there). It must not draw from the engine's RNGs, or runs stop being reproducible; an
    exception it raises ends training. Single-process only when it raises: the other ranks would wait for it.
    """
    from productgen.common.progress import progress

    cfg, rt, out = engine.cfg, engine.rt, engine.out
    if task.ema_module is not None:
        engine.ema = EMA(task.modules[task.ema_module], cfg.ema_decay)
    ckpt_dir = out / "checkpoints"
    config = _resume_config(cfg, task)
    log_path = out / "metrics.jsonl"
    if rt.is_main:
        removed = remove_temp_files(out) if out.is_dir() else []
        if removed:
            warn(
                f"note: removed {len(removed)} temp file(s) of an interrupted run in {out} "
                f"({', '.join(removed[:3])}{', ...' if len(removed) > 3 else ''})"
            )
    if rt.distributed:
        dist.barrier()  # rank 0 has removed the temp files before any rank reads the folder
    if resume:
        latest, state = load_latest_intact(ckpt_dir, warn=warn if rt.is_main else None, set_aside=rt.is_main)
        engine.load(task, state, config, latest)
        del state
        if rt.is_main:
            _trim_log(log_path, engine.step)
    elif rt.is_main and (latest_checkpoint(ckpt_dir) is not None):
        raise UserError(f"{out}: already holds checkpoints; pass --resume to continue or choose a new --out")
    batches = DeviceBatches(
        images, labels, cfg.batch_size, cfg.seed, rt.device, cfg.data_on_device, rt.rank, rt.world_size
    )
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(
            out / "train_config.json", {"train": asdict(cfg), "task": task.config(), "world_size": rt.world_size}
        )
    sample_gen_seed = cfg.seed + 12345
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    last: dict[str, float] = {}
    t_last, imgs_since = time.perf_counter(), 0
    ips = 0.0
    saved: list[str] = []
    first_bad = torch.full((), NEVER, dtype=torch.long, device=rt.device)  # first step with a non-finite loss
    steps = range(engine.step, cfg.max_steps)
    bar = progress(steps, desc=task.name, unit="step", enabled=show_progress and rt.is_main, total=len(steps))
    for step in bar:
        engine.step = step
        x, y = batches.batch(step)
        losses = task.train_step(engine, x, y)
        if engine.ema is not None and task.ema_module is not None:
            # Warm-up (as TF's ExponentialMovingAverage with num_updates): early on the EMA follows the model
            # closely, so short runs are not dominated by their random initial weights.
            t = step - cfg.ema_start
            decay = 0.0 if t < 0 else min(cfg.ema_decay, (1.0 + t) / (10.0 + t))
            engine.ema.update(task.modules[task.ema_module], decay)
        total = torch.zeros((), device=rt.device)
        for k, v in losses.items():
            sums[k] = sums.get(k, torch.zeros((), device=rt.device)) + v.detach().float()
            total = total + v.detach().float()
        n_sum += 1
        imgs_since += batches.global_batch
        done = step + 1
        engine.step = done
        # No host sync per step: the first non-finite step is kept on the device and read where the loop syncs
        # anyway (before anything of a step is logged, drawn or saved).
        first_bad = torch.where(torch.isfinite(total) | (first_bad != NEVER), first_bad, done)
        logs = done % cfg.log_every == 0 or done == cfg.max_steps
        samples = rt.is_main and (done % cfg.sample_every == 0 or done == cfg.max_steps)
        ckpt = done % cfg.checkpoint_every == 0 or done == cfg.max_steps
        if logs or ckpt or done % cfg.sample_every == 0:
            bad = first_bad.clone()
            if ckpt and not _finite_weights(task):
                bad = torch.minimum(bad, torch.full_like(bad, done))
            if rt.distributed:
                dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            if int(bad.item()) != NEVER:
                raise TrainingDiverged(
                    f"training diverged: a loss or a weight (parameter or running statistic) became NaN/inf at step "
                    f"{int(bad.item())}; nothing of that "
                    f"step was saved, {_last_good(ckpt_dir)} and model/ was not written (lower the learning rates, "
                    "then --resume, or start a new --out)"
                )
        if logs:
            if rt.distributed:
                for v in sums.values():
                    dist.all_reduce(v)
                    v /= rt.world_size
            last = {k: float(v.item()) / n_sum for k, v in sums.items()}
            now = time.perf_counter()
            ips = imgs_since / max(now - t_last, 1e-9)
            t_last, imgs_since, sums, n_sum = now, 0, {}, 0
            if rt.is_main:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": done, **last, "images_per_second": round(ips, 1)}) + "\n")
                if on_log is not None:
                    on_log(done, {**last, "images_per_second": ips})
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({**{k: f"{v:.3f}" for k, v in last.items()}, "img/s": f"{ips:,.0f}"})
        if samples:
            grid = task.sample_grid(engine, torch.Generator(device=rt.device).manual_seed(sample_gen_seed))
            save_png(
                make_grid(grid, ncol=8, scale=max(1, 64 // grid.shape[-2])), out / "samples" / f"step-{done:07d}.png"
            )
        if ckpt:
            rng_ranks = engine.gather_rng()
            if rt.is_main:
                path = save_state(checkpoint_path(ckpt_dir, done), engine.state(task, config, rng_ranks))
                problem = prune_checkpoints(ckpt_dir, cfg.keep_checkpoints, newest=path)
                if problem is not None:
                    warn(
                        f"warning: {problem}: read back wrong right after writing (disk problem?); "
                        "kept every older checkpoint"
                    )
                saved.append(path.name)
            if rt.distributed:
                dist.barrier()
                engine.rewrap()
        if on_step is not None and rt.is_main:
            on_step(done, engine, task)
    if rt.distributed:
        _check_in_sync(task)
    return TrainResult(out=out, step=engine.step, images_per_second=ips, final_losses=last, checkpoints=saved)


def _check_in_sync(task: Task) -> None:
    """Every rank must end with the same weights; a mismatch means gradients were not averaged."""
    for name, module in task.modules.items():
        sums = [p.detach().double().sum() for p in module.parameters()]
        if not sums:
            continue  # parameter-free state (CycleGAN's image history) differs per rank by design
        total = torch.stack(sums).sum().reshape(1)
        lo, hi = total.clone(), total.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RuntimeError(f"DDP ranks diverged: {name} weights differ ({lo.item()} vs {hi.item()})")
