"""GridMask augmentation (training only): hide a regular grid of squares in each camera image."""
from __future__ import annotations

import torch
from torch import Tensor, nn


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
        device = img.device
        masks = torch.ones(n, 1, h, w, device=device, dtype=img.dtype)
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        for i in range(n):
            if torch.rand(()) > self.prob:
                continue
            d = int(torch.randint(2, max(min(h, w), 3), ()))
            side = max(int(d * self.ratio + 0.5), 1)
            oy, ox = int(torch.randint(0, d, ())), int(torch.randint(0, d, ()))
            hide_y = ((ys + oy) % d) < side
            hide_x = ((xs + ox) % d) < side
            masks[i, 0] = (~(hide_y[:, None] & hide_x[None, :])).to(img.dtype)
        return (flat * masks).reshape(shape)
