"""`sparse4d quantize`: int8 weight-only post-training quantization of a trained Sparse4D checkpoint.

What gets quantized (`quantize.layers` empty = every eligible layer; else modules whose qualified
name matches a pattern: fnmatch wildcards, or a name prefix ending at a dot; `quantize.skip_names`
removes matches the same way):
- `nn.Linear` -> TorchAO `Int8WeightOnlyConfig` (per-row int8 `Int8Tensor` weights). Linears owned by
  `nn.MultiheadAttention` are not eligible: its fused kernel reads the weight directly.
- `nn.Conv2d` -> `Int8WeightConv2d` below. TorchAO's `Int8Tensor` has no convolution kernel, so the
  conv weight is quantized per output channel with TorchAO's affine quantization primitives, stored as
  int8 + scale, and dequantized once per forward. The ResNet is most of the model's bytes, so this is
  what makes the file really smaller.

`quantize.mode: static_ptq` is refused: static activation quantization needs calibration through the
whole multi-camera model (projection matrices, temporal state), which plain calibration images cannot
drive; use weight_only_ptq.

Writes under results_dir: `quantized_model_torchao.pth` (loadable with `torch.load(weights_only=True)`
once `torchao.quantization.Int8Tensor` is allowed: `load_quantized_model` does it in a scoped
`torch.serialization.safe_globals` block) and `quantize_report.json` (layers, sizes, mAP before/after).
"""
from __future__ import annotations

import fnmatch
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse4d.errors import DataError, SpecError

LOG = logging.getLogger(__name__)
QUANTIZED_NAME = "quantized_model_torchao.pth"
REPORT_NAME = "quantize_report.json"
QUANTIZED_FORMAT = "sparse4d-quantized-torchao-1"


class Int8WeightConv2d(nn.Module):
    """A Conv2d whose weight is stored as int8 per output channel plus a float scale (symmetric)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: Any, dilation: tuple[int, int], groups: int, bias: bool) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.register_buffer("weight_int8", torch.zeros(out_channels, in_channels // groups, *kernel_size, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_channels, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels), requires_grad=False) if bias else None

    @classmethod
    def shaped_like(cls, conv: nn.Conv2d) -> Int8WeightConv2d:
        if conv.padding_mode != "zeros":
            raise ValueError("only zero-padded convolutions are quantized")
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                   conv.bias is not None)

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> Int8WeightConv2d:
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

        out = cls.shaped_like(conv)
        weight = conv.weight.detach().float()
        block = (1, *weight.shape[1:])  # one scale per output channel
        scale, zero_point = choose_qparams_affine(weight, MappingType.SYMMETRIC, block, torch.int8, eps=1e-12)
        out.weight_int8.copy_(quantize_affine(weight, block, scale, zero_point, torch.int8))
        out.weight_scale.copy_(scale.reshape(-1, 1, 1, 1))
        if conv.bias is not None:
            out.bias.data.copy_(conv.bias.detach())
        return out

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


# ---------------------------------------------------------------------------- layer selection
def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p.rstrip(".") + ".") for p in patterns)


def eligible_layers(model: nn.Module) -> dict[str, str]:
    """Qualified module name -> 'linear' | 'conv2d' for every layer this action can quantize."""
    inside_mha = {f"{name}.{child}" if name else child for name, module in model.named_modules()
                  if isinstance(module, nn.MultiheadAttention) for child, _ in module.named_modules() if child}
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if name in inside_mha:
            continue
        if type(module) is nn.Linear:
            found[name] = "linear"
        elif type(module) is nn.Conv2d and module.padding_mode == "zeros":
            found[name] = "conv2d"
    return found


def select_layers(model: nn.Module, layers: list[str], skip_names: list[str]) -> dict[str, str]:
    eligible = eligible_layers(model)
    chosen = {n: k for n, k in eligible.items() if not layers or _matches(n, layers)}
    if layers and not chosen:
        raise SpecError(f"{layers} match no quantizable layer (Linear or Conv2d)", key="quantize.layers",
                        hint=f"leave it empty for every eligible layer, or use names such as {sorted(eligible)[:3]}")
    chosen = {n: k for n, k in chosen.items() if not _matches(n, skip_names)}
    if not chosen:
        raise SpecError("quantize.skip_names removes every selected layer: nothing would be quantized", key="quantize.skip_names")
    return chosen


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_int8_weight_only(model: nn.Module, chosen: dict[str, str]) -> None:
    """Quantize the chosen layers in place (Linear via TorchAO, Conv2d via Int8WeightConv2d)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    linears = {n for n, k in chosen.items() if k == "linear"}
    if linears:
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: fqn in linears and type(module) is nn.Linear)
    for name, kind in chosen.items():
        if kind == "conv2d":
            _set_submodule(model, name, Int8WeightConv2d.from_float(model.get_submodule(name)))


