"""Does a request belong to this skill? Trigger phrases in, other models' names out.

`matches_skill` is what an agent harness asks before loading the skill: it needs a Sparse4D trigger
(the model's name or one of the description's trigger phrases) and no other model named instead.
`other_model_named` lets the planner refuse requests that are clearly about another network.
"""
from __future__ import annotations

import re

TRIGGER_PHRASES = (
    "train Sparse4D",
    "multi-camera 3D detection",
    "temporal 3D tracker",
    "sparse query 3D perception",
)
_TRIGGERS = (
    r"\bsparse[\s-]?4d(?:v3)?\b",
    r"\bmulti[\s-]?camera\s+(?:temporal\s+)?3d\s+(?:object\s+)?detect",
    r"\btemporal\s+3d\s+(?:object\s+)?track",
    r"\bsparse[\s-]+query\s+3d\s+perception\b",
    r"\binstance\s+bank\b",
)
# Networks a request may name instead of Sparse4D (3D, BEV and 2D detectors, trackers, segmenters).
OTHER_MODELS = (
    "bevfusion", "bevformer", "bevdet", "bevdepth", "petr", "streampetr", "far3d", "detr3d", "fcos3d",
    "pointpillars", "centerpoint", "pv-rcnn", "voxelnet", "maptr",
    "yolo", "yolov8", "yolox", "detr", "dino", "rt-detr", "faster r-cnn", "faster rcnn", "mask r-cnn",
    "mask rcnn", "retinanet", "efficientdet", "grounding dino", "segformer", "mask2former",
    "bytetrack", "deepsort", "image classification", "image classifier",
)
_OTHER_RE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(m).replace(r"\ ", r"[\s-]?") for m in OTHER_MODELS) + r")(?:v?\d+)?(?![\w-])"
)


def _text(request: str | None) -> str:
    return re.sub(r"\s+", " ", (request or "").lower())


def mentions_sparse4d(request: str | None) -> bool:
    """True when the request names Sparse4D or one of its trigger phrases."""
    text = _text(request)
    return any(re.search(pattern, text) for pattern in _TRIGGERS)


def other_model_named(request: str | None) -> str | None:
    """The first other network the request names, when it does not also name Sparse4D."""
    text = _text(request)
    if re.search(_TRIGGERS[0], text):
        return None
    match = _OTHER_RE.search(text)
    return match.group(1) if match else None


def matches_skill(request: str | None) -> bool:
    """Should the `sparse4d` skill handle this request?"""
    return mentions_sparse4d(request) and other_model_named(request) is None
