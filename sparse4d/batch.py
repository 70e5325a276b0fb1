"""The batch contract between the OVPKL dataset (`sparse4d.data`) and the model (`sparse4d.model`).

Sparse4D trains by streaming: slot ``b`` of consecutive batches holds consecutive frames of one
sequence, so the instance bank can carry instances from one batch to the next. ``first_frame[b]`` says
when slot ``b`` starts a new sequence and the bank must reset for it (never inferred from timestamps:
AICity timestamps restart per scene).

Keys of one collated batch (B sequences x N cameras, images at the model input size H x W):

- ``img``: (B, N, 3, H, W) in the model's channel order: uint8 pixels as the dataset hands them over,
  with ``img_mean`` and ``img_std`` float32 (B, 3), the normalisation the model applies on its device
  (`normalized_images`: a quarter of the bytes through worker shared memory, pinned memory and the
  host-to-GPU copy); or float32 already normalised (then no ``img_mean``/``img_std``).
- ``projection_mat``: float32 (B, N, 4, 4). Maps a homogeneous world point [x, y, z, 1] (metres, in the
  recentered scene frame) to [u*d, v*d, d, 1] where (u, v) are pixels of the *augmented* input image
  and d the camera-frame depth. Equals K_aug(4x4) @ world_to_camera(4x4).
- ``image_wh``: float32 (B, N, 2), width and height of the input images (after augmentation).
- ``timestamp``: float64 (B,), seconds.
- ``first_frame``: bool (B,), True where the slot starts a sequence.
- ``gt_bboxes_3d``: list of B float32 tensors (M_b, 10): [x, y, z, w, l, h, yaw, vx, vy, vz] in the world
  frame; (x, y, z) is the box centre, l is the extent along the heading, w across it, h vertical; yaw
  is the heading angle about +z measured from +x.
- ``gt_labels_3d``: list of B int64 tensors (M_b,), indices into ``dataset.classes``.
- ``instance_ids``: list of B int64 tensors (M_b,), track ids unique within a scene.
- ``gt_depth`` (only when training with a depth loss; the depth loss needs it, nothing else reads it):
  float32 (B, N, H', W'), metres along the optical axis, 0 where unknown; at the input
  size or pooled by an integer stride (the trainer's dataset pools it to the first FPN level's stride,
  `sparse4d.data.depth_targets`): the depth loss pools it to each predicted level the same way.
- ``sample_token``: list of B str, unique per frame (``<scene>/<group>/<frame:06d>``).
- ``scene``: list of B str.

Anchors (``anchor_init.npy``) and model box outputs use the 11-value encoding
[x, y, z, log w, log l, log h, sin yaw, cos yaw, vx, vy, vz].
"""
from __future__ import annotations

BOX_X, BOX_Y, BOX_Z, BOX_W, BOX_L, BOX_H, BOX_YAW, BOX_VX, BOX_VY, BOX_VZ = range(10)
ANCHOR_X, ANCHOR_Y, ANCHOR_Z, ANCHOR_W, ANCHOR_L, ANCHOR_H, ANCHOR_SIN, ANCHOR_COS, ANCHOR_VX, ANCHOR_VY, ANCHOR_VZ = range(11)
BOX_DIMS = 10
ANCHOR_DIMS = 11
# The per-sample GT lists: the trainer leaves them on the host when the rest of a batch moves to the
# GPU (the model copies them over itself and solves the denoising assignment from the host copies).
TARGET_KEYS = ("gt_bboxes_3d", "gt_labels_3d", "instance_ids")


def check_targets(batch: dict, num_classes: int) -> None:
    """Raise DataError unless every sample's GT boxes are (M, 10) with M labels in [0, num_classes).

    Reads label values: run it on host tensors (the data module does, before the batch moves to the
    GPU), where it costs nothing; on GPU tensors it would stall the device, so those are skipped.
    """
    from sparse4d.errors import DataError

    for i, (boxes, labels) in enumerate(zip(batch["gt_bboxes_3d"], batch["gt_labels_3d"])):
        if boxes.dim() != 2 or boxes.shape[-1] != BOX_DIMS or boxes.shape[0] != labels.shape[0]:
            raise DataError(f"sample {i}: gt_bboxes_3d must be (M, 10) matching gt_labels_3d (M,), got {tuple(boxes.shape)} and {tuple(labels.shape)}")
        if labels.device.type == "cpu" and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"sample {i}: gt_labels_3d outside [0, {num_classes})", key="dataset.classes")


def image_inputs(batch: dict, device=None):
    """(images, mean, std) of a batch, on `device` (default: where the images are): uint8 images with
    their ``img_mean``/``img_std``, or float images (already normalised) with None, None. The model
    normalises inside its compiled image region (`normalize_images`)."""
    from sparse4d.errors import DataError

    img = batch["img"]
    if device is not None:
        img = img.to(device, non_blocking=True)
    if img.is_floating_point():
        return img, None, None
    if "img_mean" not in batch or "img_std" not in batch:
        raise DataError(f"batch['img'] is {img.dtype} but the batch has no img_mean/img_std to normalise it with",
                        hint="collate samples of OVPKLDataset with collate_sparse4d, or pass float32 normalised images")
    return img, batch["img_mean"].to(img.device, non_blocking=True), batch["img_std"].to(img.device, non_blocking=True)


def normalize_images(img, mean, std):
    """uint8 (B, N, 3, H, W) and per-sample (B, 3) (or shared (3,)) mean/std -> float32 normalised
    images. Tensors only, so it traces into a compiled region."""
    b = img.shape[0]
    mean = mean.float().reshape(-1, 1, 3, 1, 1).expand(b, 1, 3, 1, 1)
    std = std.float().reshape(-1, 1, 3, 1, 1).expand(b, 1, 3, 1, 1)
    return (img.float() - mean) / std


def normalized_images(batch: dict, device=None):
    """batch["img"] as the float32 normalised images the network takes, on `device` (default: where
    the images are). uint8 images are moved first and normalised there with ``img_mean``/``img_std``;
    float images pass through."""
    img, mean, std = image_inputs(batch, device)
    return img if mean is None else normalize_images(img, mean, std)