# ---------------------------------------------------------------------------- saving / loading
def serialized_size(state: dict[str, Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def _int8_tensor_class() -> type:
    from torchao.quantization import Int8Tensor

    return Int8Tensor


def load_quantized_payload(path: str | Path, *, key: str) -> dict[str, Any]:
    """torch.load(weights_only=True) with exactly torchao's Int8Tensor allowed, inside a scoped block."""
    from sparse4d.engine.checkpoint import load_checkpoint_file

    with torch.serialization.safe_globals([_int8_tensor_class()]):
        payload = load_checkpoint_file(path, what=key)
    if not isinstance(payload, dict) or payload.get("format") != QUANTIZED_FORMAT:
        raise DataError(f"{path} is not a quantized Sparse4D checkpoint (written by `sparse4d quantize`)", key=key)
    return payload


def rebuild_quantized(payload: dict[str, Any], *, key: str) -> nn.Module:
    """The float model from the stored spec, the same layers swapped to int8, then the saved tensors assigned."""
    from sparse4d.config.model import ModelConfig

    try:
        model_cfg = ModelConfig.model_validate(payload["spec"]["model"])
        classes = [str(c) for c in payload["classes"]]
        state = payload["state_dict"]
        chosen = {str(n): str(k) for n, k in payload["quantized_layers"].items()}
        model = _float_skeleton(model_cfg, classes, state, key=key)
        for name, kind in chosen.items():
            if kind == "conv2d":
                _set_submodule(model, name, Int8WeightConv2d.shaped_like(model.get_submodule(name)))
            else:
                model.get_submodule(name).weight = nn.Parameter(state[f"{name}.weight"], requires_grad=False)
        model.load_state_dict(state, strict=True, assign=True)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"the quantized weights do not fit the stored model config ({str(exc)[:300]})", key=key) from None
    return model.eval()


def _float_skeleton(model_cfg: Any, classes: list[str], state: dict[str, Tensor], *, key: str) -> nn.Module:
    from sparse4d.model.sparse4d import Sparse4D

    anchors = state.get("head.instance_bank.anchor")
    if anchors is None:
        raise DataError("the quantized checkpoint has no head.instance_bank.anchor", key=key)
    cfg = model_cfg.model_copy(deep=True)
    cfg.head.instance_bank.num_anchor = int(anchors.shape[0])
    return Sparse4D.from_config(cfg, len(classes), anchors=anchors.float().numpy())


def load_quantized_model(path: str | Path, spec: Any = None, *, key: str = "evaluate.checkpoint") -> nn.Module:
    """The hook `sparse4d.engine.model_loading.load_model_for_eval` calls for quantized_model_torchao.pth."""
    payload = load_quantized_payload(path, key=key)
    if spec is not None:
        saved, wanted = [str(c) for c in payload["classes"]], [str(c) for c in spec.dataset.classes]
        if saved != wanted:
            raise DataError(f"{path} was trained on classes {saved}, the spec lists {wanted}", key="dataset.classes",
                            hint="set dataset.classes to the training classes")
    return rebuild_quantized(payload, key=key)


# ---------------------------------------------------------------------------- evaluation
def val_map(model: nn.Module, spec: Any, model_cfg: Any, classes: list[str], device: torch.device) -> float | None:
    """mAP on the val split with the engine's evaluation loop; None when the split has no ground truth."""
    from sparse4d.engine.data_module import build_dataset, eval_loader
    from sparse4d.engine.predictions import Annotations
    from sparse4d.engine.runloop import predict_loader
    from sparse4d.engine.scoring import kpis, score_results

    dataset = build_dataset(spec.dataset, model_cfg, "val")
    annotations = Annotations.from_dataset(dataset, use_valid_flag=spec.dataset.val_dataset.use_valid_flag)
    if not annotations.has_gt:
        return None
    loader = eval_loader(dataset, int(spec.dataset.batch_size), int(spec.dataset.num_workers))
    results = predict_loader(model, loader, classes, device=device, tracking_threshold=spec.dataset.val_dataset.tracking_threshold)
    return float(kpis(score_results(results, annotations, ("detection",)))["mAP"])


def quantize_device(requested: str) -> torch.device:
    if requested == "trt":
        raise SpecError("TensorRT is not a torchao device", key="quantize.device", hint="use cpu or cuda")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"quantize.device={requested} but no CUDA GPU is visible: quantizing on cpu", stacklevel=2)
        return torch.device("cpu")
    return torch.device(requested)


