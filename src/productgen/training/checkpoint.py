"""Complete training checkpoints in one safetensors file, with no pickle anywhere, verified on every load.

Any nested state (module and optimizer state dicts, EMA weights, grad-scaler state, RNG states, the step)
is split into its tensors, stored by path in safetensors, and a JSON skeleton, stored in the file's metadata,
that says where each tensor goes. Loading rebuilds the same structure without executing anything from the
file. Files are written to a temporary name and renamed, so a crash never leaves half a checkpoint under a
checkpoint's name (an interrupted write leaves a ``.ckpt-*.tmp-<pid>`` file, removed by the next run).

Verification: the metadata carries a SHA-256 of the content (the skeleton, then every tensor's name, dtype,
shape and bytes), computed from the in-memory state as it is written, in the same file (so it is as atomic as
the file). :func:`load_state` recomputes it; a truncated file, a flipped byte in a tensor and a flipped byte in
the header all end as :class:`DamagedCheckpoint` (one line saying what is wrong) instead of a silent resume from
garbage (a probe found NaN losses and a NaN model after an 8 KB flip) or a ``KeyError`` traceback.
:func:`load_latest_intact` walks back to the newest checkpoint that verifies. Files of the first format (no
checksum) still load, unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from productgen.common.errors import UserError

FORMAT = "productgen-checkpoint-v2"  # v2: with a content checksum
FORMATS_UNVERIFIED = {"productgen-checkpoint-v1"}
NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")
TEMP = re.compile(r"^\.ckpt-\d{8}\.safetensors\.tmp-\d+$")
DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be trusted (truncated, bytes changed, not ours); the message says how."""


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__map__": {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
        return {"__pairs__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__list__" if isinstance(obj, list) else "__tuple__"
        return {kind: [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__map__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__map__"].items()}
        if "__pairs__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__pairs__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    return node


def content_digest(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the skeleton and of every tensor (name, dtype, shape, raw bytes) in name order."""
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(skeleton.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and plain values) atomically to ``path``, with its checksum."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_flatten(state, "", tensors))
    digest = content_digest(skeleton, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "skeleton": skeleton, "sha256": digest})
        with open(tmp, "rb+") as fh:  # on disk before the rename makes it a checkpoint
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    size = path.stat().st_size
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types; all mean "unreadable"
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise DamagedCheckpoint(f"{path}: damaged (truncated or bad header, {size} bytes: {first})") from None
    return meta, tensors


def load_state(path: Path) -> dict[str, Any]:
    """The state saved by :func:`save_state`, after checking its checksum (``DamagedCheckpoint`` when it fails)."""
    meta, tensors = _read(path)
    fmt = meta.get("format")
    if fmt != FORMAT and fmt not in FORMATS_UNVERIFIED:
        raise DamagedCheckpoint(f"{path}: damaged or not a productgen checkpoint (format {str(fmt)[:40]!r})")
    skeleton = meta.get("skeleton")
    if not isinstance(skeleton, str):
        raise DamagedCheckpoint(f"{path}: damaged (its header has no skeleton)")
    if fmt == FORMAT and content_digest(skeleton, tensors) != meta.get("sha256"):
        raise DamagedCheckpoint(f"{path}: damaged (checksum mismatch: its bytes changed after it was written)")
    try:
        state = _unflatten(json.loads(skeleton), tensors)
        if not isinstance(state, dict) or "step" not in state:
            raise KeyError("step")
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedCheckpoint(f"{path}: damaged (unreadable structure: {err})") from None
    return state


def verify(path: Path) -> str | None:
    """None when ``path`` is an intact checkpoint, else the one-line reason."""
    try:
        load_state(path)
    except UserError as err:
        return str(err)
    return None


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"ckpt-{step:08d}.safetensors"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name)))


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def load_latest_intact(
    folder: Path, warn: Callable[[str], None] | None = None, set_aside: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``folder`` that verifies, and its state.

    Each damaged newer one is reported through ``warn`` (one line) and, with ``set_aside``, renamed to
    ``<name>.damaged`` (kept for inspection, no longer taken for a checkpoint, never overwritten by pruning).
    Raises a one-line :class:`UserError` when there is no checkpoint or none is intact.
    """
    found = checkpoints(folder)
    if not found:
        raise UserError(f"{folder}: no checkpoint to resume from; run without --resume")
    damaged: list[str] = []
    for _, path in reversed(found):
        try:
            state = load_state(path)
        except UserError as err:
            if not path.exists():  # another rank set it aside while we looked
                continue
            damaged.append(path.name)
            if set_aside:
                os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
            if warn is not None:
                moved = f"; kept as {path.name}{DAMAGED_SUFFIX}" if set_aside else ""
                warn(f"warning: {str(err).rstrip('.')}{moved}; trying the previous checkpoint")
            continue
        return path, state
    raise UserError(
        f"{folder}: no intact checkpoint to resume from ({', '.join(damaged)} damaged); "
        "start a new --out, or run without --resume after moving the folder away"
    )


def prune_checkpoints(folder: Path, keep: int, newest: Path | None = None) -> str | None:
    """Delete all but the ``keep`` newest checkpoints, never the last verified one.

    ``newest`` (the checkpoint just written) is read back and verified first: only when it is intact are older
    ones deleted, so a write that went wrong (a failing disk) can never leave a run without an intact
    checkpoint. Returns the reason when pruning was skipped.
    """
    if newest is not None:
        problem = verify(newest)
        if problem is not None:
            return problem
    found = checkpoints(folder)
    for _, p in found[: -max(1, keep)]:
        if newest is None or p != newest:
            p.unlink(missing_ok=True)
    return None


def remove_orphans(folder: Path) -> list[Path]:
    """Delete temp files of interrupted checkpoint writes (call with the run folder's lock held)."""
    removed: list[Path] = []
    if folder.is_dir():
        for p in folder.iterdir():
            if TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
