"""The generated scenes are self-consistent AICity data: GT, cameras, videos and depth agree."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np

from sparse4d.data.synth import CLASS_NAMES, box_corners, build_scene, make_synthetic_dataset

SCENE = "Warehouse_000"


def _load(root: Path) -> tuple[list[dict], dict]:
    scene_dir = root / "train" / SCENE
    sensors = json.loads((scene_dir / "calibration.json").read_text())["sensors"]
    return sensors, json.loads((scene_dir / "ground_truth.json").read_text())


def _project(camera_matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ camera_matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def test_layout_and_calibration(pristine_root: Path) -> None:
    sensors, ground_truth = _load(pristine_root)
    assert [sensor["id"] for sensor in sensors] == ["Camera_0000", "Camera_0001"]
    for sensor in sensors:
        intrinsic, extrinsic = np.array(sensor["intrinsicMatrix"]), np.array(sensor["extrinsicMatrix"])
        np.testing.assert_allclose(np.array(sensor["cameraMatrix"]), intrinsic @ extrinsic, atol=1e-9)
        attributes = {item["name"]: item["value"] for item in sensor["attributes"]}
        assert attributes == {"fps": "30", "frameWidth": "256", "frameHeight": "128"}
        capture = cv2.VideoCapture(str(pristine_root / "train" / SCENE / "videos" / f"{sensor['id']}.mp4"))
        assert capture.get(cv2.CAP_PROP_FPS) == 30
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
        with h5py.File(pristine_root / "train" / SCENE / "depth_maps" / f"{sensor['id']}.h5") as depth:
            assert sorted(depth) == [f"distance_to_image_plane_{frame:05d}.png" for frame in range(20)]
            assert depth["distance_to_image_plane_00000.png"].dtype == np.uint16
    assert sorted(ground_truth, key=int) == [str(frame) for frame in range(20)]
    assert {obj["object type"] for obj in ground_truth["0"]} == set(CLASS_NAMES)
    assert not (pristine_root / "test" / SCENE / "ground_truth.json").exists()


def test_projected_boxes_land_inside_their_visible_2d_boxes(pristine_root: Path) -> None:
    sensors, ground_truth = _load(pristine_root)
    checked = centred = 0
    for objects in ground_truth.values():
        for obj in objects:
            length, width, height = obj["3d bounding box scale"]
            corners = box_corners(np.array(obj["3d location"]), length, width, height, obj["3d bounding box rotation"][2])
            for sensor in sensors:
                visible = obj["2d bounding box visible"].get(sensor["id"])
                if visible is None:
                    continue
                camera_matrix = np.array(sensor["cameraMatrix"])
                uv = _project(camera_matrix, corners)
                x0, y0, x1, y1 = visible
                # the visible pixels lie within the projected cuboid (1 px for pixel rounding)
                assert uv[:, 0].min() - 1 <= x0 and x1 <= uv[:, 0].max() + 1
                assert uv[:, 1].min() - 1 <= y0 and y1 <= uv[:, 1].max() + 1
                checked += 1
                cu, cv_ = _project(camera_matrix, np.array([obj["3d location"]]))[0]
                centred += x0 - 1 <= cu <= x1 + 1 and y0 - 1 <= cv_ <= y1 + 1
    assert checked > 100
    assert centred > 0.8 * checked  # only occluded objects may have their centre outside the visible part


def test_depth_at_box_centre_matches_camera_z(pristine_root: Path) -> None:
    sensors, ground_truth = _load(pristine_root)
    scene = build_scene(seed=0, split="train", cameras=2, size=(256, 128))
    compared = 0
    for frame in (0, 10, 19):
        states = scene.object_states(frame)
        for index, sensor in enumerate(sensors):
            _, _, ids = scene.render(index, states)
            with h5py.File(pristine_root / "train" / SCENE / "depth_maps" / f"{sensor['id']}.h5") as handle:
                depth = handle[f"distance_to_image_plane_{frame:05d}.png"][()] / 1000.0
            extrinsic = np.array(sensor["extrinsicMatrix"])
            for obj in ground_truth[str(frame)]:
                centre = np.array(obj["3d location"])
                u, v = np.round(_project(np.array(sensor["cameraMatrix"]), centre[None])[0]).astype(int)
                if not (0 <= u < 256 and 0 <= v < 128) or ids[v, u] != obj["object id"]:
                    continue  # centre outside the image or hidden behind another object
                camera_z = (extrinsic @ np.append(centre, 1.0))[2]
                half_extent = 0.5 * np.linalg.norm(obj["3d bounding box scale"])
                assert camera_z - half_extent - 0.01 <= depth[v, u] <= camera_z + 0.01
                compared += 1
    assert compared >= 10


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", frames=4, splits=("train",), seed=3)
    second = make_synthetic_dataset(tmp_path / "b", frames=4, splits=("train",), seed=3)
    other = make_synthetic_dataset(tmp_path / "c", frames=4, splits=("train",), seed=4)
    for name in ("ground_truth.json", "calibration.json"):
        assert (first / "train" / SCENE / name).read_bytes() == (second / "train" / SCENE / name).read_bytes()
    assert (first / "train" / SCENE / "ground_truth.json").read_bytes() != (other / "train" / SCENE / "ground_truth.json").read_bytes()