# ---------------------------------------------------------------------------- action
def run_quantize(spec: Any) -> Path:
    """Quantize per a validated QuantizeSpec; returns the quantized checkpoint's path."""
    from sparse4d.engine.action_status import action_status
    from sparse4d.jobs.status_file import SUCCESS

    q = spec.quantize
    results_dir = Path(q.results_dir or spec.results_dir)
    with action_status(results_dir, "quantize started") as status:
        report = _quantize(spec, results_dir)
    kpi = {k: report[k] for k in ("size_before_bytes", "size_after_bytes", "compression", "mAP_before", "mAP_after") if report[k] is not None}
    status.write(SUCCESS, f"quantized {report['num_quantized']} layers: {report['compression']:.2f}x smaller", kpi=kpi)
    return results_dir / QUANTIZED_NAME


def _quantize(spec: Any, results_dir: Path) -> dict[str, Any]:
    from sparse4d.engine.checkpoint import atomic_torch_save, spec_as_plain_dict
    from sparse4d.engine.deploy_model import load_sparse4d_checkpoint
    from sparse4d.engine.io import atomic_write_json

    q = spec.quantize
    if q.backend != "torchao":
        raise SpecError(f"backend {q.backend!r} is not supported", key="quantize.backend", hint="use torchao")
    if q.mode != "weight_only_ptq":
        raise SpecError("static_ptq is not supported: static activation ranges would need calibration through the whole "
                        "multi-camera temporal model, which calibration images alone cannot drive",
                        key="quantize.mode", hint="use quantize.mode=weight_only_ptq")
    device = quantize_device(str(q.device))
    started = time.monotonic()
    loaded = load_sparse4d_checkpoint(q.model_path, key="quantize.model_path", fallback_model_cfg=spec.model,
                                      fallback_classes=list(spec.dataset.classes))
    model = loaded.model
    num_eligible = len(eligible_layers(model))
    chosen = select_layers(model, list(q.layers), list(q.skip_names))
    size_before = serialized_size(model.state_dict())
    map_before = val_map(model.to(device), spec, loaded.model_cfg, loaded.classes, device)
    model = model.cpu()
    apply_int8_weight_only(model, chosen)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    size_after = serialized_size(state)
    stored_spec = loaded.payload.get("spec") if isinstance(loaded.payload.get("spec"), dict) else spec_as_plain_dict(spec)
    payload = {"format": QUANTIZED_FORMAT, "state_dict": state, "quantized_layers": dict(chosen), "spec": stored_spec,
               "classes": list(loaded.classes), "source": str(q.model_path), "mode": str(q.mode)}
    target = results_dir / QUANTIZED_NAME
    atomic_torch_save(payload, target)
    reloaded = load_quantized_model(target, None, key="quantize.model_path")  # what evaluate will see
    map_after = val_map(reloaded.to(device), spec, loaded.model_cfg, loaded.classes, device)
    report = {
        "backend": "torchao", "mode": str(q.mode), "device": str(device), "source": str(q.model_path), "output": str(target),
        "num_quantized": len(chosen), "num_eligible": num_eligible,
        "quantized_layers": [{"name": n, "kind": k, "method": "torchao Int8WeightOnlyConfig" if k == "linear" else "int8 per-channel (torchao primitives)"}
                             for n, k in sorted(chosen.items())],
        "size_before_bytes": size_before, "size_after_bytes": size_after, "compression": size_before / max(size_after, 1),
        "file_bytes": target.stat().st_size, "mAP_before": map_before, "mAP_after": map_after,
        "mAP_drop": None if map_before is None or map_after is None else map_before - map_after,
        "seconds": time.monotonic() - started,
    }
    atomic_write_json(report, results_dir / REPORT_NAME, indent=2)
    print(f"quantized {len(chosen)} layers: weights {size_before / 1e6:.2f} MB -> {size_after / 1e6:.2f} MB "
          f"({report['compression']:.2f}x); val mAP {map_before} -> {map_after}", flush=True)
    return report
