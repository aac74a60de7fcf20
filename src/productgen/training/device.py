"""Device, precision and distributed setup, chosen once per run."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from productgen.common.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for full fp32
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` prefers CUDA (this process's local rank), then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device: {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: CUDA requested but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:  # plain "cuda": this process's GPU (set_device needs an index)
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16), read from ``/proc/cpuinfo``.

    Why not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: it is true on any AVX512 core, where oneDNN
    emulates bf16 and autocast is slower than fp32. Where the flags cannot be read (not Linux) the answer is no,
    so ``precision: auto`` stays fp32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on CUDA GPUs that have it and on CPUs with native bf16 (a GAN train step 1.8x
    faster with channels_last on the 2-core EPYC, bench/bench_train.py; docs/models.md), full fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def init_runtime(device_name: str, precision: str) -> Runtime:
    """Set up this process; under ``torchrun`` (WORLD_SIZE > 1) join the process group (NCCL on GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(
        device=device, dtype=pick_dtype(precision, device), rank=rank, world_size=world, local_rank=local_rank
    )


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
