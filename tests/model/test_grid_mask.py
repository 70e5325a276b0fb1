"""GridMask: a random regular grid of hidden squares per image, in training only."""
from __future__ import annotations

import torch

from sparse4d.model.grid_mask import GridMask


def test_hides_a_periodic_grid_per_image_and_nothing_in_eval() -> None:
    torch.manual_seed(0)
    img = torch.rand(4, 6, 3, 64, 96) + 0.5  # no zeros before masking
    mask = GridMask(ratio=0.5, prob=0.7).train()
    out = mask(img)
    assert out.shape == img.shape
    hidden = (out == 0).reshape(24, 3, 64, 96)
    assert torch.equal(hidden[:, 0], hidden[:, 1]) and torch.equal(hidden[:, 0], hidden[:, 2])  # one mask for all channels
    kept = out != 0
    assert torch.equal(out[kept], img[kept])  # visible pixels untouched
    masked = [i for i in range(24) if hidden[i, 0].any()]
    assert 8 <= len(masked) < 24  # prob 0.7 of 24 images: some masked, some not
    for i in masked:
        rows = hidden[i, 0].any(dim=1)
        cols = hidden[i, 0].any(dim=0)
        # hidden pixels are exactly the crossings of hidden rows and hidden columns (squares on a grid)
        assert torch.equal(hidden[i, 0], rows[:, None] & cols[None, :])
    share = torch.stack([hidden[i, 0].float().mean() for i in masked])
    assert 0.1 < float(share.mean()) < 0.45  # about ratio^2 = 0.25 of each masked image
    assert torch.equal(mask.eval()(img), img)


def test_every_image_masked_with_prob_one() -> None:
    torch.manual_seed(1)
    out = GridMask(ratio=0.5, prob=1.0).train()(torch.ones(8, 3, 32, 32))
    assert all(bool((out[i] == 0).any()) for i in range(8))
