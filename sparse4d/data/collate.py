"""Collating samples of `OVPKLDataset` into the batch contract of sparse4d/batch.py."""
from __future__ import annotations

from typing import Any

import torch

from sparse4d.errors import DataError

STACKED_KEYS = ("img", "img_mean", "img_std", "projection_mat", "image_wh")
OPTIONAL_STACKED_KEYS = ("gt_depth",)  # only samples of a dataset with depth targets have it
LIST_KEYS = ("gt_bboxes_3d", "gt_labels_3d", "instance_ids", "sample_token", "scene")


def collate_sparse4d(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        raise DataError("cannot collate an empty batch")
    shapes = {tuple(sample["img"].shape) for sample in samples}
    if len(shapes) != 1:
        raise DataError(f"samples of one batch differ in cameras/size {sorted(shapes)}",
                        hint="every annotation file of a dataset must have the same number of cameras per group")
    batch: dict[str, Any] = {key: torch.stack([sample[key] for sample in samples]) for key in STACKED_KEYS}
    for key in OPTIONAL_STACKED_KEYS:
        present = sum(key in sample for sample in samples)
        if present == len(samples):
            batch[key] = torch.stack([sample[key] for sample in samples])
        elif present:
            raise DataError(f"{present} of {len(samples)} samples of one batch have '{key}'",
                            hint="build every sample of a batch from the same dataset")
    batch["timestamp"] = torch.tensor([sample["timestamp"] for sample in samples], dtype=torch.float64)
    batch["first_frame"] = torch.tensor([sample["first_frame"] for sample in samples], dtype=torch.bool)
    for key in LIST_KEYS:
        batch[key] = [sample[key] for sample in samples]
    return batch
