"""The training loop shared by every model: the model-specific part is a :class:`Task`.

A task owns its networks and optimizers and implements one training step; the engine does everything else
the same way for all of them: device and precision (bf16 autocast on CUDA, channels_last, fused Adam,
optional ``torch.compile``), GPU-resident batches, gradient all-reduce under DDP, clipping, EMA, a progress
bar with live losses and images/s, sample grids, complete checkpoints and exact resume.

Exact resume: everything random is drawn from RNGs whose states are in the checkpoint, and the data order is
a pure function of (seed, step), so on CPU a run interrupted at a checkpoint and resumed ends bit-identical
to an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from productgen import atomic
from productgen.config import TrainConfig
from productgen.errors import UserError
from productgen.training.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_state,
    prune_checkpoints,
    save_state,
)
from productgen.training.data import DeviceBatches
from productgen.training.device import Runtime
from productgen.training.ema import EMA
from productgen.viz import make_grid, save_png


class Task(Protocol):
    """What a model contributes to the engine."""

    name: str
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_module: str | None

    def config(self) -> dict[str, Any]: ...

    def train_step(
        self, engine: Engine, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...

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
        self._compiled: dict[str, nn.Module] = {}

    # ---- helpers for tasks -------------------------------------------------------------------------------
    def autocast(self) -> Any:
        return self.rt.autocast()

    def adam(self, params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
        """Adam, fused on CUDA when enabled (one kernel per step instead of one per tensor)."""
        fused = self.cfg.fused_optimizer and self.rt.device.type == "cuda"
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.rt.device)
        if self.cfg.channels_last and self.rt.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        if self.rt.distributed:  # identical start on every rank
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)
        return module

    def fast(self, name: str, module: nn.Module) -> nn.Module:
        """The module to call in the hot loop: compiled when ``train.compile`` is on."""
        if not self.cfg.compile:
            return module
        if name not in self._compiled:
            self._compiled[name] = torch.compile(module)  # type: ignore[assignment]
        return self._compiled[name]

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float in [-1, 1] on the device (channels_last on CUDA)."""
        x = images.to(self.rt.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.cfg.channels_last and self.rt.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """zero_grad -> backward -> DDP all-reduce -> clip -> step, with the grad scaler when fp16."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.rt.distributed:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                flat /= self.rt.world_size
                offset = 0
                for g in grads:
                    g.copy_(flat[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    # ---- state ---------------------------------------------------------------------------------------------
    def state(self, task: Task, config: dict[str, Any]) -> dict[str, Any]:
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
        return state

    def load(self, task: Task, state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
        saved = json.loads(state["config"])
        if saved != config:
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise UserError(f"{path}: checkpoint was trained with different settings ({', '.join(diff)}); "
                            "resume with the same params or start a new --out")  # fmt: skip
        for k, m in task.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in task.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["step"])
        if "cuda" in state["rng"] and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.rt.device)
        self.step = int(state["step"])


def _resume_config(cfg: TrainConfig, task: Task) -> dict[str, Any]:
    """Settings that must match for a resume to be exact (max_steps and bookkeeping may change)."""
    keep = {"batch_size", "seed", "precision", "ema_decay", "ema_start", "grad_clip", "split", "channels_last"}
    return {"train": {k: v for k, v in asdict(cfg).items() if k in keep}, "task": task.config()}


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be logged again)."""
    if not log.is_file():
        return
    lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
    atomic.write_text(log, "".join(ln + "\n" for ln in lines))


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
    from productgen.progress import progress

    cfg, rt, out = engine.cfg, engine.rt, engine.out
    if task.ema_module is not None:
        engine.ema = EMA(task.modules[task.ema_module], cfg.ema_decay)
    ckpt_dir = out / "checkpoints"
    config = _resume_config(cfg, task)
    log_path = out / "metrics.jsonl"
    if resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is None:
            raise UserError(f"{ckpt_dir}: no checkpoint to resume from; run without --resume")
        engine.load(task, load_state(latest), config, latest)
        if rt.is_main:
            _trim_log(log_path, engine.step)
    elif rt.is_main and (latest_checkpoint(ckpt_dir) is not None):
        raise UserError(f"{out}: already holds checkpoints; pass --resume to continue or choose a new --out")
    batches = DeviceBatches(images, labels, cfg.batch_size, cfg.seed, rt.device, cfg.data_on_device,
                            rt.rank, rt.world_size)  # fmt: skip
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "train_config.json", {"train": asdict(cfg), "task": task.config(), "world_size": rt.world_size})
    sample_gen_seed = cfg.seed + 12345
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    last: dict[str, float] = {}
    t_last, imgs_since = time.perf_counter(), 0
    ips = 0.0
    saved: list[str] = []
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
        for k, v in losses.items():
            sums[k] = sums.get(k, torch.zeros((), device=rt.device)) + v.detach().float()
        n_sum += 1
        imgs_since += batches.global_batch
        done = step + 1
        engine.step = done
        if done % cfg.log_every == 0 or done == cfg.max_steps:
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
        if rt.is_main and (done % cfg.sample_every == 0 or done == cfg.max_steps):
            grid = task.sample_grid(engine, torch.Generator(device=rt.device).manual_seed(sample_gen_seed))
            save_png(make_grid(grid, ncol=8, scale=max(1, 64 // grid.shape[-2])), out / "samples" / f"step-{done:07d}.png")
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            if rt.is_main:
                path = save_state(checkpoint_path(ckpt_dir, done), engine.state(task, config))
                prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
                saved.append(path.name)
            if rt.distributed:
                dist.barrier()
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
