"""When a run saves a reconstruction grid (SparK's figure), and saving it."""
from __future__ import annotations

from typing import Optional

import torch

from ..spark import reconstruction_grid
from .monitor import Monitor


class Reconstructions:
    def __init__(self, monitor: Monitor, enabled: bool, every: int, images: int, total_steps: int, patch_size: int):
        self.monitor, self.enabled, self.every, self.images = monitor, enabled, every, images
        self.total_steps, self.patch_size = total_steps, patch_size

    def due(self, step: int, ends_epoch: bool) -> bool:
        """After the first step, at the end of each epoch and of the run, and every ``every`` steps."""
        return self.enabled and (step == 1 or ends_epoch or step == self.total_steps
                                 or (self.every > 0 and step % self.every == 0))

    def save(self, step: int, images: torch.Tensor, visible: torch.Tensor,
             reconstruction: torch.Tensor) -> Optional[str]:
        n = min(self.images, images.shape[0])
        grid = reconstruction_grid(images[:n], visible[:n], reconstruction[:n], self.patch_size)
        return self.monitor.images(step, grid)
