"""dataset_convert on generated scenes, tidy and untidy."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from .conftest import aicity_config
from sparse4d.data.convert import FRAME_KEYS, run_dataset_convert
from sparse4d.data.safe_pickle import safe_load
from sparse4d.errors import DataError, InputFileError

SCENE = "Warehouse_000"


def _gt_path(root: Path) -> Path:
    return root / "train" / SCENE / "ground_truth.json"


def _edit_ground_truth(root: Path, edit) -> None:
    ground_truth = json.loads(_gt_path(root).read_text())
    edit(ground_truth)
    _gt_path(root).write_text(json.dumps(ground_truth))


def _infos(summary) -> list[dict]:
    return safe_load(summary.annotation_files[0])["infos"]


def test_outputs_names_and_frame_keys(aicity_root: Path, tmp_path: Path) -> None:
    summary = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    assert [path.name for path in summary.annotation_files] == [f"{SCENE}+bev-sensor-random-0_infos_train.pkl"]
    payload = safe_load(summary.annotation_files[0])
    infos = payload["infos"]
    assert len(infos) == 20 and summary.frames == 20
    assert set(infos[0]) == set(FRAME_KEYS)
    assert payload["metadata"]["classes"] == ["person", "gr1_t2", "agility_digit", "nova_carter"]
    for info in infos:
        assert all(Path(path).is_absolute() and Path(path).is_file() for path in info["image_paths"])
        assert info["depth_refs"][0] == (f"{SCENE}/depth_maps/Camera_0000.h5", f"distance_to_image_plane_{info['frame_index']:05d}.png")
    anchors = np.load(summary.anchor_file)
    assert anchors.shape == (16, 11) and anchors.dtype == np.float32
    np.testing.assert_allclose(np.hypot(anchors[:, 6], anchors[:, 7]), 1.0, atol=1e-5)
    assert list(summary.boxes_per_class) == ["person", "gr1_t2", "agility_digit", "nova_carter"]
    assert min(summary.boxes_per_class.values()) >= 20  # one of each class in every frame, at least
    assert sum(summary.boxes_per_class.values()) == sum(len(info["gt_names"]) for info in infos)


def test_recentering_keeps_projections_and_stores_offset(aicity_root: Path, tmp_path: Path) -> None:
    summary = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    info = _infos(summary)[5]
    raw = json.loads(_gt_path(aicity_root).read_text())["5"]
    sensors = json.loads((aicity_root / "train" / SCENE / "calibration.json").read_text())["sensors"]
    offset = info["world_offset"]
    assert np.linalg.norm(offset[:2]) > 1.0 and offset[2] == 0.0
    by_id = {obj["object id"]: obj for obj in raw}
    for box, object_id in zip(info["gt_boxes"], info["gt_instance_ids"]):
        original = np.array(by_id[int(object_id)]["3d location"])
        np.testing.assert_allclose(box[:3] + offset, original, atol=1e-4)
        for camera, sensor in enumerate(sensors):
            expected = np.array(sensor["cameraMatrix"]) @ np.append(original, 1.0)
            got = info["world_to_image"][camera] @ np.append(box[:3], 1.0)
            np.testing.assert_allclose(got[:2] / got[2], expected[:2] / expected[2], atol=1e-3)
    scale = by_id[int(info["gt_instance_ids"][0])]["3d bounding box scale"]
    np.testing.assert_allclose(info["gt_boxes"][0][[4, 3, 5]], scale, atol=1e-6)  # l, w, h from [l, w, h]


def test_velocities_follow_the_tracks(aicity_root: Path, tmp_path: Path) -> None:
    infos = _infos(run_dataset_convert(aicity_config(aicity_root), tmp_path / "out"))
    before, now, after = infos[9], infos[10], infos[11]
    for row, object_id in enumerate(now["gt_instance_ids"]):
        previous = before["gt_boxes"][list(before["gt_instance_ids"]).index(object_id)]
        following = after["gt_boxes"][list(after["gt_instance_ids"]).index(object_id)]
        expected = (following[:3] - previous[:3]) * 30.0 / 2
        np.testing.assert_allclose(now["gt_boxes"][row][7:10], expected, atol=1e-3)
        assert 0.05 < np.linalg.norm(expected) < 5.0


def test_converting_twice_is_byte_identical_and_reuses_frames(aicity_root: Path, tmp_path: Path) -> None:
    first = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    pickles = {path: path.read_bytes() for path in first.annotation_files}
    anchors = first.anchor_file.read_bytes()
    frame = Path(_infos(first)[3]["image_paths"][1])
    stamp = frame.stat().st_mtime_ns
    second = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    assert {path: path.read_bytes() for path in second.annotation_files} == pickles
    assert second.anchor_file.read_bytes() == anchors
    assert frame.stat().st_mtime_ns == stamp  # extracted once, reused


def test_too_few_boxes_for_anchors_says_how_many_frames(aicity_root: Path, tmp_path: Path) -> None:
    import math
    import re

    with pytest.raises(DataError, match=r"num_anchor=500 .* about \d+ frames") as info:
        run_dataset_convert(aicity_config(aicity_root, anchor_init_config={"num_anchor": 500}), tmp_path / "out")
    boxes, frames = map(int, re.search(r"(\d+) boxes in (\d+) frames", str(info.value)).groups())
    needed = int(re.search(r"about (\d+) frames", str(info.value)).group(1))
    assert needed == math.ceil(500 / (boxes / frames))
    assert not (tmp_path / "out" / "train").exists()  # checked before anything is written


def test_untidy_ground_truth_is_counted_not_fatal(aicity_root: Path, tmp_path: Path, caplog) -> None:
    def make_untidy(ground_truth: dict) -> None:
        ground_truth["3"] = []  # a frame with no objects
        del ground_truth["4"]  # a frame missing entirely
        ground_truth["5"][0]["2d bounding box visible"] = {}  # an object with no 2d box
        ground_truth["6"].append({**ground_truth["6"][0], "object type": "Alien", "object id": 99})
        ground_truth["7"].append({"object type": "Person"})  # malformed
        moved = ground_truth["8"][0]  # a teleport: id switch style jump
        moved["3d location"] = [moved["3d location"][0] + 30.0, *moved["3d location"][1:]]

    _edit_ground_truth(aicity_root, make_untidy)
    with caplog.at_level(logging.WARNING):
        summary = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    infos = _infos(summary)
    assert len(infos[3]["gt_names"]) == 0 and infos[3]["gt_boxes"].shape == (0, 10)
    assert len(infos[4]["gt_names"]) == 0
    assert not infos[5]["valid_flag"][0] and not infos[5]["gt_visibility"][0].any()
    assert "Alien" not in str(infos[6]["gt_names"])
    assert summary.skipped["objects of class 'Alien' (not in CLASS_LIST)"] == 1
    assert summary.skipped["objects of class 'Forklift' (not in CLASS_LIST)"] == 18  # frame 3 emptied, frame 4 gone
    assert summary.skipped["malformed objects"] == 1
    assert summary.skipped["objects without a 2d box (kept, not visible)"] == 1
    assert summary.skipped["implausible velocities (zeroed)"] >= 2
    assert "moves at" in caplog.text
    assert not infos[7]["gt_boxes"][0][7:10].any() and not infos[9]["gt_boxes"][0][7:10].any()


def test_test_split_without_ground_truth(aicity_root: Path, tmp_path: Path) -> None:
    summary = run_dataset_convert(aicity_config(aicity_root, split="test"), tmp_path / "out")
    infos = _infos(summary)
    assert len(infos) == 20 and not any(info["has_gt"] for info in infos)
    assert "gt_boxes" not in infos[0]
    assert summary.anchor_file is None and not (tmp_path / "out" / "anchor_init.npy").exists()
    assert summary.annotation_files[0].name.endswith("_infos_test.pkl")


def test_fewer_frames_than_asked_and_limit(aicity_root: Path, tmp_path: Path) -> None:
    summary = run_dataset_convert(aicity_config(aicity_root, num_frames=9000), tmp_path / "a")
    assert summary.frames == 20 and any("fewer than aicity.num_frames=9000" in note for note in summary.notes)
    limited = run_dataset_convert(aicity_config(aicity_root, num_frames=8), tmp_path / "b")
    assert limited.frames == 8 and len(_infos(limited)) == 8


def test_missing_split_and_camera_grouping(aicity_root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="split folder"):
        run_dataset_convert(aicity_config(aicity_root, split="val"), tmp_path / "out")
    os.remove(aicity_root / "train" / SCENE / "videos" / "Camera_0001.mp4")
    summary = run_dataset_convert(aicity_config(aicity_root, camera_grouping_mode="sequential"), tmp_path / "out")
    assert summary.skipped["cameras without a video"] == 1
    assert _infos(summary)[0]["camera_names"] == ["Camera_0000"]
    assert summary.annotation_files[0].name == f"{SCENE}+bev-sensor-sequential-0_infos_train.pkl"
