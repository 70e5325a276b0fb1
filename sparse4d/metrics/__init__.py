"""nuScenes-style detection and tracking metrics (numpy + scipy only, importable without torch)."""
from sparse4d.metrics.boxes import MAX_BOXES_PER_SAMPLE, boxes_to_results, gt_from_boxes, quaternion_to_yaw, yaw_to_quaternion
from sparse4d.metrics.detection import DetectionMetrics, evaluate_detection
from sparse4d.metrics.tracking import TrackingMetrics, evaluate_tracking

__all__ = [
    "MAX_BOXES_PER_SAMPLE",
    "DetectionMetrics",
    "TrackingMetrics",
    "boxes_to_results",
    "evaluate_detection",
    "evaluate_tracking",
    "gt_from_boxes",
    "quaternion_to_yaw",
    "yaw_to_quaternion",
]
