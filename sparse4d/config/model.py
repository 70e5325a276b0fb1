"""`model.*`: the Sparse4D v3 network (backbone, FPN neck, depth branch, sparse temporal head).

Key names, defaults and bounds follow TAO's Sparse4D spec so TAO spec files validate unchanged. Type
tags such as `model.head.decoder.type` accept only the value this package implements: a spec asking
for something else fails validation instead of being silently ignored.
"""
from __future__ import annotations

from typing import Literal

from .fields import AUTOML_OFF, Automl, Section, field, section

BackboneType = Literal["resnet_18", "resnet_34", "resnet_50", "resnet_101"]

DEFAULT_OPERATION_ORDER = (
    ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm"] * 5 + ["deformable", "ffn", "norm", "refine"]
)
OperationName = Literal["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "identity"]


class BackboneConfig(Section):
    type: BackboneType = field("resnet_101", "ResNet depth of the image backbone (torchvision/timm weight names).", automl=AUTOML_OFF)


class NeckConfig(Section):
    type: Literal["FPN"] = field("FPN", "Neck type.")
    num_outs: int = field(4, "Number of FPN output levels (must equal head.deformable_model.num_levels).", ge=1)
    start_level: int = field(0, "First backbone stage fed to the FPN.", ge=0)
    out_channels: int = field(256, "FPN output channels (must equal model.embed_dims).", ge=1)
    in_channels: list[int] = field([256, 512, 1024, 2048], "Backbone stage channels (derived from the backbone; must match it).", automl=AUTOML_OFF)
    add_extra_convs: Literal["on_input", "on_lateral", "on_output", "False"] = field("on_output", "Source of extra FPN levels beyond the backbone stages.")
    relu_before_extra_convs: bool = field(True, "Apply ReLU before extra FPN convolutions.")


class DepthBranchConfig(Section):
    type: Literal["dense_depth"] = field("dense_depth", "Depth branch type.")
    embed_dims: int = field(256, "Input channels of the depth branch (FPN channels).", ge=1)
    num_depth_layers: int = field(3, "Number of FPN levels that predict dense depth.", ge=1)
    loss_weight: float = field(0.2, "Weight of the dense depth L1 loss (0 disables depth supervision).", ge=0.0, automl=Automl(valid_min=0.0, valid_max=1.0))


class VisibilityNetConfig(Section):
    type: Literal["visibility_net"] = field("visibility_net", "Visibility network type.")
    embedding_dim: int = field(256, "Visibility network input dims.", ge=1)
    hidden_channels: int = field(32, "Visibility network hidden channels.", ge=1)


class InstanceBankConfig(Section):
    num_anchor: int = field(900, "Number of anchors (queries) per frame; anchor file needs at least this many rows.", ge=1, automl=AUTOML_OFF)
    anchor: str = field("", "Path to anchor_init.npy written by dataset_convert (rows of 11 values).", automl=AUTOML_OFF)
    num_temp_instances: int = field(600, "Instances carried to the next frame (<= num_anchor).", ge=0, automl=AUTOML_OFF)
    confidence_decay: float = field(0.8, "Decay applied to carried instance confidences each frame.", ge=0.0, le=1.0, automl=Automl(valid_min=0.5, valid_max=0.95))
    feat_grad: bool = field(False, "Let gradients flow into carried instance features.")
    default_time_interval: float = field(0.033333, "Time step (s) used when timestamps are missing or equal.", ge=0.0)
    embed_dims: int = field(256, "Instance feature dims (must equal model.embed_dims).", ge=1)
    use_temporal_align: bool = field(False, "Ego-motion alignment of carried anchors (not needed: AICity cameras are static).")
    grid_size: float | None = field(None, "Unused grid size kept for TAO compatibility (must stay null).")


class AnchorEncoderConfig(Section):
    type: Literal["SparseBox3DEncoder"] = field("SparseBox3DEncoder", "Anchor encoder type.")
    vel_dims: int = field(3, "Velocity dims encoded.", ge=1, le=3)
    embed_dims: list[int] = field([128, 32, 32, 64], "Embedding dims for [position, size, yaw, velocity].", min_length=4, max_length=4, automl=AUTOML_OFF)
    mode: Literal["cat", "add"] = field("cat", "Combine the four embeddings by concatenation or sum.")
    output_fc: bool = field(False, "Add an output linear layer after combining.")
    in_loops: int = field(1, "Linear-ReLU-LN repeats inside each embedding.", ge=1)
    out_loops: int = field(4, "Linear-ReLU-LN repeats of the output layer.", ge=1)
    pos_embed_only: bool = field(False, "Encode position only.")


class SamplerConfig(Section):
    num_dn_groups: int = field(5, "Denoising groups per frame.", ge=1)
    num_temp_dn_groups: int = field(3, "Denoising groups carried to the next frame.", ge=0)
    dn_noise_scale: list[float] = field([2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "Noise scale per anchor value for denoising queries.", min_length=11, max_length=11, automl=AUTOML_OFF)
    max_dn_gt: int = field(128, "Maximum GT boxes used for denoising per sample.", ge=1)
    add_neg_dn: bool = field(True, "Add negative (background) denoising queries.")
    cls_weight: float = field(2.0, "Class cost weight in Hungarian matching.", ge=0.0)
    box_weight: float = field(0.25, "Box L1 cost weight in Hungarian matching.", ge=0.0)
    reg_weights: list[float] = field([2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], "Per-value weights of the matching box cost.", min_length=11, max_length=11, automl=AUTOML_OFF)
    use_temporal_align: bool = field(False, "Ego-motion alignment of denoising queries (not supported).")
    gt_assign_threshold: float = field(0.5, "Distance threshold assigning noisy DN queries to their GT.", ge=0.0, le=1.0)


class FocalLossConfig(Section):
    type: Literal["focal"] = field("focal", "Classification loss (sigmoid focal; unmatched queries are negatives).")
    use_sigmoid: bool = field(True, "Sigmoid focal loss (softmax is not supported).")
    gamma: float = field(2.0, "Focal loss focusing parameter.", ge=0.0)
    alpha: float = field(0.25, "Focal loss positive-class weight.", ge=0.0, le=1.0)
    loss_weight: float = field(2.0, "Classification loss weight.", ge=0.0)


class RegLossConfig(Section):
    type: Literal["sparse_box_3d"] = field("sparse_box_3d", "Box regression loss.")
    box_weight: float = field(0.25, "Box L1 loss weight.", ge=0.0)
    cls_allow_reverse: list[int] = field([], "Class ids whose heading may be reversed (yaw +pi) without penalty.", automl=AUTOML_OFF)


class IdLossConfig(Section):
    type: Literal["cross_entropy_label_smooth"] = field("cross_entropy_label_smooth", "Re-ID loss type (only with use_reid_sampling).")
    num_ids: int = field(70, "Number of identities for the re-ID loss.", ge=1)


class LossConfig(Section):
    cls: FocalLossConfig = section(FocalLossConfig, "Classification loss.")
    reg: RegLossConfig = section(RegLossConfig, "Box regression loss.")
    id: IdLossConfig = section(IdLossConfig, "Re-ID loss.")


class BnneckConfig(Section):
    type: Literal["bnneck"] = field("bnneck", "Re-ID BN neck type.")
    feat_dim: int = field(256, "Re-ID feature dims.", ge=1)
    num_ids: int = field(70, "Number of identities.", ge=1)


class KeypointsConfig(Section):
    embed_dims: int = field(256, "Instance feature dims for learnable keypoints.", ge=1)
    num_learnable_pts: int = field(6, "Learnable keypoints per anchor.", ge=0)
    fix_scale: list[list[float]] = field(
        [[0, 0, 0], [0.45, 0, 0], [-0.45, 0, 0], [0, 0.45, 0], [0, -0.45, 0], [0, 0, 0.45], [0, 0, -0.45]],
        "Fixed keypoints as fractions of the box size (x, y, z).",
        min_length=1,
        automl=AUTOML_OFF,
    )


class DeformableConfig(Section):
    embed_dims: int = field(256, "Feature dims (must equal model.embed_dims).", ge=1)
    num_groups: int = field(8, "Attention groups (embed_dims must be divisible).", ge=1)
    num_levels: int = field(4, "Feature levels sampled (must equal neck.num_outs).", ge=1)
    attn_drop: float = field(0.15, "Dropout on camera/level/point attention weights.", ge=0.0, le=1.0)
    use_deformable_func: bool = field(True, "Use the fused aggregation kernel when available (else grid_sample).")
    use_camera_embed: bool = field(False, "Condition attention weights on a camera embedding.")
    residual_mode: Literal["cat", "add"] = field("cat", "Combine aggregated feature with the input by concat+linear or sum.")
    num_cams: int = field(6, "Cameras per camera group in the data.", ge=1, popular=True)
    max_num_cams: int = field(20, "Largest camera count the model (and its export) supports.", ge=1)
    proj_drop: float = field(0.0, "Dropout after the output projection.", ge=0.0, le=1.0)
    kps_generator: KeypointsConfig = section(KeypointsConfig, "Keypoint generator.")


class RefineConfig(Section):
    type: Literal["sparse_box_3d_refinement_module"] = field("sparse_box_3d_refinement_module", "Refinement module type.")
    embed_dims: int = field(256, "Feature dims.", ge=1)
    refine_yaw: bool = field(True, "Refine yaw (sin, cos) as well as position and size.")
    with_quality_estimation: bool = field(True, "Predict centerness and yawness quality scores.")


class AttentionConfig(Section):
    type: Literal["MultiheadAttention"] = field("MultiheadAttention", "Attention type.")
    embed_dims: int = field(512, "Attention dims (2 x embed_dims when decouple_attn).", ge=1)
    num_heads: int = field(8, "Attention heads.", ge=1)
    batch_first: bool = field(True, "Batch-first tensors (must be true).")
    dropout: float = field(0.1, "Attention dropout.", ge=0.0, le=1.0)


class DecoderConfig(Section):
    type: Literal["SparseBox3DDecoder"] = field("SparseBox3DDecoder", "Box decoder type.")
    score_threshold: float = field(0.05, "Drop decoded boxes below this score.", ge=0.0, le=1.0)


class NormLayerConfig(Section):
    type: Literal["LN"] = field("LN", "Normalisation layer.")
    normalized_shape: int = field(256, "Normalised dims.", ge=1)


class ActivationConfig(Section):
    type: Literal["ReLU"] = field("ReLU", "FFN activation.")
    inplace: bool = field(True, "In-place activation.")


class FfnConfig(Section):
    type: Literal["AsymmetricFFN"] = field("AsymmetricFFN", "FFN type.")
    in_channels: int = field(512, "FFN input dims (2 x embed_dims when decouple_attn).", ge=1)
    pre_norm: NormLayerConfig = section(NormLayerConfig, "Norm applied to the FFN input.")
    embed_dims: int = field(256, "FFN output dims.", ge=1)
    feedforward_channels: int = field(1024, "Hidden dims.", ge=1)
    num_fcs: int = field(2, "Linear layers.", ge=2)
    ffn_drop: float = field(0.1, "FFN dropout.", ge=0.0, le=1.0)
    act_cfg: ActivationConfig = section(ActivationConfig, "Activation.")


class HeadConfig(Section):
    type: Literal["sparse4d"] = field("sparse4d", "Head type.")
    num_output: int = field(300, "Boxes kept per frame after decoding (<= num_anchor).", ge=1)
    cls_threshold_to_reg: float = field(0.05, "Only queries whose class score passes this get box loss.", ge=0.0, le=1.0)
    decouple_attn: bool = field(True, "Decoupled attention: attend over [feature, anchor embedding] concatenated.")
    return_feature: bool = field(True, "Return instance features with the outputs.")
    use_reid_sampling: bool = field(False, "Re-ID sampling (not supported; must stay false).")
    embed_dims: int = field(256, "Head dims (must equal model.embed_dims).", ge=1)
    reid_dims: int = field(0, "Re-ID dims (must stay 0).", ge=0)
    num_groups: int = field(8, "Attention groups.", ge=1)
    num_decoder: int = field(6, "Decoder layers (refine steps in operation_order).", ge=1)
    num_single_frame_decoder: int = field(1, "Leading decoder layers that see only the current frame's anchors.", ge=1)
    drop_out: float = field(0.1, "Head dropout.", ge=0.0, le=1.0)
    temporal: bool = field(True, "Carry instances between frames (temporal reasoning).")
    with_quality_estimation: bool = field(True, "Predict quality (centerness, yawness).")
    operation_order: list[OperationName] = field(DEFAULT_OPERATION_ORDER, "Layer sequence of the decoder.", automl=AUTOML_OFF)
    visibility_net: VisibilityNetConfig = section(VisibilityNetConfig, "Visibility network.")
    instance_bank: InstanceBankConfig = section(InstanceBankConfig, "Instance bank (anchors and temporal instances).", automl=AUTOML_OFF)
    anchor_encoder: AnchorEncoderConfig = section(AnchorEncoderConfig, "Anchor encoder.")
    sampler: SamplerConfig = section(SamplerConfig, "Matching and denoising.")
    reg_weights: list[float] = field([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "Per-value weights of the box L1 loss.", min_length=11, max_length=11, automl=AUTOML_OFF)
    loss: LossConfig = section(LossConfig, "Losses.")
    bnneck: BnneckConfig = section(BnneckConfig, "Re-ID BN neck.")
    deformable_model: DeformableConfig = section(DeformableConfig, "Deformable multi-camera aggregation.")
    refine_layer: RefineConfig = section(RefineConfig, "Box refinement.")
    valid_vel_weight: float = field(-1.0, "Weight of velocity loss for boxes with invalid velocity (-1 keeps reg_weights).", ge=-1.0)
    graph_model: AttentionConfig = section(AttentionConfig, "Self attention between instances.")
    temp_graph_model: AttentionConfig = section(AttentionConfig, "Attention from current to carried instances.")
    decoder: DecoderConfig = section(DecoderConfig, "Box decoder.")
    norm_layer: NormLayerConfig = section(NormLayerConfig, "Norm layer.")
    ffn: FfnConfig = section(FfnConfig, "Feed-forward network.")


class ModelConfig(Section):
    type: Literal["sparse4d"] = field("sparse4d", "Model type.")
    embed_dims: int = field(256, "Feature dims through neck and head.", ge=1)
    use_grid_mask: bool = field(True, "GridMask image augmentation during training.")
    use_deformable_func: bool = field(True, "Use the fused aggregation kernel when available.")
    input_shape: list[int] = field([1408, 512], "Network input [width, height] (must equal dataset.augmentation.final_dim reversed).", min_length=2, max_length=2, automl=AUTOML_OFF)
    backbone: BackboneConfig = section(BackboneConfig, "Image backbone.", automl=AUTOML_OFF)
    neck: NeckConfig = section(NeckConfig, "FPN neck.")
    depth_branch: DepthBranchConfig = section(DepthBranchConfig, "Dense depth branch.")
    head: HeadConfig = section(HeadConfig, "Sparse4D head.")
    use_temporal_align: bool = field(False, "Ego-motion alignment (not needed for static cameras).")
