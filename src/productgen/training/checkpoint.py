"""Complete training checkpoints in one safetensors file, with no pickle anywhere.

Any nested state (module and optimizer state dicts, EMA weights, grad-scaler state, RNG states, the step)
is split into its tensors, stored by path in safetensors, and a JSON skeleton, stored in the file's metadata,
that says where each tensor goes. Loading rebuilds the same structure without executing anything from the
file. Files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from productgen.errors import UserError

FORMAT = "productgen-checkpoint-v1"
NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")


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


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and plain values) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "skeleton": json.dumps(skeleton)})
    os.replace(tmp, path)
    return path


def load_state(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a productgen checkpoint")
    return _unflatten(json.loads(meta["skeleton"]), load_file(str(path)))


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"ckpt-{step:08d}.safetensors"


def latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name)))
    return found[-1][1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name)))
    for _, p in found[:-keep]:
        p.unlink()
