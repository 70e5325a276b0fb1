"""GridMask augmentation (training only): hide a regular grid of squares in each camera image."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .matching import to_device


class GridMask(nn.Module):
    """With probability `prob` per image, zero squares of side `ratio` x d on a grid of period d.

    d is drawn per image in [2, min(H, W)) and the grid gets a random offset, so every image loses a
    different, spread-out quarter of its pixels (ratio 0.5) and the detector cannot rely on any one
    patch. No rotation (upstream rotates by 0 degrees in its Sparse4D configs as well: rotate=1).
    """

    def __init__(self, ratio: float = 0.5, prob: float = 0.7) -> None:
        super().__init__()
        self.ratio = ratio
        self.prob = prob

    def forward(self, img: Tensor) -> Tensor:
        if not self.training:
            return img
        shape = img.shape
        flat = img.reshape(-1, *shape[-3:])
        n, _, h, w = flat.shape
        # Per image on the host: applied?, period d, square side, offsets; then one small upload and a
        # few broadcast kernels for all images (a loop over images launched ~6 kernels each).
        apply = torch.rand(n) <= self.prob
        d = torch.randint(2, max(min(h, w), 3), (n,))
        side = (d * self.ratio + 0.5).long().clamp(min=1)
        oy = (torch.rand(n) * d).long()
        ox = (torch.rand(n) * d).long()
        params = torch.stack([apply.long(), d, side, oy, ox]).numpy()
        apply, d, side, oy, ox = to_device(params, img.device)[:, :, None]
        hide_y = (torch.arange(h, device=img.device) + oy) % d < side  # (n, H)
        hide_x = (torch.arange(w, device=img.device) + ox) % d < side  # (n, W)
        keep = ~(hide_y[:, :, None] & hide_x[:, None, :] & (apply[:, :, None] > 0))
        return (flat * keep[:, None].to(img.dtype)).reshape(shape)
