"""The Sparse4D v3 detector/tracker: ResNet + FPN + dense depth + sparse temporal head.

Two ways in:
- `forward(batch)`, `loss(out, batch)`, `predict(batch)`: the stateful API the trainer uses; the
  instance bank state lives on the module between streamed frame batches.
- `forward_frame(img, projection_mat, image_wh, time_interval, first_frame, state)`: one frame as a
  pure function of tensors and an explicit `InstanceBankState`, for export.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from sparse4d.batch import ANCHOR_VX, check_targets, image_inputs, normalize_images
from sparse4d.errors import DataError

from .aggregation import FeatureLevels, PackedLevels
from .anchor_encoder import AnchorEncoder
from .backbone import ResNet
from .box_coding import encode_boxes
from .decoder import decode_topk, to_detections
from .denoising import CarriedDenoising, DenoisingQueries, PendingDenoising, fit_group_size, retarget_carried, start_denoising_queries
from .depth import DenseDepthNet
from .grid_mask import GridMask, hide_grid
from .head import HeadOutput, Sparse4DHead
from .instance_bank import InstanceBank, InstanceBankState, gather_rows, load_anchors
from .losses import allow_reversed_yaw, centerness_loss, sigmoid_focal_loss, weighted_l1, yawness_loss
from .matching import LayerMatcher, matching_cost, moved
from .neck import FPN
from .refinement import QUALITY_CNS, QUALITY_YNS
from .unsupported import check_supported


@dataclass(frozen=True)
class LossSettings:
    gamma: float = 2.0
    alpha: float = 0.25
    cls_loss_weight: float = 2.0
    box_loss_weight: float = 0.25
    reg_weights: tuple[float, ...] = (2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    cls_threshold_to_reg: float = 0.05
    cls_allow_reverse: tuple[int, ...] = ()
    valid_vel_weight: float = -1.0
    match_cls_weight: float = 2.0
    match_box_weight: float = 0.25
    match_reg_weights: tuple[float, ...] = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class DenoisingSettings:
    num_groups: int = 5
    num_temp_groups: int = 3
    noise_scale: tuple[float, ...] = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5)
    max_dn_gt: int = 128
    add_neg_dn: bool = True
    reg_weights: tuple[float, ...] = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0)


def targets_on(targets: dict[str, list[Tensor]], device: torch.device) -> dict[str, list[Tensor]]:
    """Per-sample GT tensors on `device`; from the host without a host sync."""
    return {key: [moved(t, device) for t in values] for key, values in targets.items()}


class Sparse4D(nn.Module):
    def __init__(
        self,
        *,
        backbone: ResNet,
        neck: FPN,
        head: Sparse4DHead,
        num_classes: int,
        input_shape: tuple[int, int],
        num_cams: int,
        num_output: int,
        score_threshold: float,
        default_time_interval: float,
        losses: LossSettings,
        denoising: DenoisingSettings | None,
        depth_branch: DenseDepthNet | None = None,
        grid_mask: GridMask | None = None,
        return_feature: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.depth_branch = depth_branch
        self.grid_mask = grid_mask
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.num_cams = num_cams
        self.num_output = num_output
        self.score_threshold = score_threshold
        self.default_time_interval = default_time_interval
        self.loss_settings = losses
        self.denoising = denoising
        self.return_feature = return_feature
        # start each layer's Hungarian matching from inside the head as soon as its outputs are queued;
        # off when the head is compiled as one region (a host callback would split its graph)
        self.match_in_forward = True
        self._state: InstanceBankState | None = None
        self._carried_dn: CarriedDenoising | None = None
        # training only: which queries are carried to the next frame, and the GT instance id each was matched to
        self._carry_index: Tensor | None = None
        self._carried_targets: Tensor | None = None
        # loss constants live on the model's device: building them per step would be a host-to-device copy each
        self.register_buffer("_reg_weights", torch.tensor(losses.reg_weights, dtype=torch.float32), persistent=False)
        self.register_buffer("_match_reg_weights", torch.tensor(losses.match_reg_weights, dtype=torch.float32), persistent=False)
        self.register_buffer("_reversible_classes", torch.tensor(losses.cls_allow_reverse, dtype=torch.int64), persistent=False)
        dn_weights = denoising.reg_weights if denoising is not None else losses.match_reg_weights
        # not a buffer: stays on the host, where the trainer's GT is (`start_denoising_queries` moves it to device GT)
        self._dn_reg_weights = torch.tensor(dn_weights, dtype=torch.float32)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_config(
        cls,
        cfg: Any,
        num_classes: int,
        *,
        frozen_bn: bool = False,
        activation_checkpointing: bool = False,
        anchors: np.ndarray | None = None,
    ) -> Sparse4D:
        """Build from the typed `model:` section (`sparse4d.config.model.ModelConfig`).

        Anchors come from `cfg.head.instance_bank.anchor` unless given (tests); bad values or files raise
        SpecError / InputFileError / DataError naming the key.
        """
        check_supported(cfg)
        if num_classes < 1:
            raise DataError("the dataset defines no classes", key="dataset.classes")
        h = cfg.head
        bank_cfg = h.instance_bank
        if anchors is None:
            anchors = load_anchors(bank_cfg.anchor, bank_cfg.num_anchor)
        else:
            anchors = np.asarray(anchors, dtype=np.float32)[: bank_cfg.num_anchor]
        embed = cfg.embed_dims
        temporal = h.temporal and bank_cfg.num_temp_instances > 0
        backbone = ResNet(cfg.backbone.type, frozen_bn=frozen_bn, activation_checkpointing=activation_checkpointing)
        neck = FPN(
            list(cfg.neck.in_channels),
            cfg.neck.out_channels,
            cfg.neck.num_outs,
            cfg.neck.start_level,
            cfg.neck.add_extra_convs,
            cfg.neck.relu_before_extra_convs,
        )
        depth = None
        if cfg.depth_branch.loss_weight > 0:
            depth = DenseDepthNet(cfg.depth_branch.embed_dims, cfg.depth_branch.num_depth_layers, cfg.depth_branch.loss_weight)
        enc = h.anchor_encoder
        encoder = AnchorEncoder(list(enc.embed_dims), enc.vel_dims, enc.mode, enc.output_fc, enc.in_loops, enc.out_loops, enc.pos_embed_only)
        bank = InstanceBank(anchors, embed, bank_cfg.num_temp_instances if temporal else 0, bank_cfg.confidence_decay, bank_cfg.feat_grad)
        dm = h.deformable_model
        layers = Sparse4DHead.build_layers(
            list(h.operation_order),
            embed_dims=embed,
            num_classes=num_classes,
            deformable=dict(
                num_groups=dm.num_groups,
                num_levels=dm.num_levels,
                max_num_cams=dm.max_num_cams,
                fix_scale=[list(map(float, row)) for row in dm.kps_generator.fix_scale],
                num_learnable_pts=dm.kps_generator.num_learnable_pts,
                attn_drop=dm.attn_drop,
                proj_drop=dm.proj_drop,
                use_camera_embed=dm.use_camera_embed,
                residual_mode=dm.residual_mode,
                prefer_fused=bool(dm.use_deformable_func and cfg.use_deformable_func),
            ),
            ffn=dict(
                in_channels=h.ffn.in_channels,
                feedforward_channels=h.ffn.feedforward_channels,
                num_fcs=h.ffn.num_fcs,
                ffn_drop=h.ffn.ffn_drop,
                inplace_act=h.ffn.act_cfg.inplace,
            ),
            graph=dict(num_heads=h.graph_model.num_heads, dropout=h.graph_model.dropout),
            temp_graph=dict(num_heads=h.temp_graph_model.num_heads, dropout=h.temp_graph_model.dropout),
            refine=dict(refine_yaw=h.refine_layer.refine_yaw, with_quality_estimation=h.with_quality_estimation),
            decouple_attn=h.decouple_attn,
            temporal=temporal,
        )
        sampler = h.sampler
        head = Sparse4DHead(
            instance_bank=bank,
            anchor_encoder=encoder,
            operation_order=list(h.operation_order),
            layers=layers,
            num_single_frame_decoder=h.num_single_frame_decoder,
            temporal=temporal,
            num_temp_dn_groups=sampler.num_temp_dn_groups,
        )
        losses = LossSettings(
            gamma=h.loss.cls.gamma,
            alpha=h.loss.cls.alpha,
            cls_loss_weight=h.loss.cls.loss_weight,
            box_loss_weight=h.loss.reg.box_weight,
            reg_weights=tuple(h.reg_weights),
            cls_threshold_to_reg=h.cls_threshold_to_reg,
            cls_allow_reverse=tuple(h.loss.reg.cls_allow_reverse),
            valid_vel_weight=h.valid_vel_weight,
            match_cls_weight=sampler.cls_weight,
            match_box_weight=sampler.box_weight,
            match_reg_weights=tuple(sampler.reg_weights),
        )
        denoising = DenoisingSettings(
            num_groups=sampler.num_dn_groups,
            num_temp_groups=sampler.num_temp_dn_groups,
            noise_scale=tuple(sampler.dn_noise_scale),
            max_dn_gt=sampler.max_dn_gt,
            add_neg_dn=sampler.add_neg_dn,
            reg_weights=tuple(sampler.reg_weights),
        )
        return cls(
            backbone=backbone,
            neck=neck,
            head=head,
            num_classes=num_classes,
            input_shape=(int(cfg.input_shape[0]), int(cfg.input_shape[1])),
            num_cams=dm.num_cams,
            num_output=h.num_output,
            score_threshold=h.decoder.score_threshold,
            default_time_interval=bank_cfg.default_time_interval,
            losses=losses,
            denoising=denoising,
            depth_branch=depth,
            grid_mask=GridMask() if cfg.use_grid_mask else None,
            return_feature=h.return_feature,
        )

    # ------------------------------------------------------------------ state
    def reset_temporal_state(self) -> None:
        """Forget carried instances (and carried denoising groups): the next frame starts fresh."""
        self._state = None
        self._carried_dn = None
        self._carry_index = None
        self._carried_targets = None

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> InstanceBankState:
        bank = self.head.instance_bank
        return InstanceBankState.empty(batch_size, bank.num_temp, bank.embed_dims, device=device)

    @property
    def temporal_state(self) -> InstanceBankState | None:
        return self._state

    # ------------------------------------------------------------------ network
    def extract_features(self, img: Tensor) -> list[Tensor]:
        """(B, N, 3, H, W) -> per FPN level (B, N, C, h, w)."""
        b, n = img.shape[:2]
        feats = self.neck(self.backbone(img.flatten(0, 1)))
        return [f.reshape(b, n, *f.shape[1:]) for f in feats]

    def encode_images(
        self,
        img: Tensor,
        projection_mat: Tensor | None = None,
        gt_depth: Tensor | None = None,
        *,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        grids: Tensor | None = None,
    ) -> tuple[list[Tensor], FeatureLevels, Tensor | None]:
        """Everything in a step that reads the images: their normalisation (uint8 `img` with its
        `mean`/`std`, see sparse4d.batch) and GridMask (`grids` from `GridMask.draw`), FPN levels, the
        head's packed copy of them and, given depth targets (B, N, H, W), the dense-depth loss
        (`projection_mat` gives the focal lengths). A plain function of tensors, so in training
        `compile_regions` makes one region of it: one CUDA-graph replay per direction instead of one
        each for backbone, neck and packing, plus the eager kernels of the rest."""
        if mean is not None and std is not None:
            img = normalize_images(img, mean, std)
        if grids is not None:
            img = hide_grid(img, grids)
        feats = self.extract_features(img)
        levels = self.head.prepare_levels(feats, self.head.prefers_fused())
        if isinstance(levels, PackedLevels):
            # Packed, every reader of the maps reads views of the packed copy: the depth head, the
            # head's grid_sample fallback, and whoever gets this region's outputs. Its backward then
            # has one gradient for all the maps, the packed one (channels-last). Returned as maps of
            # their own, they were outputs nobody differentiates, and autograd handed the compiled
            # backward a zero gradient for each (4 fills, 367 MB at the default config), summed into
            # the FPN outputs' gradients. Session 18's H100 trace shows those sums converted by a
            # copy before each output convolution's backward (1.35 ms a step): the suspect.
            feats = levels.views()
            levels = levels._replace(maps=feats)
        loss_depth = None
        if self.depth_branch is not None and gt_depth is not None and projection_mat is not None:
            focal = projection_mat.float()[..., 0, 0]
            loss_depth = self.depth_branch.loss(self.depth_branch(feats, focal), gt_depth.float())
        return feats, levels, loss_depth

    def _check_images(self, img: Tensor) -> None:
        if img.dim() != 5 or img.shape[2] != 3:
            raise DataError(f"batch['img'] must be (B, N, 3, H, W), got {tuple(img.shape)}")
        w, h = self.input_shape
        if (img.shape[-1], img.shape[-2]) != (w, h):
            raise DataError(
                f"images are {img.shape[-1]}x{img.shape[-2]} but model.input_shape is [{w}, {h}]",
                key="model.input_shape",
                hint="make model.input_shape equal dataset.augmentation.final_dim reversed",
            )

    def _run_frame(
        self,
        feature_maps: list[Tensor],
        projection_mat: Tensor,
        image_wh: Tensor,
        time_interval: Tensor,
        first_frame: Tensor,
        state: InstanceBankState,
        timestamp: Tensor,
        **head_kwargs: Any,
    ) -> tuple[HeadOutput, dict[str, Tensor], InstanceBankState]:
        temporal_mask = state.valid & ~first_frame
        head_out = self.head(feature_maps, projection_mat, image_wh, time_interval, temporal_mask, state.features, state.anchors, **head_kwargs)
        bank = self.head.instance_bank
        a = bank.num_anchor
        cls = head_out.classification[-1][:, :a]
        anchors = head_out.prediction[-1][:, :a]
        quality = head_out.quality[-1]
        confidence = cls.detach().max(dim=-1).values.float().sigmoid()  # float32: bf16 ties the confident ones
        track_ids, next_id = bank.assign_track_ids(state, confidence, temporal_mask, first_frame, self.score_threshold)
        assert head_out.instance_feature is not None
        new_state = bank.next_state(state, head_out.instance_feature, anchors, confidence, track_ids, next_id, temporal_mask, timestamp)
        decoded = decode_topk(cls.detach(), anchors.detach(), None if quality is None else quality[:, :a].detach(), track_ids, self.num_output, self.score_threshold)
        return head_out, decoded, new_state

    def forward_frame(
        self, img: Tensor, projection_mat: Tensor, image_wh: Tensor, time_interval: Tensor, first_frame: Tensor, state: InstanceBankState
    ) -> tuple[dict[str, Tensor], InstanceBankState]:
        """One frame without denoising or losses, state in and out (traceable: no tensor-valued branches).

        time_interval (B,) seconds since the slot's previous frame (any positive value when first_frame).
        Returns decoded fixed-size outputs (boxes_3d (B, K, 10), scores_3d, labels_3d, track_ids,
        quality, keep) plus raw last-layer `classification`/`prediction`, and the next state.
        """
        feats = self.extract_features(img)
        head_out, decoded, new_state = self._run_frame(
            feats, projection_mat, image_wh, time_interval.float(), first_frame, state, state.timestamp + time_interval.to(torch.float64)
        )
        outputs = dict(decoded)
        outputs["classification"] = head_out.classification[-1]
        outputs["prediction"] = head_out.prediction[-1]
        return outputs, new_state

    def _time_interval(self, state: InstanceBankState, first_frame: Tensor, timestamp: Tensor) -> tuple[Tensor, Tensor]:
        """(temporal mask (B,), seconds since the slot's previous frame (B,), the default where unknown)."""
        temporal_mask = state.valid & ~first_frame
        dt = timestamp - state.timestamp
        return temporal_mask, torch.where(temporal_mask & (dt > 0), dt, torch.full_like(dt, self.default_time_interval)).float()

    def predict_frame(
        self, img: Tensor, projection_mat: Tensor, image_wh: Tensor, timestamp: Tensor, first_frame: Tensor, state: InstanceBankState
    ) -> tuple[dict[str, Tensor], InstanceBankState]:
        """What `forward` computes for one frame in eval mode, as a pure function of tensors (state in,
        state out; timestamp (B,) float64 seconds). `graphed_stream.GraphedStream` captures this."""
        temporal_mask, time_interval = self._time_interval(state, first_frame, timestamp)
        feats = self.extract_features(img)
        _, decoded, new_state = self._run_frame(
            feats, projection_mat.float(), image_wh.float(), time_interval, first_frame, state, timestamp
        )
        return decoded, new_state

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One streamed frame batch; uses and updates the internal temporal state."""
        img, mean, std = image_inputs(batch)  # uint8 from the dataset: normalised in `encode_images`, on the model's device
        self._check_images(img)
        b = img.shape[0]
        device = img.device
        state = self._state
        if state is None or state.batch_size != b or state.valid.device != device:
            state = self.initial_state(b, device)
            self._carried_dn = None
        first_frame = batch["first_frame"].to(device=device, dtype=torch.bool)
        timestamp = batch["timestamp"].to(device=device, dtype=torch.float64)
        temporal_mask, time_interval = self._time_interval(state, first_frame, timestamp)

        gt = None
        pending_dn: PendingDenoising | None = None
        if self.training:
            given = self._targets(batch)
            gt = targets_on(given, device)
            if self.denoising is not None and self.denoising.num_groups > 0:
                pending_dn = start_denoising_queries(  # solved after the backbone is queued; on the host from host GT
                    given["anchors"],
                    given["labels"],
                    given["ids"],
                    num_groups=self.denoising.num_groups,
                    noise_scale=list(self.denoising.noise_scale),
                    max_dn_gt=self.denoising.max_dn_gt,
                    add_neg_dn=self.denoising.add_neg_dn,
                    reg_weights=self._dn_reg_weights,
                    device=device,
                )

        grids = self.grid_mask.draw(img) if self.grid_mask is not None and self.training else None
        # camera geometry stays float32 under bf16 autocast: a bf16 projection matrix (entries in the
        # thousands, 8 significant bits) moved projected key points by up to ~11 px at 1408x512
        projection_mat = batch["projection_mat"].to(device=device, dtype=torch.float32)
        image_wh = batch["image_wh"].to(device=device, dtype=torch.float32)
        gt_depth = batch["gt_depth"].to(device=device) if self.training and "gt_depth" in batch else None
        feats, levels, loss_depth = self.encode_images(img, projection_mat, gt_depth, mean=mean, std=std, grids=grids)
        if isinstance(levels, PackedLevels):  # here, between compiled regions: see keep_level_table
            from .fused_aggregation import keep_level_table

            keep_level_table(levels)
        head_kwargs: dict[str, Any] = {"levels": self.head.sink_levels(levels)}
        matcher = None
        if gt is not None:
            if pending_dn is not None:
                head_kwargs.update(self._denoising_inputs(pending_dn.finish(), gt, b))
            if self.match_in_forward:
                matcher = self._layer_matcher(gt)
                a = self.head.instance_bank.num_anchor
                head_kwargs["on_layer"] = lambda cls, box: matcher.add_layer(cls[:, :a], box[:, :a])
        head_out, decoded, new_state = self._run_frame(feats, projection_mat, image_wh, time_interval, first_frame, state, timestamp, **head_kwargs)
        self._state = new_state.kept()
        if self.training:
            bank = self.head.instance_bank
            confidence = head_out.classification[-1][:, : bank.num_anchor].detach().max(dim=-1).values.float().sigmoid()
            self._carry_index = bank.carry_index(state, confidence, temporal_mask)[1]
        self._carried_dn = self.head.carry_dn(head_out) if self.training else None

        out: dict[str, Any] = {
            "targets": gt,
            "matcher": matcher,
            "temporal_mask": temporal_mask,
            "classification": head_out.classification,
            "prediction": head_out.prediction,
            "quality": head_out.quality,
            "dn": head_out.dn,
            "layer_dn": head_out.layer_dn,
            "decoded": decoded,
            "track_ids": decoded["track_ids"],
        }
        if self.return_feature:
            out["instance_feature"] = head_out.instance_feature
        if loss_depth is not None:
            out["loss_depth"] = loss_depth
        return out

    def _denoising_inputs(self, dn: DenoisingQueries, gt: dict[str, list[Tensor]], batch_size: int) -> dict[str, Any]:
        """The head's denoising arguments: this frame's groups, and last frame's carried groups retargeted."""
        inputs: dict[str, Any] = {"dn": dn}
        carried = self._carried_dn
        if carried is not None and carried.features.shape[0] == batch_size:
            box_t, cls_t = retarget_carried(carried, gt["anchors"], gt["labels"], gt["ids"])
            m = dn.group_size
            inputs["carried_dn"] = carried.resized(m)
            inputs["carried_dn_targets"] = (fit_group_size(box_t, m, 0.0), fit_group_size(cls_t, m, -1))
        return inputs

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Detections with track ids per sample; call in eval mode, frames in order."""
        out = self.forward(batch)
        return to_detections(out["decoded"])

    # ------------------------------------------------------------------ losses
    def _targets(self, batch: dict[str, Any]) -> dict[str, list[Tensor]]:
        """Encoded GT anchors, labels and instance ids per sample, where the batch holds them: the
        trainer keeps them on the host (`batch.TARGET_KEYS`), where the denoising assignment is
        solved without waiting for the GPU; the caller moves them to the device for the losses."""
        check_targets(batch, self.num_classes)  # label values are checked only while on the host
        anchors, labels, ids = [], [], []
        inst = batch.get("instance_ids")
        for i in range(batch["img"].shape[0]):
            lab = batch["gt_labels_3d"][i].to(dtype=torch.int64)
            anchors.append(encode_boxes(batch["gt_bboxes_3d"][i].to(dtype=torch.float32)))
            labels.append(lab)
            ids.append(inst[i].to(dtype=torch.int64) if inst is not None else torch.arange(len(lab), device=lab.device))
        return {"anchors": anchors, "labels": labels, "ids": ids}

    def _regression_weights(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Per-target weights (..., 11) and NaN-free targets; rows with unknown velocity use valid_vel_weight."""
        s = self.loss_settings
        weights = self._reg_weights.to(targets.dtype).expand_as(targets)
        if s.valid_vel_weight >= 0:
            bad_vel = ~torch.isfinite(targets[..., ANCHOR_VX:]).all(dim=-1, keepdim=True)
            vel_weights = torch.where(bad_vel, torch.full_like(weights[..., ANCHOR_VX:], s.valid_vel_weight), weights[..., ANCHOR_VX:])
            weights = torch.cat([weights[..., :ANCHOR_VX], vel_weights], dim=-1)
        return weights, torch.nan_to_num(targets, nan=0.0)

    def _box_losses(self, box: Tensor, target: Tensor, labels: Tensor, quality: Tensor | None, normaliser: Tensor, mask: Tensor, suffix: str) -> dict[str, Tensor]:
        """Box (and quality) losses over the rows where `mask` (any leading shape)."""
        s = self.loss_settings
        weights, target = self._regression_weights(target)
        target = allow_reversed_yaw(box.detach(), target, labels, self._reversible_classes)
        out = {f"loss_box{suffix}": weighted_l1(box, target, weights, normaliser, mask) * s.box_loss_weight}
        if quality is not None:
            out[f"loss_cns{suffix}"] = centerness_loss(quality[..., QUALITY_CNS], box, target, normaliser, mask)
            out[f"loss_yns{suffix}"] = yawness_loss(quality[..., QUALITY_YNS], box, target, normaliser, mask)
        return out

    def _padded_targets(self, gt: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor, list[int]]:
        """(labels (B, M), raw anchors (B, M, 11), GT count per sample); M >= 1 so gathers stay well-formed."""
        counts = [len(x) for x in gt["labels"]]
        labels = pad_sequence(gt["labels"], batch_first=True, padding_value=0)
        anchors = pad_sequence(gt["anchors"], batch_first=True)
        if labels.shape[1] == 0:  # no GT anywhere: one padding column
            labels = labels.new_zeros(labels.shape[0], 1)
            anchors = anchors.new_zeros(anchors.shape[0], 1, anchors.shape[-1])
        return labels, anchors, counts

    def matching_costs(self, logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_anchors: Tensor) -> Tensor:
        """Hungarian costs of one layer's queries: logits (B, Q, C), boxes (B, Q, 11), padded GT labels
        (B, M) and raw anchors (B, M, 11) -> float32 (B, Q, M). A pure tensor function: in training
        `compile_regions` fuses its ~20 elementwise kernels per layer (the largest share of the step's
        eager kernels, benchmarks/eager_ops.py) into one."""
        s = self.loss_settings
        return matching_cost(
            logits.float(), boxes.float(), gt_labels, torch.nan_to_num(gt_anchors.float(), nan=0.0), alpha=s.alpha, gamma=s.gamma,
            cls_weight=s.match_cls_weight, box_weight=s.match_box_weight, reg_weights=self._match_reg_weights,
        )

    def _layer_matcher(self, gt: dict[str, list[Tensor]]) -> LayerMatcher:
        labels, anchors, counts = self._padded_targets(gt)
        return LayerMatcher(functools.partial(self.matching_costs, gt_labels=labels, gt_anchors=anchors), counts)

    def _match_all_layers(self, out: dict[str, Any], gt: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """Hungarian-match every decoder layer's normal queries to the GT; the forward has usually
        started it layer by layer (`out["matcher"]`).

        Returns (assigned GT index (L, B, A), -1 = unmatched; padded GT labels (B, M); padded raw GT anchors (B, M, 11)).
        """
        a = self.head.instance_bank.num_anchor
        matcher = out.get("matcher")
        if matcher is None or matcher.num_layers != len(out["classification"]):
            matcher = self._layer_matcher(gt)
            for cls, box in zip(out["classification"], out["prediction"]):
                matcher.add_layer(cls[:, :a], box[:, :a])
        # queued before the wait: once the last layer is solved, the host issues the losses at once
        # (the GPU has nothing else to run meanwhile)
        labels, anchors, _ = self._padded_targets(gt)
        return matcher.assignments(), labels, anchors

    def query_losses(self, cls: Tensor, box: Tensor, quality: Tensor | None, assigned: Tensor, gt_labels: Tensor, gt_anchors: Tensor) -> dict[str, Tensor]:
        """One layer's normal queries: cls (B, A, C), box (B, A, 11), assigned (B, A) GT index or -1;
        every query is in the focal loss, matched confident ones in the box losses. A pure tensor
        function (fixed shapes, no host syncs) so `compile_regions` can fuse it."""
        s = self.loss_settings
        matched = assigned >= 0
        safe = assigned.clamp(min=0)
        labels = torch.where(matched, torch.gather(gt_labels, 1, safe), torch.full_like(safe, self.num_classes))
        targets = gather_rows(gt_anchors, safe).to(box.dtype)
        num_pos = matched.sum().float()
        out = {"loss_cls": sigmoid_focal_loss(cls.flatten(0, 1), labels.flatten(), gamma=s.gamma, alpha=s.alpha, normaliser=num_pos) * s.cls_loss_weight}
        reg_mask = matched
        if s.cls_threshold_to_reg > 0:
            reg_mask = reg_mask & (cls.detach().max(dim=-1).values.sigmoid() > s.cls_threshold_to_reg)
        out.update(self._box_losses(box, targets, labels, quality, num_pos, reg_mask, ""))
        return out

    def denoising_losses(self, cls: Tensor, box: Tensor, quality: Tensor | None, valid: Tensor, labels: Tensor, box_targets: Tensor) -> dict[str, Tensor]:
        """One layer's denoising queries (B, G*M, ...): valid slots in the focal loss, positives in the box losses."""
        s = self.loss_settings
        pos = valid & (labels >= 0)
        num_pos = pos.sum().float()
        out = {"loss_cls": sigmoid_focal_loss(cls.flatten(0, 1), labels.flatten(), gamma=s.gamma, alpha=s.alpha, normaliser=num_pos, mask=valid.flatten())
               * s.cls_loss_weight}
        out.update(self._box_losses(box, box_targets.to(box.dtype), labels, quality, num_pos, pos, ""))
        return out

    def _keep_carried_targets(self, assigned: Tensor, carried: Tensor | None, ids: Tensor | None, temporal_mask: Tensor | None) -> Tensor:
        """Track-consistent matching: a carried query keeps the object its previous-frame query was matched to.

        In every layer after the merge, carried query j whose object is still annotated is assigned to it;
        the query the solver had given that object takes j's former target. Upstream Sparse4D leaves this
        to the solver; then it may hand each object to a fresh query every frame, the model learns to
        score carried instances as background and no track ID survives a frame (AMOTA 0 on our synthetic
        benchmark; see benchmarks/README.md, tracking). Only the targets change, never the queries.
        carried: (B, T) GT instance id each carried query's previous query was matched to, or -1.
        """
        if carried is None or ids is None or temporal_mask is None or ids.shape[1] == 0 or carried.shape[0] != assigned.shape[1]:
            return assigned
        t = carried.shape[1]
        a = assigned.shape[2]
        hit = (carried[:, :, None] == ids[:, None, :]) & (carried[:, :, None] >= 0)  # (B, T, M)
        want = torch.where(hit.any(dim=-1) & temporal_mask[:, None], hit.float().argmax(dim=-1), torch.full_like(carried, -1))
        forced = want >= 0
        own = torch.zeros(a, t, dtype=torch.bool, device=assigned.device)
        own[:t] = torch.eye(t, dtype=torch.bool, device=assigned.device)
        layers = []
        for layer, row in enumerate(assigned):
            if layer < self.head.num_single_frame_decoder:
                layers.append(row)
                continue
            holds = (row[:, :, None] == want[:, None, :]) & forced[:, None, :] & ~own  # (B, A, T): q holds what j wants
            row = torch.where(holds.any(dim=-1), torch.gather(row[:, :t], 1, holds.float().argmax(dim=-1)), row)
            row = torch.cat([torch.where(forced, want, row[:, :t]), row[:, t:]], dim=1)
            taken = ((row[:, :, None] == want[:, None, :]) & forced[:, None, :] & ~own).any(dim=-1)  # chains: no duplicates
            layers.append(torch.where(taken, torch.full_like(row, -1), row))
        return torch.stack(layers)

    def _remember_carried_targets(self, final: Tensor, ids: Tensor | None) -> None:
        """GT instance id (or -1) of each query carried to the next frame, from the last layer's matching."""
        if self._carry_index is None or ids is None or ids.shape[1] == 0:
            self._carried_targets = None
            return
        matched = torch.where(final >= 0, torch.gather(ids, 1, final.clamp(min=0)), torch.full_like(final, -1))
        self._carried_targets = gather_rows(matched, self._carry_index)

    def loss(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per decoder layer: matched-query losses (cls, box, cns, yns) and denoising losses (suffix _dn);
        plus the depth loss; 'loss' is their sum. The host waits only for the matching costs' copies,
        which the forward started layer by layer."""
        device = out["prediction"][0].device
        gt = out.get("targets") or targets_on(self._targets(batch), device)
        ids = pad_sequence(gt["ids"], batch_first=True, padding_value=-2) if gt["ids"] else None  # before the matching wait
        assigned, gt_labels, gt_anchors = self._match_all_layers(out, gt)
        layer_dn = out.get("layer_dn") or [out.get("dn")] * len(out["prediction"])
        losses, final = self.decoder_losses(
            out["classification"], out["prediction"], out["quality"], layer_dn, assigned, gt_labels, gt_anchors,
            self._carried_targets, ids, out.get("temporal_mask"),
        )
        self._remember_carried_targets(final, ids)
        losses = dict(losses)
        if out.get("loss_depth") is not None:  # computed with the image features (`encode_images`)
            losses["loss_depth"] = out["loss_depth"]
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def decoder_losses(
        self,
        classification: list[Tensor],
        prediction: list[Tensor],
        quality: list[Tensor | None],
        layer_dn: list[DenoisingQueries | None],
        assigned: Tensor,
        gt_labels: Tensor,
        gt_anchors: Tensor,
        carried_targets: Tensor | None,
        ids: Tensor | None,
        temporal_mask: Tensor | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Every decoder layer's losses from the solver's assignment (L, B, A), and the last layer's final
        assignment. Tensors in, tensors out, no host syncs: `compile_regions` compiles it as one region."""
        a = self.head.instance_bank.num_anchor
        assigned = self._keep_carried_targets(assigned, carried_targets, ids, temporal_mask)
        losses: dict[str, Tensor] = {}
        for layer, (cls, box, qual, dn) in enumerate(zip(classification, prediction, quality, layer_dn)):
            q = None if qual is None else qual[:, :a]
            for name, value in self.query_losses(cls[:, :a], box[:, :a], q, assigned[layer], gt_labels, gt_anchors).items():
                losses[f"{name}_{layer}"] = value
            if dn is not None and cls.shape[1] > a:
                qd = None if qual is None else qual[:, a:]
                for name, value in self.denoising_losses(cls[:, a:], box[:, a:], qd, dn.valid, dn.cls_targets, dn.box_targets).items():
                    losses[f"{name}_dn_{layer}"] = value
        return losses, assigned[-1]

    # ------------------------------------------------------------------ export helpers
    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, InstanceBankState]:
        """Inputs of `forward_frame` shaped by model.input_shape and head.deformable_model.num_cams."""
        w, h = self.input_shape
        n = self.num_cams
        img = torch.zeros(batch_size, n, 3, h, w, device=device)
        proj = torch.eye(4, device=device).expand(batch_size, n, 4, 4).clone()
        wh = torch.tensor([float(w), float(h)], device=device).expand(batch_size, n, 2).clone()
        dt = torch.full((batch_size,), self.default_time_interval, device=device)
        first = torch.ones(batch_size, dtype=torch.bool, device=device)
        return img, proj, wh, dt, first, self.initial_state(batch_size, device)
