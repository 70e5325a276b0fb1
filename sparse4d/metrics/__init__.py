"""nuScenes-style detection and tracking metrics (numpy + scipy only, importable without torch)."""
from sparse4d.metrics.boxes import MAX_BOXES_PER_SAMPLE, boxes_to_results, gt_from_boxes, quaternion_to_yaw, yaw_to_quaternion
from sparse4d.metrics.detection import DetectionMetrics, evaluate_detection

__all__ = [
    "MAX_BOXES_PER_SAMPLE",
    "DetectionMetrics",
    "boxes_to_results",
    "evaluate_detection",
    "gt_from_boxes",
    "quaternion_to_yaw",
    "yaw_to_quaternion",
]
