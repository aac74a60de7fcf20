"""Loading a prepared dataset: as one uint8 tensor (for GPU-resident training) or as a PyTorch ``Dataset``.

>>> ds = PreparedDataset("artifacts/prepared")
>>> images, labels = ds.tensors("train")            # uint8 [N, C, H, W], int64 [N]
>>> images = images.to("cuda", non_blocking=True)   # 70,000 x 28 x 28 is 55 MB: keep it on the GPU
>>> loader = DataLoader(ds.torch_dataset("train"), batch_size=128, shuffle=True)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from productgen.common.errors import UserError
from productgen.data.prepare import FORMAT, SPLITS
from productgen.data.shards import read_shard


class PreparedDataset:
    """A folder written by ``productgen data prepare``; shards are checked against their sha256 on load."""

    def __init__(self, root: str | Path, verify: bool = True) -> None:
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise UserError(f"{self.root}: no dataset.json; run 'productgen data prepare' (or 'dvc pull') first")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{meta_path}: not valid JSON ({err}); re-run 'productgen data prepare'") from None
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{meta_path}: not a productgen prepared dataset")
        self.verify = verify
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    @cached_property
    def counts(self) -> dict[str, int]:
        return {s: int(self.meta["counts"].get(s, 0)) for s in SPLITS}

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[N, H, W, C]`` uint8 and labels ``[N]`` int64 of one split, as numpy arrays."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        if split not in self._cache:
            parts = [
                read_shard(self.root / sh["file"], sh["sha256"] if self.verify else None)
                for sh in self.meta["shards"][split]
            ]
            r, c = self.resolution, self.channels
            images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, r, r, c), np.uint8)
            labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int64)
            self._cache[split] = (images, labels)
        return self._cache[split]

    def tensors(self, split: str, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images as one uint8 ``[N, C, H, W]`` tensor and labels as int64, on ``device``.

        Kept in uint8 (4x smaller than float) so whole datasets fit on the GPU; convert per batch.
        """
        images, labels = self.arrays(split)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(labels)
        return x.to(device), y.to(device)

    def torch_dataset(
        self, split: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> ProductImages:
        images, labels = self.tensors(split)
        return ProductImages(images, labels, transform)


class ProductImages(Dataset[tuple[torch.Tensor, int]]):
    """``(image, label)`` pairs; image is float in [-1, 1], ``[C, H, W]``, unless ``transform`` says otherwise."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        x = self.transform(x) if self.transform else x.float().div(127.5).sub(1.0)
        return x, int(self.labels[index])
