"""Small model config, synthetic anchors and a synthetic two-camera batch for the model tests; a runner
for checks in Triton's interpreter."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparse4d.config.dataset import NormalizeConfig
from sparse4d.config.model import ModelConfig

EMBED = 64
SMALL_W, SMALL_H = 256, 128


def small_config(anchor_path: str = "", **head_overrides) -> ModelConfig:
    """ResNet-18, 256x128 input, 2 cameras, 64 anchors, 32 carried, 2 decoders, 64-dim embeddings."""
    order = ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"]
    e = EMBED
    data = {
        "embed_dims": e,
        "input_shape": [SMALL_W, SMALL_H],
        "backbone": {"type": "resnet_18"},
        "neck": {"num_outs": 4, "out_channels": e, "in_channels": [64, 128, 256, 512]},
        "depth_branch": {"embed_dims": e, "num_depth_layers": 2},
        "head": {
            "embed_dims": e,
            "num_output": 30,
            "num_decoder": 2,
            "num_groups": 4,
            "operation_order": order,
            "instance_bank": {"num_anchor": 64, "num_temp_instances": 32, "anchor": anchor_path, "embed_dims": e},
            "anchor_encoder": {"embed_dims": [32, 8, 8, 16], "out_loops": 2},
            "sampler": {"num_dn_groups": 2, "num_temp_dn_groups": 1, "max_dn_gt": 16},
            "deformable_model": {
                "embed_dims": e,
                "num_groups": 4,
                "num_cams": 2,
                "max_num_cams": 4,
                "kps_generator": {"embed_dims": e, "num_learnable_pts": 2},
            },
            "refine_layer": {"embed_dims": e},
            "graph_model": {"embed_dims": 2 * e, "num_heads": 4},
            "temp_graph_model": {"embed_dims": 2 * e, "num_heads": 4},
            "norm_layer": {"normalized_shape": e},
            "ffn": {"in_channels": 2 * e, "pre_norm": {"normalized_shape": e}, "embed_dims": e, "feedforward_channels": 2 * e},
        },
    }
    data["head"].update(head_overrides)
    return ModelConfig.model_validate(data)


def random_anchors(num: int, seed: int = 0) -> np.ndarray:
    """Anchors spread over a 20 m x 20 m floor in front of the cameras (11-value encoding)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((num, 11), dtype=np.float32)
    a[:, 0] = rng.uniform(-10, 10, num)
    a[:, 1] = rng.uniform(-10, 10, num)
    a[:, 2] = 0.9
    a[:, 3:6] = np.log([0.6, 0.6, 1.7])
    a[:, 7] = 1.0
    return a


def camera_projection(position: tuple[float, float, float], yaw: float, width: int, height: int, focal: float = 120.0) -> torch.Tensor:
    """K @ world_to_camera for a level camera at `position` looking along `yaw` (camera z forward)."""
    fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    down = torch.tensor([0.0, 0.0, -1.0])
    right = torch.linalg.cross(down, fwd)
    rot = torch.stack([right, down, fwd])  # rows: camera x, y, z in world
    t = -rot @ torch.tensor(position)
    w2c = torch.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = t
    k = torch.eye(4)
    k[0, 0] = k[1, 1] = focal
    k[0, 2], k[1, 2] = width / 2, height / 2
    return k @ w2c


def synthetic_batch(batch_size: int = 1, num_cams: int = 2, num_gt: int = 3, seed: int = 0, first_frame: bool = True, timestamp: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    proj = torch.stack([camera_projection((-12.0, -12.0 + 8 * c, 1.5), 0.6, SMALL_W, SMALL_H) for c in range(num_cams)])
    boxes, labels, ids = [], [], []
    for _ in range(batch_size):
        b = torch.zeros(num_gt, 10)
        b[:, 0:2] = torch.rand(num_gt, 2, generator=g) * 10 - 5
        b[:, 2] = 0.9
        b[:, 3:6] = torch.tensor([0.6, 0.6, 1.7])
        b[:, 6] = torch.rand(num_gt, generator=g) * 6 - 3
        b[:, 7:9] = torch.rand(num_gt, 2, generator=g) - 0.5
        boxes.append(b)
        labels.append(torch.randint(0, 3, (num_gt,), generator=g))
        ids.append(torch.arange(num_gt) + 100)
    return {
        "img": torch.randn(batch_size, num_cams, 3, SMALL_H, SMALL_W, generator=g),
        "projection_mat": proj[None].expand(batch_size, -1, -1, -1).clone(),
        "image_wh": torch.tensor([float(SMALL_W), float(SMALL_H)]).expand(batch_size, num_cams, 2).clone(),
        "timestamp": torch.full((batch_size,), timestamp, dtype=torch.float64),
        "first_frame": torch.full((batch_size,), first_frame),
        "gt_bboxes_3d": boxes,
        "gt_labels_3d": labels,
        "instance_ids": ids,
        "gt_depth": torch.rand(batch_size, num_cams, SMALL_H, SMALL_W, generator=g) * 20 * (torch.rand(batch_size, num_cams, SMALL_H, SMALL_W, generator=g) > 0.5),
        "sample_token": [f"s/{i}/{0:06d}" for i in range(batch_size)],
        "scene": ["s"] * batch_size,
    }


IMAGE_MEAN = tuple(NormalizeConfig().mean)  # the spec's default dataset.normalize
IMAGE_STD = tuple(NormalizeConfig().std)


def with_uint8_images(batch: dict, seed: int = 0) -> dict:
    """The batch with uint8 pixels plus img_mean/img_std in place of its float images (what the
    dataset and collate_sparse4d hand over; the model normalises on its device)."""
    g = torch.Generator().manual_seed(seed)
    b = batch["img"].shape[0]
    return {**batch, "img": torch.randint(0, 256, batch["img"].shape, dtype=torch.uint8, generator=g),
            "img_mean": torch.tensor(IMAGE_MEAN).expand(b, 3).clone(), "img_std": torch.tensor(IMAGE_STD).expand(b, 3).clone()}


class RecordOps(TorchDispatchMode):
    """Every aten call made inside the context, as (op, args, kwargs): for tests about which kernels run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def run_in_triton_interpreter(check: str, timeout: int) -> subprocess.CompletedProcess:
    """Run the script `check` in a fresh Python with TRITON_INTERPRET=1 (the interpreter must be chosen
    before the kernels are defined), with the repository importable."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=timeout)
