"""A small Sparse4D configuration that trains on CPU in minutes (synthetic scenes, benchmarks, demos).

ResNet-18, 64-dim features, 256x128 input, 3 FPN levels, 3 decoder layers, few anchors. Every key is
a real spec key, so the dict can be passed as `key=value` overrides to `sparse4d train` or merged into
a spec file. Data keys (data_root, ann_file, anchor) are not included: they depend on where the data is.
"""
from __future__ import annotations

EMBED = 64
DECODER_LAYERS = 3
OPERATION_ORDER = ["deformable", "ffn", "norm", "refine"] + ["temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"] * (DECODER_LAYERS - 1)


def small_overrides(*, width: int = 256, height: int = 128, cameras: int = 2, num_anchor: int = 64,
                    classes: list[str] | None = None) -> dict[str, object]:
    """Dotted spec keys -> values for the small model, its data shapes and a short schedule."""
    values: dict[str, object] = {
        "model.backbone.type": "resnet_18",
        "model.embed_dims": EMBED,
        "model.input_shape": [width, height],
        "model.use_grid_mask": False,
        "model.neck.in_channels": [64, 128, 256, 512],
        "model.neck.out_channels": EMBED,
        "model.neck.num_outs": 3,
        "model.neck.start_level": 1,
        "model.depth_branch.embed_dims": EMBED,
        "model.depth_branch.num_depth_layers": 2,
        "model.head.embed_dims": EMBED,
        "model.head.num_groups": 4,
        "model.head.num_decoder": DECODER_LAYERS,
        "model.head.num_single_frame_decoder": 1,
        "model.head.num_output": num_anchor,
        "model.head.operation_order": list(OPERATION_ORDER),
        "model.head.instance_bank.num_anchor": num_anchor,
        "model.head.instance_bank.num_temp_instances": num_anchor // 2,
        "model.head.instance_bank.embed_dims": EMBED,
        "model.head.anchor_encoder.embed_dims": [32, 8, 8, 16],
        "model.head.sampler.num_dn_groups": 2,
        "model.head.sampler.num_temp_dn_groups": 1,
        "model.head.sampler.max_dn_gt": 16,
        "model.head.deformable_model.embed_dims": EMBED,
        "model.head.deformable_model.num_groups": 4,
        "model.head.deformable_model.num_levels": 3,
        "model.head.deformable_model.num_cams": cameras,
        "model.head.deformable_model.attn_drop": 0.0,
        "model.head.deformable_model.kps_generator.embed_dims": EMBED,
        "model.head.deformable_model.kps_generator.num_learnable_pts": 2,
        "model.head.refine_layer.embed_dims": EMBED,
        "model.head.graph_model.embed_dims": 2 * EMBED,
        "model.head.graph_model.num_heads": 4,
        "model.head.temp_graph_model.embed_dims": 2 * EMBED,
        "model.head.temp_graph_model.num_heads": 4,
        "model.head.norm_layer.normalized_shape": EMBED,
        "model.head.ffn.in_channels": 2 * EMBED,
        "model.head.ffn.embed_dims": EMBED,
        "model.head.ffn.feedforward_channels": 2 * EMBED,
        "model.head.ffn.pre_norm.normalized_shape": EMBED,
        "dataset.augmentation.final_dim": [height, width],
        "dataset.augmentation.image_size": [height, width],
        "dataset.augmentation.resize_lim": [1.0, 1.0],
        "dataset.augmentation.rot_lim": [0.0, 0.0],
        "dataset.augmentation.rand_flip": False,
        "dataset.augmentation.rot3d_range": [0.0, 0.0],
        "dataset.batch_size": 1,
        "dataset.num_workers": 0,
        "dataset.sequences.split_num": 10,
        "dataset.train_dataset.sequences_split_num": 10,
        "train.num_epochs": 6,
        "train.checkpoint_interval": 6,
        "train.validation_interval": 6,
        "train.precision": "fp32",
        "train.optim.lr": 2e-3,
        "train.optim.paramwise_cfg.custom_keys.img_backbone.lr_mult": 0.5,
        "train.optim.lr_scheduler.warmup_iters": 20,
    }
    if classes is not None:
        values["dataset.classes"] = list(classes)
    return values
