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

    `draw` rolls the dice on the host; `hide_grid` applies them with a few broadcast kernels, inside
    the training step's compiled image region (`Sparse4D.encode_images`).
    """

    def __init__(self, ratio: float = 0.5, prob: float = 0.7) -> None:
        super().__init__()
        self.ratio = ratio
        self.prob = prob

    def draw(self, img: Tensor) -> Tensor:
        """Grids for the images of `img` (..., 3, H, W): int64 (5, n) on img's device, per image
        (applied?, period d, square side, row offset, column offset); one small upload, no sync."""
        n = img[..., 0, 0, 0].numel()
        h, w = img.shape[-2:]
        apply = torch.rand(n) <= self.prob
        d = torch.randint(2, max(min(h, w), 3), (n,))
        side = (d * self.ratio + 0.5).long().clamp(min=1)
        oy = (torch.rand(n) * d).long()
        ox = (torch.rand(n) * d).long()
        return to_device(torch.stack([apply.long(), d, side, oy, ox]).numpy(), img.device)

    def forward(self, img: Tensor) -> Tensor:
        return hide_grid(img, self.draw(img)) if self.training else img


def hide_grid(img: Tensor, grids: Tensor) -> Tensor:
    """img (..., 3, H, W) with the squares of `grids` (GridMask.draw's (5, n), n images) set to 0."""
    shape = img.shape
    flat = img.reshape(-1, *shape[-3:])
    h, w = flat.shape[-2:]
    apply, d, side, oy, ox = grids[:, :, None]
    hide_y = (torch.arange(h, device=img.device) + oy) % d < side  # (n, H)
    hide_x = (torch.arange(w, device=img.device) + ox) % d < side  # (n, W)
    keep = ~(hide_y[:, :, None] & hide_x[:, None, :] & (apply[:, :, None] > 0))
    return (flat * keep[:, None].to(img.dtype)).reshape(shape)
