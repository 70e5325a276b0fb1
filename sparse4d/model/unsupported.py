"""Which `model.*` keys this implementation rejects, and which must agree with each other.

Every key of the `model:` section either changes what the network does or, when set to anything but
its TAO default, is refused here with a SpecError naming it: a spec never asks for something that is
silently ignored. The validator calls `check_supported` without building a network, so this module must
stay free of torch.
"""
from __future__ import annotations

from typing import Any

from sparse4d.errors import SpecError

# key (dotted, below `model.`) -> (the only accepted value, why other values are refused)
REJECTED_UNLESS_DEFAULT: dict[str, tuple[Any, str]] = {
    "use_temporal_align": (False, "ego-motion alignment is not implemented: the cameras are static, carried instances move by velocity x time"),
    "head.instance_bank.use_temporal_align": (False, "ego-motion alignment is not implemented (static cameras)"),
    "head.instance_bank.grid_size": (None, "unused TAO key; it must stay null"),
    "head.sampler.use_temporal_align": (False, "ego-motion alignment of denoising queries is not implemented"),
    "head.sampler.gt_assign_threshold": (0.5, "TAO's carry-over of last frame's query-to-GT assignment is not implemented (upstream Sparse4D matches every frame afresh)"),
    "head.use_reid_sampling": (False, "re-ID sampling is not implemented"),
    "head.reid_dims": (0, "re-ID features are not implemented"),
    "head.drop_out": (0.1, "TAO key without an effect here; set dropout per layer with head.graph_model.dropout, head.ffn.ffn_drop and head.deformable_model.attn_drop"),
    "head.loss.cls.use_sigmoid": (True, "only the sigmoid focal loss is implemented"),
    "head.loss.id.num_ids": (70, "the re-ID loss is not implemented (head.use_reid_sampling)"),
    "head.bnneck.feat_dim": (256, "the re-ID BN neck is not implemented (head.use_reid_sampling)"),
    "head.bnneck.num_ids": (70, "the re-ID BN neck is not implemented (head.use_reid_sampling)"),
    "head.visibility_net.embedding_dim": (256, "the visibility network is not implemented"),
    "head.visibility_net.hidden_channels": (32, "the visibility network is not implemented"),
    "head.graph_model.batch_first": (True, "attention always runs batch-first"),
    "head.temp_graph_model.batch_first": (True, "attention always runs batch-first"),
}

BACKBONE_CHANNELS: dict[str, list[int]] = {
    "resnet_18": [64, 128, 256, 512],
    "resnet_34": [64, 128, 256, 512],
    "resnet_50": [256, 512, 1024, 2048],
    "resnet_101": [256, 512, 1024, 2048],
}


