"""Batches drawn from one uint8 tensor held on the device, in an order that depends only on (seed, step).

Because the order is a pure function of the step, the data position in a checkpoint is just the step, and a
resumed run sees exactly the batches an uninterrupted one would. Under DDP every rank computes the same global
batch and takes its own slice.
"""

from __future__ import annotations

import torch


class DeviceBatches:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
        device: torch.device,
        on_device: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) < batch_size * world_size:
            raise ValueError(
                f"dataset has {len(images)} images, fewer than one global batch ({batch_size * world_size})"
            )
        self.device = device
        self.images = images.to(device) if on_device else images
        self.labels = labels.to(device) if on_device else labels
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(images) // self.global_batch
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """This epoch's order, drawn on the CPU (the same on every device) and kept where the images are: a
        per-step copy of the indices from pageable host memory would wait for the GPU to finish the previous
        step, so the CPU could never run ahead and queue the next one."""
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.images), generator=g).to(self.images.device)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch
        batch = self._permutation(epoch)[start : start + self.global_batch]
        return batch[self.rank :: self.world_size]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images ``[B, C, H, W]`` and int64 labels of this rank for global ``step``, on the device."""
        idx = self.indices(step)
        if self.images.device != self.device:
            return self.images[idx].to(self.device, non_blocking=True), self.labels[idx].to(self.device)
        return self.images[idx], self.labels[idx]
