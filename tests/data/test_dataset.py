"""OVPKLDataset: same boxes as converted, RGB order, depth in metres, consistent augmentation, errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from .conftest import CLASSES, aicity_config, augmentation, identity_normalize
from sparse4d.batch import normalized_images
from sparse4d.data.collate import collate_sparse4d
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.dataset import OVPKLDataset, SampleKey
from sparse4d.data.safe_pickle import safe_load
from sparse4d.errors import DataError


@pytest.fixture()
def converted(aicity_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    summary = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    return summary.annotation_files[0], aicity_root / "train"


def _dataset(ann_file: Path, data_root: Path, **kwargs) -> OVPKLDataset:
    options = {"classes": CLASSES, "augmentation": augmentation(), "normalize": identity_normalize(), **kwargs}
    return OVPKLDataset(ann_file, data_root=data_root, **options)


def test_loaded_boxes_and_ids_match_the_conversion(converted) -> None:
    ann_file, data_root = converted
    infos = safe_load(ann_file)["infos"]
    dataset = _dataset(ann_file, data_root, test_mode=True, use_valid_flag=False)
    for index in (0, 7, 19):
        sample = dataset[index]
        np.testing.assert_array_equal(sample["gt_bboxes_3d"].numpy(), infos[index]["gt_boxes"])
        np.testing.assert_array_equal(sample["instance_ids"].numpy(), infos[index]["gt_instance_ids"])
        assert [CLASSES[i] for i in sample["gt_labels_3d"]] == infos[index]["gt_names"]
        np.testing.assert_allclose(sample["projection_mat"].numpy(), infos[index]["world_to_image"], rtol=1e-5, atol=1e-3)


def test_rgb_order_and_depth_in_metres(converted) -> None:
    ann_file, data_root = converted
    dataset = _dataset(ann_file, data_root, test_mode=True)
    sample = dataset[4]
    info = dataset.infos[4]
    bgr = cv2.imread(info["image_paths"][1])
    assert sample["img"].dtype == torch.uint8  # normalised later, on the model's device
    image = sample["img"][1].numpy().astype(np.float32)
    assert image.shape == (3, 128, 256)
    np.testing.assert_allclose(image[0], bgr[..., 2], atol=1.0)  # channel 0 is red
    np.testing.assert_allclose(image[2], bgr[..., 0], atol=1.0)
    relative, key = info["depth_refs"][1]
    with h5py.File(data_root / relative) as handle:
        expected = handle[key][()] / 1000.0
    np.testing.assert_allclose(sample["gt_depth"][1].numpy(), expected, atol=1e-6)
    assert 3.0 < float(sample["gt_depth"].max()) < 66.0


def test_depth_targets_pooled_to_the_first_level_stride(converted) -> None:
    ann_file, data_root = converted
    full, pooled = _dataset(ann_file, data_root, test_mode=True), _dataset(ann_file, data_root, test_mode=True, depth_stride=4)
    assert pooled.depth_hw == (32, 64)
    depth = pooled[4]["gt_depth"]
    assert depth.shape == (2, 32, 64) and depth.dtype == torch.float32
    full_depth = full[4]["gt_depth"].numpy()  # 128x256: each 4x4 cell's closest known depth
    cells = np.where(full_depth > 0, full_depth, np.inf).reshape(2, 32, 4, 64, 4).min(axis=(2, 4))
    np.testing.assert_array_equal(depth.numpy(), np.where(np.isinf(cells), 0.0, cells))
    assert float(depth.max()) > 3.0


def test_augmented_projection_agrees_with_augmented_depth(converted) -> None:
    """Floor points projected with the augmented projection_mat hit pixels whose depth equals d."""
    ann_file, data_root = converted
    aug = augmentation(resize_lim=[1.1, 1.3], bot_pct_lim=[0.0, 0.1], rot_lim=[-8.0, 8.0], rand_flip=True,
                       rot3d_range=[-0.4, 0.4])
    dataset = _dataset(ann_file, data_root, sequences_split_num=5)
    rng = np.random.default_rng(0)
    floor = np.concatenate([rng.uniform(-15, 15, (400, 2)), np.zeros((400, 1)), np.ones((400, 1))], axis=1)
    dataset_aug = _dataset(ann_file, data_root, augmentation=aug, sequences_split_num=5)
    for key in (SampleKey(2, False, (0, 0, 1)), SampleKey(2, False, (0, 0, 2)), SampleKey(9, True, (1, 3, 5))):
        sample = dataset_aug[key]
        matches = total = 0
        for camera in range(2):
            points = floor @ sample["projection_mat"][camera].numpy().astype(np.float64).T
            depth, (u, v) = points[:, 2], (points[:, :2] / points[:, 2:3]).T
            inside = (depth > 0) & (u > 2) & (u < 253) & (v > 2) & (v < 125)
            target = sample["gt_depth"][camera].numpy()[np.round(v[inside]).astype(int), np.round(u[inside]).astype(int)]
            total += inside.sum()
            matches += (np.abs(target - depth[inside]) < 0.03 * depth[inside] + 0.05).sum()
        assert total > 50 and matches > 0.8 * total  # the rest is hidden by objects or at depth edges
    assert not torch.equal(dataset_aug[SampleKey(2, False, (0, 0, 1))]["img"], dataset[2]["img"])


def test_augmentation_is_consistent_within_a_sequence(converted) -> None:
    ann_file, data_root = converted
    aug = augmentation(resize_lim=[1.0, 1.4], rot_lim=[-8.0, 8.0], rand_flip=True, rot3d_range=[-0.4, 0.4])
    dataset = _dataset(ann_file, data_root, augmentation=aug, sequences_split_num=10)
    first, second, other = dataset[0], dataset[1], dataset[10]
    world_to_image = np.asarray(dataset.infos[0]["world_to_image"])
    # same camera, same augmentation => same projection within the sequence, different in the next
    assert torch.allclose(first["projection_mat"], second["projection_mat"])
    assert not torch.allclose(first["projection_mat"], other["projection_mat"])
    assert not np.allclose(first["projection_mat"].numpy(), world_to_image, atol=1e-2)
    assert first["first_frame"] and not second["first_frame"] and other["first_frame"]


def test_wrong_depth_dtype_is_refused(converted) -> None:
    ann_file, data_root = converted
    relative, key = safe_load(ann_file)["infos"][0]["depth_refs"][0]
    with h5py.File(data_root / relative, "a") as handle:
        values = handle[key][()]
        del handle[key]
        handle.create_dataset(key, data=values.astype(np.float32))
    dataset = _dataset(ann_file, data_root, test_mode=True)
    with pytest.raises(DataError, match="dtype float32, expected uint16"):
        dataset[0]


def test_class_mismatch_is_a_startup_error(converted) -> None:
    ann_file, data_root = converted
    with pytest.raises(DataError, match=r"in data but not listed: \['nova_carter'\]"):
        _dataset(ann_file, data_root, classes=CLASSES[:3])
    with pytest.raises(DataError, match=r"listed but never present: \['forklift'\]"):
        _dataset(ann_file, data_root, classes=[*CLASSES, "forklift"])
    with pytest.raises(DataError, match="gr1_t2"):  # both lists are named
        _dataset(ann_file, data_root, classes=["Person", "FourierGR1T2", "AgilityDigit", "NovaCarter"])


def test_collate_builds_the_batch_contract(converted) -> None:
    ann_file, data_root = converted
    dataset = _dataset(ann_file, data_root, sequences_split_num=10)
    batch = collate_sparse4d([dataset[0], dataset[11]])
    assert batch["img"].shape == (2, 2, 3, 128, 256) and batch["img"].dtype == torch.uint8
    assert batch["img_mean"].shape == batch["img_std"].shape == (2, 3) and batch["img_mean"].dtype == torch.float32
    images = normalized_images(batch)
    assert images.dtype == torch.float32 and images.shape == batch["img"].shape
    mean, std = dataset.mean.reshape(1, 1, 3, 1, 1), dataset.std.reshape(1, 1, 3, 1, 1)
    np.testing.assert_allclose(images.numpy(), (batch["img"].numpy().astype(np.float32) - mean) / std, rtol=1e-6, atol=1e-5)
    assert batch["projection_mat"].shape == (2, 2, 4, 4)
    assert batch["image_wh"][0, 0].tolist() == [256.0, 128.0]
    assert batch["gt_depth"].shape == (2, 2, 128, 256)
    no_depth = _dataset(ann_file, data_root, sequences_split_num=10, with_depth=False)
    assert "gt_depth" not in no_depth[0]  # evaluation: no depth loss, so no zero maps to move around
    assert "gt_depth" not in collate_sparse4d([no_depth[0], no_depth[11]])
    with pytest.raises(DataError, match="1 of 2 samples of one batch have 'gt_depth'"):
        collate_sparse4d([dataset[0], no_depth[11]])
    assert batch["timestamp"].dtype == torch.float64 and batch["timestamp"].tolist() == pytest.approx([0.0, 11 / 30])
    assert batch["first_frame"].tolist() == [True, False]
    assert batch["gt_bboxes_3d"][0].shape[1] == 10 and batch["gt_labels_3d"][0].dtype == torch.int64
    assert batch["sample_token"] == ["Warehouse_000/0/000000", "Warehouse_000/0/000011"]
    assert batch["scene"] == ["Warehouse_000", "Warehouse_000"]


def test_scene_rotation_moves_boxes_and_cameras_together(converted) -> None:
    ann_file, data_root = converted
    dataset = _dataset(ann_file, data_root, augmentation=augmentation(rot3d_range=[0.3, 0.5]), use_valid_flag=False)
    sample, info = dataset[6], dataset.infos[6]
    boxes = sample["gt_bboxes_3d"].numpy().astype(np.float64)
    assert not np.allclose(boxes[:, :3], info["gt_boxes"][:, :3], atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(boxes[:, 7:9], axis=1), np.linalg.norm(info["gt_boxes"][:, 7:9], axis=1),
                               rtol=1e-4, atol=1e-5)
    for camera in range(2):
        rotated = np.c_[boxes[:, :3], np.ones(len(boxes))] @ sample["projection_mat"][camera].numpy().astype(np.float64).T
        original = np.c_[info["gt_boxes"][:, :3], np.ones(len(boxes))] @ info["world_to_image"][camera].T
        np.testing.assert_allclose(rotated[:, :2] / rotated[:, 2:3], original[:, :2] / original[:, 2:3], atol=0.05)


def test_training_split_pools_depth_to_the_first_fpn_level(converted) -> None:
    from sparse4d.config.dataset import DatasetConfig
    from sparse4d.config.model import ModelConfig
    from sparse4d.engine.data_module import build_dataset

    ann_file, data_root = converted
    dataset_cfg = DatasetConfig.model_validate({
        "data_root": str(data_root), "classes": CLASSES, "augmentation": augmentation().model_dump(),
        "train_dataset": {"ann_file": str(ann_file)}, "val_dataset": {"ann_file": str(ann_file)}})
    for start_level, stride in ((0, 4), (1, 8)):
        model_cfg = ModelConfig.model_validate({"input_shape": [256, 128], "neck": {"start_level": start_level}})
        train = build_dataset(dataset_cfg, model_cfg, "train")
        assert train.with_depth and train.depth_stride == stride
        assert train[0]["gt_depth"].shape == (2, 128 // stride, 256 // stride)
    assert not build_dataset(dataset_cfg, model_cfg, "val").with_depth