def _get(cfg: Any, dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _fail(key: str, message: str, hint: str | None = None) -> None:
    raise SpecError(message, key=f"model.{key}", hint=hint)


def check_supported(cfg: Any) -> None:
    """Raise SpecError (naming the `model.` key) for refused values and for keys that disagree.

    `cfg` is the typed `ModelConfig` (anything with the same attribute tree works).
    """
    for key, (accepted, why) in REJECTED_UNLESS_DEFAULT.items():
        value = _get(cfg, key)
        if value != accepted:
            _fail(key, f"value {value!r} is not supported: {why}", hint=f"remove the key or set it to {accepted!r}")
    _check_dims(cfg)
    _check_structure(cfg)


def _check_dims(cfg: Any) -> None:
    embed = cfg.embed_dims
    head = cfg.head
    must_equal_embed = [
        "neck.out_channels",
        "depth_branch.embed_dims",
        "head.embed_dims",
        "head.instance_bank.embed_dims",
        "head.deformable_model.embed_dims",
        "head.deformable_model.kps_generator.embed_dims",
        "head.refine_layer.embed_dims",
        "head.norm_layer.normalized_shape",
        "head.ffn.pre_norm.normalized_shape",
        "head.ffn.embed_dims",
    ]
    for key in must_equal_embed:
        if _get(cfg, key) != embed:
            _fail(key, f"must equal model.embed_dims ({embed}), got {_get(cfg, key)}")
    attn_dims = 2 * embed if head.decouple_attn else embed
    for key in ("head.graph_model.embed_dims", "head.temp_graph_model.embed_dims"):
        if _get(cfg, key) != attn_dims:
            _fail(key, f"must be {attn_dims} (2 x embed_dims with decouple_attn, else embed_dims), got {_get(cfg, key)}")
        heads = _get(cfg, key.replace("embed_dims", "num_heads"))
        if attn_dims % heads:
            _fail(key.replace("embed_dims", "num_heads"), f"{attn_dims} attention dims are not divisible by {heads} heads")
    ffn_in = 2 * embed if head.deformable_model.residual_mode == "cat" else embed
    if head.ffn.in_channels != ffn_in:
        _fail("head.ffn.in_channels", f"must be {ffn_in} (2 x embed_dims when deformable_model.residual_mode is cat), got {head.ffn.in_channels}")
    groups = head.deformable_model.num_groups
    if embed % groups:
        _fail("head.deformable_model.num_groups", f"embed_dims {embed} is not divisible by {groups} groups")
    if head.num_groups != groups:
        _fail("head.num_groups", f"must equal head.deformable_model.num_groups ({groups}), got {head.num_groups}")
    enc = head.anchor_encoder
    if enc.pos_embed_only:
        if enc.embed_dims[0] != embed and not enc.output_fc:
            _fail("head.anchor_encoder.embed_dims", f"with pos_embed_only the position dims must equal embed_dims ({embed})")
    elif enc.mode == "cat":
        if sum(enc.embed_dims) != embed:
            _fail("head.anchor_encoder.embed_dims", f"with mode cat the dims must sum to embed_dims ({embed}), got {sum(enc.embed_dims)}")
    elif any(d != embed for d in enc.embed_dims):
        _fail("head.anchor_encoder.embed_dims", f"with mode add every dim must equal embed_dims ({embed})")
    expected_in = BACKBONE_CHANNELS[cfg.backbone.type]
    if list(cfg.neck.in_channels) != expected_in:
        _fail("neck.in_channels", f"{cfg.backbone.type} produces stages {expected_in}, got {list(cfg.neck.in_channels)}", hint=f"set model.neck.in_channels to {expected_in}")


def _check_structure(cfg: Any) -> None:
    head = cfg.head
    neck = cfg.neck
    used_stages = len(neck.in_channels) - neck.start_level
    if used_stages < 1:
        _fail("neck.start_level", f"must be below the number of backbone stages ({len(neck.in_channels)})")
    if neck.num_outs < used_stages:
        _fail("neck.num_outs", f"must be at least the {used_stages} stages used from start_level {neck.start_level}")
    if head.deformable_model.num_levels != neck.num_outs:
        _fail("head.deformable_model.num_levels", f"must equal model.neck.num_outs ({neck.num_outs})")
    if cfg.depth_branch.num_depth_layers > neck.num_outs:
        _fail("depth_branch.num_depth_layers", f"must be at most model.neck.num_outs ({neck.num_outs})")
    if head.with_quality_estimation != head.refine_layer.with_quality_estimation:
        _fail("head.refine_layer.with_quality_estimation", "must equal model.head.with_quality_estimation")
    order = list(head.operation_order)
    num_refine = order.count("refine")
    if num_refine != head.num_decoder:
        _fail("head.num_decoder", f"must equal the number of 'refine' steps in head.operation_order ({num_refine})")
    if not order or order[-1] != "refine":
        _fail("head.operation_order", "must end with 'refine' (the last step produces the boxes)")
    if head.num_single_frame_decoder > head.num_decoder:
        _fail("head.num_single_frame_decoder", f"must be at most head.num_decoder ({head.num_decoder})")
    if head.deformable_model.residual_mode == "cat":
        for i, op in enumerate(order):
            if op == "ffn" and (i == 0 or order[i - 1] != "deformable"):
                _fail("head.operation_order", f"step {i} 'ffn' must follow 'deformable' when deformable_model.residual_mode is cat")
    bank = head.instance_bank
    if bank.num_temp_instances > bank.num_anchor:
        _fail("head.instance_bank.num_temp_instances", f"must be at most num_anchor ({bank.num_anchor})")
    if head.num_output > bank.num_anchor:
        _fail("head.num_output", f"must be at most head.instance_bank.num_anchor ({bank.num_anchor})")
    if head.sampler.num_temp_dn_groups > head.sampler.num_dn_groups:
        _fail("head.sampler.num_temp_dn_groups", f"must be at most num_dn_groups ({head.sampler.num_dn_groups})")
    if head.deformable_model.num_cams > head.deformable_model.max_num_cams:
        _fail("head.deformable_model.num_cams", f"must be at most max_num_cams ({head.deformable_model.max_num_cams})")
    kps = head.deformable_model.kps_generator
    if kps.num_learnable_pts == 0 and len(kps.fix_scale) == 0:
        _fail("head.deformable_model.kps_generator.fix_scale", "needs at least one key point")
    for i, row in enumerate(kps.fix_scale):
        if len(row) != 3:
            _fail("head.deformable_model.kps_generator.fix_scale", f"row {i} must have 3 values (x, y, z), got {len(row)}")
    if len(cfg.input_shape) != 2 or min(cfg.input_shape) < 32:
        _fail("input_shape", f"must be [width, height] of at least 32 pixels, got {list(cfg.input_shape)}")
