"""Compact sharded storage for prepared images.

One safetensors file per shard (``images`` uint8 ``[N, H, W, C]`` and ``labels`` int64 ``[N]``) instead of
one file per image: DVC hashes a handful of large files quickly where it crawls over 70,000 small ones, and
safetensors loads without unpickling anything.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from productgen.common.errors import UserError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write one shard atomically (temp file + rename) and return its sha256."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"shard images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"images": np.ascontiguousarray(images), "labels": labels.astype(np.int64)},
        str(tmp),
        metadata={"format": "productgen-shard-nhwc"},  # one key: safetensors orders several at random
    )
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return sha256_file(path)


def read_shard(path: Path, expected_sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one shard, checking its hash when one is given (a mismatch means a corrupted or edited file)."""
    if not path.is_file():
        raise UserError(f"{path}: shard missing (re-run 'productgen data prepare' or 'dvc pull')")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise UserError(f"{path}: shard content does not match dataset.json (re-run prepare or 'dvc pull')")
    tensors = load_file(str(path))
    return tensors["images"], tensors["labels"]
