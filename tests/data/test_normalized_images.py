"""uint8 images with their normalisation in the batch, normalised where the model runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.batch import normalized_images
from sparse4d.errors import DataError
from sparse4d.model.sparse4d import Sparse4D
from tests.model.model_helpers import IMAGE_MEAN, IMAGE_STD, random_anchors, small_config, synthetic_batch, with_uint8_images

MEAN = torch.tensor(IMAGE_MEAN)
STD = torch.tensor(IMAGE_STD)


def uint8_batch(batch_size: int = 2, seed: int = 0) -> dict:
    return with_uint8_images(synthetic_batch(batch_size, seed=seed), seed)


def test_uint8_images_are_normalised_per_channel() -> None:
    batch = uint8_batch()
    images = normalized_images(batch)
    assert images.dtype == torch.float32 and images.shape == batch["img"].shape
    expected = (batch["img"].numpy().astype(np.float32) - MEAN.numpy()[:, None, None]) / STD.numpy()[:, None, None]
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-6, atol=1e-5)


def test_float_images_pass_through_and_stats_are_required_for_uint8() -> None:
    batch = synthetic_batch(1)
    assert normalized_images(batch) is batch["img"]
    bare = uint8_batch()
    del bare["img_std"]
    with pytest.raises(DataError, match="img_mean/img_std"):
        normalized_images(bare)


def test_the_model_sees_the_same_images_either_way(tmp_path) -> None:
    """A uint8 batch and the same batch normalised on the host give the same detections."""
    path = tmp_path / "anchor_init.npy"
    np.save(path, random_anchors(64))
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(str(path)), num_classes=3).eval()
    as_uint8 = uint8_batch(seed=4)
    as_float = {k: v for k, v in as_uint8.items() if k not in ("img_mean", "img_std")}
    as_float["img"] = normalized_images(as_uint8)
    with torch.no_grad():
        out_uint8 = model(as_uint8)["decoded"]
        model.reset_temporal_state()
        out_float = model(as_float)["decoded"]
    for key in out_float:
        torch.testing.assert_close(out_uint8[key], out_float[key], rtol=0, atol=0, msg=key)
