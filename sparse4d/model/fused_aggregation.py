"""Fused deformable aggregation in Triton: one forward pass, and a backward without atomics.

Same function as `aggregation.deformable_aggregation` (bilinear, `align_corners=False`, zeros outside),
computed without materialising the (B, N, C, Q, P) grid_sample intermediates.

Why the backward looks like this: the public CUDA kernel adds every gradient with atomics, and the
adds into the point and weight gradients collide (all channels of a sample hit one address), which
serialises them. Here
  * one program per query recomputes its samples and reduces over channels in registers, so the point
    and weight gradients are written once each, and it records, per sample corner, the pixel it
    touches (a key) and its bilinear coefficient;
  * the keys are sorted (stable, so the result is deterministic) and cut into one segment per pixel;
  * one program per pixel sums its segment (grad_out x weight x coefficient) and writes that pixel's
    gradient once. Pixels nobody touched get zeros from the same write, so no memset is needed.
    Trained queries gather on few objects, so a few coarse-level pixels get thousands of entries and
    their programs run far longer than the rest; `PIXEL_BACKWARD = "chunks"` (the default since it
    measured faster inside the training step, benchmarks/README.md session 10) instead cuts the sorted
    entries into equal chunks: a run inside a chunk is stored by it, and a run that spans chunks is
    summed part by part into per-chunk carry rows that a second pass adds in order (the chunks
    zero-fill the gradient in the maps' dtype first). Both modes add in a fixed order, so gradients
    repeat bit for bit.

A query's points usually fall in one or two of the six cameras (projection sends the rest outside
every map), so the forward and query-backward programs skip the levels of cameras that none of the
query's points can touch (`_camera_seen`) instead of running masked loads there.

The levels are first copied into one flat channels-last (B, N, H, W, C) buffer, so the kernels
address every level from one pointer by offsets that depend only on shapes (`pack_feature_levels`,
once per head forward). The kernels run inside `torch.library` custom ops (forward, backward, and
the same pair for an opt-in gradient sink, below), so torch.compile traces a whole decoder through
them without a graph break.

This module imports on machines without CUDA or Triton; `enable_fused_aggregation()` then returns
False and the grid_sample reference stays in use.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import FeatureLevels, PackedLevels, deformable_aggregation, set_fused_aggregation_impl

try:  # Triton is optional: CPU-only installs have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_META_COLUMNS = 4  # per level: element offset in the packed buffer, H, W, first pixel index
_CHANNEL_ALIGN = 16  # channels; every level then starts 16-element aligned (16-byte loads along channels)


def triton_available() -> bool:
    return triton is not None


def fused_aggregation_available() -> bool:
    """True when the kernel can run here: Triton importable and a CUDA device present."""
    return triton is not None and torch.cuda.is_available()


def enable_fused_aggregation() -> bool:
    """Plug the kernel into `aggregation.select_aggregation_impl`; False (and no change) when unavailable."""
    if not fused_aggregation_available():
        return False
    set_fused_aggregation_impl(fused_deformable_aggregation, pack_feature_levels)
    return True


def fused_deformable_aggregation(feature_maps: FeatureLevels, points: Tensor, weights: Tensor) -> Tensor:
    """Drop-in for `deformable_aggregation`; falls back to it where the kernel cannot run. Given the
    maps as a list it packs them first; the head packs once per forward (`pack_feature_levels`)."""
    levels = feature_maps if isinstance(feature_maps, PackedLevels) else pack_feature_levels(feature_maps)
    if not isinstance(levels, PackedLevels) or not _kernel_applies(levels.maps, points, weights):
        return deformable_aggregation(feature_maps, points, weights)
    if levels.sink is not None and levels.token is not None:
        return torch.ops.sparse4d.aggregate_packed_sinking(levels.packed, points, weights, levels.level_hw, levels.token, levels.sink)
    return torch.ops.sparse4d.aggregate_packed(levels.packed, points, weights, levels.level_hw)


def _kernel_applies(feature_maps: list[Tensor], points: Tensor, weights: Tensor) -> bool:
    if not _maps_fit_kernel(feature_maps) or not points.is_cuda:
        return False
    if points.dtype not in _SUPPORTED_DTYPES or weights.dtype not in _SUPPORTED_DTYPES:
        return False
    b, q, p, n, two = points.shape
    if two != 2 or weights.shape[:5] != (b, q, n, len(feature_maps), p):
        return False
    if b * q * p * n * len(feature_maps) * 4 >= 2**31:
        return False  # entry indices are int32 inside the kernels
    if feature_maps[0].shape[:2] != (b, n) or feature_maps[0].device != points.device:
        return False
    return feature_maps[0].shape[2] % weights.shape[-1] == 0


def _maps_fit_kernel(feature_maps: list[Tensor]) -> bool:
    """Maps the kernels can address: CUDA, one supported dtype, (B, N, C, H, W) with shared B, N, C
    and C a multiple of 16 (every level then starts 16-element aligned in the packed buffer)."""
    if triton is None or not feature_maps or not feature_maps[0].is_cuda:
        return False
    first = feature_maps[0]
    if first.dtype not in _SUPPORTED_DTYPES or first.dim() != 5 or first.shape[2] % _CHANNEL_ALIGN:
        return False
    return all(f.dim() == 5 and f.shape[:3] == first.shape[:3] and f.dtype == first.dtype and f.device == first.device for f in feature_maps)


# ----------------------------------------------------------------------------------------------------
# Packing (traceable PyTorch, so torch.compile fuses it) and the custom ops around the kernels


def pack_feature_levels(feature_maps: list[Tensor]) -> FeatureLevels:
    """The levels as one flat channels-last buffer, level after level, each (B, N, H, W, C); the list
    unchanged when the kernel cannot read them.

    The kernels see one base pointer and offsets that depend only on shapes (safe under CUDA-graph
    replays and compiled regions, which move tensors). Packing is a copy (about 0.7 ms at batch 2 of the
    default config on an H100), so the head packs once per forward for all decoder layers; autograd
    sums the layers' gradients in the packed layout and unpacks them once.
    """
    if not _maps_fit_kernel(feature_maps):
        return feature_maps
    return PackedLevels.pack(feature_maps)


def _level_rows(level_hw: list[int], batch: int, cams: int, channels: int) -> tuple[list[list[int]], int]:
    """Per level [element offset in the packed buffer, H, W, first pixel index], and the pixel count."""
    rows: list[list[int]] = []
    pixel_base = 0
    for h, w in zip(level_hw[0::2], level_hw[1::2]):
        rows.append([pixel_base * channels, h, w, pixel_base])
        pixel_base += batch * cams * h * w
    return rows, pixel_base


def _packed_channels(packed: Tensor, points: Tensor, level_hw: list[int]) -> int:
    b, n = points.shape[0], points.shape[3]
    return packed.numel() // (b * n * sum(h * w for h, w in zip(level_hw[0::2], level_hw[1::2])))


@torch.library.custom_op("sparse4d::aggregate_packed", mutates_args=())
def _aggregate_packed(packed: Tensor, points: Tensor, weights: Tensor, level_hw: list[int]) -> Tensor:
    """Forward kernel on packed levels: (B, Q, C) in the maps' dtype."""
    return _run_forward(packed, points, weights, level_hw)


def _run_forward(packed: Tensor, points: Tensor, weights: Tensor, level_hw: list[int]) -> Tensor:
    b, q, p, n, _ = points.shape
    groups = weights.shape[-1]
    c = _packed_channels(packed, points, level_hw)
    rows, _ = _level_rows(level_hw, b, n, c)
    table = _table_tensor(rows, packed.device)
    out = torch.empty(b, q, c, device=points.device, dtype=packed.dtype)
    block_g = _next_pow2(groups) if FORWARD_GROUPS_PER_PROGRAM <= 0 else _next_pow2(FORWARD_GROUPS_PER_PROGRAM)
    grid = (b * q, triton.cdiv(groups, block_g))
    _forward_kernel[grid](
        packed, table, points.contiguous(), weights.contiguous(), out, q, n, len(rows),
        P=p, G=groups, CG=c // groups, BLOCK_P=_next_pow2(p), BLOCK_G=block_g, BLOCK_CG=_next_pow2(c // groups),
        num_warps=FORWARD_WARPS,
    )
    return out


@_aggregate_packed.register_fake
def _aggregate_packed_shape(packed: Tensor, points: Tensor, weights: Tensor, level_hw: list[int]) -> Tensor:
    b, q = points.shape[:2]
    return packed.new_empty(b, q, _packed_channels(packed, points, level_hw))


@torch.library.custom_op("sparse4d::aggregate_packed_backward", mutates_args=())
def _aggregate_packed_backward(
    packed: Tensor, points: Tensor, weights: Tensor, grad_out: Tensor, level_hw: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad of packed, grad of points, grad of weights), each in its input's dtype."""
    return _run_backward(packed, points, weights, grad_out, level_hw, sink=None)


def _run_backward(
    packed: Tensor, points: Tensor, weights: Tensor, grad_out: Tensor, level_hw: list[int], sink: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward kernels. The packed gradient goes to a new buffer, or is added into `sink`
    (packed's shape and dtype), which is then returned in its place."""
    b, q, p, n, _ = points.shape
    groups = weights.shape[-1]
    c = _packed_channels(packed, points, level_hw)
    cg = c // groups
    device = points.device
    rows, total_pixels = _level_rows(level_hw, b, n, c)
    table = _table_tensor(rows, device)
    points = points.contiguous()
    weights = weights.contiguous()
    grad_out = grad_out.contiguous()
    grad_points = torch.empty(points.shape, device=device, dtype=torch.float32)
    grad_weights = torch.empty(weights.shape, device=device, dtype=torch.float32)
    entries = b * q * p * n * len(rows) * 4
    key_dtype = torch.int32 if total_pixels < 2**31 - 1 else torch.int64
    keys = torch.empty(entries, device=device, dtype=key_dtype)
    coefs = torch.empty(entries, device=device, dtype=torch.float32)
    _query_backward_kernel[(b * q,)](
        packed, table, points, weights, grad_out, grad_points, grad_weights, keys, coefs,
        q, n, len(rows), total_pixels,
        P=p, G=groups, CG=cg, BLOCK_P=_next_pow2(p), BLOCK_G=_next_pow2(groups), BLOCK_CG=_next_pow2(cg),
        num_warps=BACKWARD_WARPS,
    )
    sorted_keys, order = torch.sort(keys, stable=True)
    accumulate = sink is not None
    # Key total_pixels marks corners outside every map; it sorts last and belongs to no pixel.
    if PIXEL_BACKWARD == "chunks":
        inside = torch.searchsorted(sorted_keys, torch.full((1,), total_pixels, device=device, dtype=key_dtype))
        # pixels nobody touched: zeros, or what the sink holds already
        grad_packed = sink if sink is not None else torch.zeros(packed.shape, device=device, dtype=packed.dtype)
        chunks = triton.cdiv(entries, CHUNK_ENTRIES)
        carry = torch.empty(chunks, 2, c, device=device, dtype=torch.float32)  # only crossing runs write it
        blocks = dict(G=groups, CG=cg, CHUNK=CHUNK_ENTRIES, BLOCK_G=_next_pow2(groups), BLOCK_CG=_next_pow2(cg), ACCUMULATE=accumulate)
        _chunk_sum_kernel[(chunks,)](
            sorted_keys, inside, order, coefs, weights, grad_out, grad_packed, carry, q, n, len(rows), P=p, **blocks,
            num_warps=PIXEL_WARPS,
        )
        _chunk_carry_kernel[(chunks,)](sorted_keys, inside, carry, grad_packed, **blocks, num_warps=PIXEL_WARPS)
    else:
        bounds = torch.arange(total_pixels + 1, device=device, dtype=key_dtype)
        seg_start = torch.searchsorted(sorted_keys, bounds)
        grad_packed = sink if sink is not None else torch.empty(packed.shape, device=device, dtype=packed.dtype)
        _pixel_backward_kernel[(total_pixels,)](
            seg_start, order, coefs, weights, grad_out, grad_packed, q, n, len(rows),
            P=p, G=groups, CG=cg, BLOCK_E=PIXEL_BLOCK_ENTRIES, BLOCK_G=_next_pow2(groups), BLOCK_CG=_next_pow2(cg),
            ACCUMULATE=accumulate, num_warps=PIXEL_WARPS,
        )
    return grad_packed, grad_points.to(points.dtype), grad_weights.to(weights.dtype)


@_aggregate_packed_backward.register_fake
def _aggregate_packed_backward_shape(
    packed: Tensor, points: Tensor, weights: Tensor, grad_out: Tensor, level_hw: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(packed), torch.empty_like(points), torch.empty_like(weights)


def _save_for_backward(ctx, inputs: tuple, output: Tensor) -> None:
    packed, points, weights, level_hw = inputs
    ctx.save_for_backward(packed, points, weights)
    ctx.level_hw = level_hw


def _backward(ctx, grad_out: Tensor):
    packed, points, weights = ctx.saved_tensors
    grads = torch.ops.sparse4d.aggregate_packed_backward(packed, points, weights, grad_out, ctx.level_hw)
    return grads[0], grads[1], grads[2], None


_aggregate_packed.register_autograd(_backward, setup_context=_save_for_backward)


# ----------------------------------------------------------------------------------------------------
# A gradient sink: every decoder layer reads the same packed buffer, so autograd gets one packed-size
# gradient per layer and sums them (session 16, H100: 5 adds of 368 MB, 1.79 ms a step, plus 6 zero
# fills). With a sink, the layers' backward kernels add their pixels' gradients into one buffer
# instead. The layers read `packed` detached plus a scalar `token` made from it (`_GradientSink`);
# the token's gradient reaches `_GradientSink.backward` only after every layer's backward has run, and
# that hands the sink on as the packed buffer's gradient. The adds go through `sink.data`, out of
# sight of autograd's version counter and of the compiler (the ops declare no mutation), so a compiled
# layer's backward calls the kernel on the buffer itself. The sink must keep its address across steps
# (CUDA-graph replays write to the captured address): `attach_gradient_sink` takes a persistent one.


class _GradientSink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, packed: Tensor, sink: Tensor) -> Tensor:  # type: ignore[override]
        sink.zero_()
        ctx.sink = sink
        # which forward owns the sink now: its backward alone may hand the sink on
        ctx.generation = _SINK_GENERATIONS[id(sink)] = _SINK_GENERATIONS.get(id(sink), 0) + 1
        ctx.handed_on = False
        return packed.new_zeros(())

    @staticmethod
    def backward(ctx, grad_token: Tensor):  # type: ignore[override]
        if ctx.handed_on or _SINK_GENERATIONS.get(id(ctx.sink)) != ctx.generation:
            # a second backward through one graph (retain_graph), or the backward of a forward whose
            # sink a later forward has zeroed and refilled: the sink holds other gradients too
            raise RuntimeError(
                "the gradient sink (head.gradient_sink) allows one backward per forward, run before the "
                "next training forward; set model.head.gradient_sink = False for retain_graph or for "
                "losses summed over several forwards")
        ctx.handed_on = True
        return ctx.sink, None


_SINK_GENERATIONS: dict[int, int] = {}  # id(sink) -> count of forwards that zeroed it (sinks live as long as their head)


def attach_gradient_sink(levels: PackedLevels, sink: Tensor) -> PackedLevels:
    """`levels` whose fused aggregations add their packed gradient into `sink` (packed's shape, dtype
    and device; zeroed here, once per forward) and hand it back to the packing as one gradient."""
    if sink.shape != levels.packed.shape or sink.dtype != levels.packed.dtype or sink.device != levels.packed.device:
        raise ValueError(f"gradient sink {tuple(sink.shape)} {sink.dtype} does not match the packed levels "
                         f"{tuple(levels.packed.shape)} {levels.packed.dtype}")
    token = _GradientSink.apply(levels.packed, sink)
    return levels._replace(packed=levels.packed.detach(), token=token, sink=sink)


@torch.library.custom_op("sparse4d::aggregate_packed_sinking", mutates_args=())
def _aggregate_packed_sinking(packed: Tensor, points: Tensor, weights: Tensor, level_hw: list[int], token: Tensor, sink: Tensor) -> Tensor:
    """`aggregate_packed` whose backward adds the packed gradient into `sink` (see above)."""
    return _run_forward(packed, points, weights, level_hw)


@_aggregate_packed_sinking.register_fake
def _aggregate_packed_sinking_shape(packed: Tensor, points: Tensor, weights: Tensor, level_hw: list[int], token: Tensor, sink: Tensor) -> Tensor:
    return _aggregate_packed_shape(packed, points, weights, level_hw)


@torch.library.custom_op("sparse4d::aggregate_packed_backward_sinking", mutates_args=())
def _aggregate_packed_backward_sinking(
    packed: Tensor, points: Tensor, weights: Tensor, grad_out: Tensor, level_hw: list[int], sink: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad of points, grad of weights, the token's gradient: a zero); the packed gradient is added
    into `sink` through its .data."""
    _, grad_points, grad_weights = _run_backward(packed, points, weights, grad_out, level_hw, sink=sink.data)
    return grad_points, grad_weights, sink.new_zeros(())


@_aggregate_packed_backward_sinking.register_fake
def _aggregate_packed_backward_sinking_shape(
    packed: Tensor, points: Tensor, weights: Tensor, grad_out: Tensor, level_hw: list[int], sink: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(points), torch.empty_like(weights), sink.new_empty(())


def _save_for_sinking_backward(ctx, inputs: tuple, output: Tensor) -> None:
    packed, points, weights, level_hw, token, sink = inputs
    ctx.save_for_backward(packed, points, weights)
    ctx.level_hw = level_hw
    ctx.sink = sink  # not saved: the layers' backwards add into it one after another


def _sinking_backward(ctx, grad_out: Tensor):
    packed, points, weights = ctx.saved_tensors
    grad_points, grad_weights, grad_token = torch.ops.sparse4d.aggregate_packed_backward_sinking(
        packed, points, weights, grad_out, ctx.level_hw, ctx.sink)
    return None, grad_points, grad_weights, None, grad_token, None


_aggregate_packed_sinking.register_autograd(_sinking_backward, setup_context=_save_for_sinking_backward)


@torch.compiler.disable  # host-side table building: pinned copies and capture checks do not trace
def _table_tensor(rows: list[list[int]], device: torch.device) -> Tensor:
    """The level table on `device`: the one `keep_level_table` kept for these rows, else a new one.

    A new one, eagerly, is a pinned, non-blocking copy (a pageable one would wait for the GPU to go
    idle). While a CUDA graph is being captured it is one fill kernel per entry, carrying the values
    as arguments (16 per call at the default config, 192 tiny kernels a training step), because
    a captured copy would re-read, at every replay, a pinned host buffer freed right after capture.
    """
    table = _KEPT_TABLES.get((_table_key(rows), device))
    if table is not None:
        return table
    if device.type != "cuda":
        return torch.tensor(rows, dtype=torch.int64, device=device)
    if torch.cuda.is_current_stream_capturing():
        table = torch.empty(len(rows), _META_COLUMNS, dtype=torch.int64, device=device)
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                table[i, j].fill_(value)
        return table
    return torch.tensor(rows, dtype=torch.int64).pin_memory().to(device, non_blocking=True)


def keep_level_table(levels: PackedLevels) -> None:
    """Build once and keep the level table of `levels`' shape, for every later kernel call on them.

    Call it from eager code (the model's forward between compiled regions). The kept table is then
    what a CUDA-graph-captured call reads, with no fill kernels. Inside a compiled region the first
    call may run in a CUDA-graph memory pool, whose memory the graphs reuse, so the table is made
    here and not there. It is copied once and waited for once, the first step of a shape, so that
    reads on any stream see its values.
    """
    if not levels.maps:
        return
    b, n, c = levels.maps[0].shape[:3]
    rows, _ = _level_rows(levels.level_hw, b, n, c)
    device = levels.packed.device
    key = (_table_key(rows), device)
    if key in _KEPT_TABLES:
        return
    table = torch.tensor(rows, dtype=torch.int64, device=device)  # a pageable copy: waits for the GPU, once
    _KEPT_TABLES[key] = table


def _table_key(rows: list[list[int]]) -> tuple:
    return tuple(tuple(row) for row in rows)


_KEPT_TABLES: dict[tuple, Tensor] = {}  # (rows, device) -> level table; a few shapes per process


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# Launch shapes, measured on an H100 (benchmarks/aggregation_kernel.py); module-level so the
# benchmark can sweep them.
FORWARD_WARPS = 8
FORWARD_GROUPS_PER_PROGRAM = 0  # 0 = all groups in one program
BACKWARD_WARPS = 8
PIXEL_WARPS = 1
PIXEL_BLOCK_ENTRIES = 2
# How the feature gradient is summed per pixel from the sorted entries:
#   "segments": one program per pixel walks that pixel's run and writes its gradient once (no atomics,
#               deterministic); a program costs as much as its run, and trained points pile thousands
#               of entries onto a few coarse-level pixels.
#   "chunks":   one program per CHUNK_ENTRIES sorted entries, so long runs are split evenly; a run
#               inside a chunk is stored by it, and the parts of a run that spans chunks go to an
#               fp32 carry row per chunk, which a second pass adds in chunk order (no atomics, so
#               deterministic too, and the gradient is written in the maps' dtype: no fp32 buffer).
# H200, default training step (session 10, same machine, back to back): segments 112.6 ms/step,
# chunks 99.8 ms/step (the kernel 8.4 -> 5.2 ms per step), when chunks still added with fp32 atomics
# into a zero-filled fp32 buffer cast to bf16 afterwards (about 2.4 ms per step of fills and casts);
# the two-pass form above writes the maps' dtype once.
PIXEL_BACKWARD = "chunks"
CHUNK_ENTRIES = 32


# ----------------------------------------------------------------------------------------------------
# Triton kernels

if triton is not None:

    @triton.jit
    def _bilinear_setup(u, v, height, width):
        """Pixel coordinates of the top-left corner, fractional parts, and whether any corner is inside."""
        hf = height.to(tl.float32)
        wf = width.to(tl.float32)
        x = u * wf - 0.5
        y = v * hf - 0.5
        near = (x > -1.0) & (x < wf) & (y > -1.0) & (y < hf)  # NaN compares False
        x = tl.where(near, x, -2.0)
        y = tl.where(near, y, -2.0)
        x0f = tl.floor(x)
        y0f = tl.floor(y)
        return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f, near

    @triton.jit
    def _camera_seen(u, v, mask_p):
        """Whether any sample point can touch this camera's maps: `_bilinear_setup`'s `near` implies
        u, v in (-0.5/W, 1 + 0.5/W) at every level. Most of a query's points fall in one or two of the
        cameras, and the kernels skip the others' levels instead of running masked loads there."""
        inside = (u > -0.5) & (u < 1.5) & (v > -0.5) & (v < 1.5) & mask_p
        return tl.max(inside.to(tl.int32), axis=0) > 0

    @triton.jit
    def _corner_value(image, x0, y0, near, height, width, chan, chan_mask, DX: tl.constexpr, DY: tl.constexpr, GC: tl.constexpr):
        """(BLOCK_P, BLOCK_G, BLOCK_CG) float32 values at corner (x0 + DX, y0 + DY), zero outside the map."""
        xi = x0 + DX
        yi = y0 + DY
        ok = near & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        pix = (yi * width + xi).to(tl.int64) * GC
        return tl.load(image + pix[:, None, None] + chan[None, :, :], mask=ok[:, None, None] & chan_mask[None, :, :], other=0.0).to(tl.float32)

    @triton.jit
    def _corner_values(image, x0, y0, near, height, width, chan, chan_mask, GC: tl.constexpr):
        """The four bilinear corners' values: top-left, top-right, bottom-left, bottom-right."""
        v00 = _corner_value(image, x0, y0, near, height, width, chan, chan_mask, 0, 0, GC)
        v01 = _corner_value(image, x0, y0, near, height, width, chan, chan_mask, 1, 0, GC)
        v10 = _corner_value(image, x0, y0, near, height, width, chan, chan_mask, 0, 1, GC)
        v11 = _corner_value(image, x0, y0, near, height, width, chan, chan_mask, 1, 1, GC)
        return v00, v01, v10, v11

    @triton.jit
    def _forward_kernel(
        feat_ptr, table_ptr, points_ptr, weights_ptr, out_ptr, Q, N, L,
        P: tl.constexpr, G: tl.constexpr, CG: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
    ):
        bq = tl.program_id(0)
        b = bq // Q
        offs_p = tl.arange(0, BLOCK_P)
        offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        offs_j = tl.arange(0, BLOCK_CG)
        mask_p = offs_p < P
        mask_g = offs_g < G
        chan = offs_g[:, None] * CG + offs_j[None, :]
        chan_mask = mask_g[:, None] & (offs_j < CG)[None, :]
        acc = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
        for n in range(N):
            pt = points_ptr + ((bq * P + offs_p) * N + n) * 2
            u = tl.load(pt, mask=mask_p, other=-1.0).to(tl.float32)
            v = tl.load(pt + 1, mask=mask_p, other=-1.0).to(tl.float32)
            if _camera_seen(u, v, mask_p):
                for lvl in range(L):
                    row = table_ptr + lvl * 4
                    offset = tl.multiple_of(tl.load(row), 16)
                    height = tl.load(row + 1)
                    width = tl.load(row + 2)
                    x0, y0, fx, fy, near = _bilinear_setup(u, v, height, width)
                    near = near & mask_p
                    w_idx = (((bq * N + n) * L + lvl) * P + offs_p)[:, None] * G + offs_g[None, :]
                    wts = tl.load(weights_ptr + w_idx, mask=mask_p[:, None] & mask_g[None, :], other=0.0).to(tl.float32)
                    image = feat_ptr + offset + (b * N + n) * height * width * (G * CG)
                    v00, v01, v10, v11 = _corner_values(image, x0, y0, near, height, width, chan, chan_mask, G * CG)
                    wx0 = (1.0 - fx)[:, None, None]
                    wx1 = fx[:, None, None]
                    sample = (1.0 - fy)[:, None, None] * (wx0 * v00 + wx1 * v01) + fy[:, None, None] * (wx0 * v10 + wx1 * v11)
                    acc += tl.sum(sample * wts[:, :, None], axis=0)
        tl.store(out_ptr + bq * (G * CG) + chan, acc.to(out_ptr.dtype.element_ty), mask=chan_mask)

    @triton.jit
    def _query_backward_kernel(
        feat_ptr, table_ptr, points_ptr, weights_ptr, grad_out_ptr, grad_points_ptr, grad_weights_ptr,
        keys_ptr, coefs_ptr, Q, N, L, OUTSIDE_KEY,
        P: tl.constexpr, G: tl.constexpr, CG: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
    ):
        bq = tl.program_id(0)
        b = bq // Q
        offs_p = tl.arange(0, BLOCK_P)
        offs_g = tl.arange(0, BLOCK_G)
        offs_j = tl.arange(0, BLOCK_CG)
        mask_p = offs_p < P
        mask_g = offs_g < G
        chan = offs_g[:, None] * CG + offs_j[None, :]
        chan_mask = mask_g[:, None] & (offs_j < CG)[None, :]
        go = tl.load(grad_out_ptr + bq * (G * CG) + chan, mask=chan_mask, other=0.0).to(tl.float32)
        for n in range(N):
            pt = points_ptr + ((bq * P + offs_p) * N + n) * 2
            u = tl.load(pt, mask=mask_p, other=-1.0).to(tl.float32)
            v = tl.load(pt + 1, mask=mask_p, other=-1.0).to(tl.float32)
            grad_u = tl.zeros([BLOCK_P], dtype=tl.float32)
            grad_v = tl.zeros([BLOCK_P], dtype=tl.float32)
            seen = _camera_seen(u, v, mask_p)
            for lvl in range(L):
                row = table_ptr + lvl * 4
                offset = tl.multiple_of(tl.load(row), 16)
                height = tl.load(row + 1)
                width = tl.load(row + 2)
                pixel_base = tl.load(row + 3)
                x0, y0, fx, fy, near = _bilinear_setup(u, v, height, width)
                near = near & mask_p
                image_pix = (b * N + n) * height * width
                entry = ((((bq * P + offs_p) * N + n) * L + lvl) * 4).to(tl.int64)
                for corner in tl.static_range(4):  # each corner's pixel key and bilinear coefficient
                    dy = corner // 2
                    dx = corner % 2
                    xi = x0 + dx
                    yi = y0 + dy
                    ok = near & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                    cw = (fx * dx + (1.0 - fx) * (1 - dx)) * (fy * dy + (1.0 - fy) * (1 - dy))
                    key = tl.where(ok, pixel_base + image_pix + yi * width + xi, OUTSIDE_KEY)
                    tl.store(keys_ptr + entry + corner, key.to(keys_ptr.dtype.element_ty), mask=mask_p)
                    tl.store(coefs_ptr + entry + corner, cw, mask=mask_p)
                w_idx = (((bq * N + n) * L + lvl) * P + offs_p)[:, None] * G + offs_g[None, :]
                w_mask = mask_p[:, None] & mask_g[None, :]
                grad_w = tl.zeros([BLOCK_P, BLOCK_G], dtype=tl.float32)
                if seen:
                    wts = tl.load(weights_ptr + w_idx, mask=w_mask, other=0.0).to(tl.float32)
                    image = feat_ptr + offset + image_pix * (G * CG)
                    v00, v01, v10, v11 = _corner_values(image, x0, y0, near, height, width, chan, chan_mask, G * CG)
                    wx0 = (1.0 - fx)[:, None, None]
                    wx1 = fx[:, None, None]
                    wy0 = (1.0 - fy)[:, None, None]
                    wy1 = fy[:, None, None]
                    sample = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
                    grad_w = tl.sum(sample * go[None, :, :], axis=2)
                    scaled = go[None, :, :] * wts[:, :, None]
                    d_x = wy0 * (v01 - v00) + wy1 * (v11 - v10)
                    d_y = wx0 * (v10 - v00) + wx1 * (v11 - v01)
                    grad_u += tl.sum(tl.sum(scaled * d_x, axis=2), axis=1) * width.to(tl.float32)
                    grad_v += tl.sum(tl.sum(scaled * d_y, axis=2), axis=1) * height.to(tl.float32)
                tl.store(grad_weights_ptr + w_idx, grad_w, mask=w_mask)
            gp = grad_points_ptr + ((bq * P + offs_p) * N + n) * 2
            tl.store(gp, grad_u, mask=mask_p)
            tl.store(gp + 1, grad_v, mask=mask_p)

    @triton.jit
    def _entry_owner(entry, N, L, P: tl.constexpr):
        """Entry index ((((bq * P + p) * N + n) * L + lvl) * 4 + corner) -> (bq, its weights' row
        ((bq * N + n) * L + lvl) * P + p)."""
        sample = entry // 4
        lvl = sample % L
        sample = sample // L
        n = sample % N
        sample = sample // N
        p = sample % P
        bq = sample // P
        return bq, ((bq * N + n) * L + lvl) * P + p

    @triton.jit
    def _store_pixel(ptr, acc, mask, ACCUMULATE: tl.constexpr):
        """One pixel's gradient (float32 `acc`) stored once, or added to what the buffer holds (a
        gradient sink that earlier decoder layers' backwards wrote into)."""
        if ACCUMULATE:
            acc += tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptr, acc.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _pixel_backward_kernel(
        seg_start_ptr, order_ptr, coefs_ptr, weights_ptr, grad_out_ptr, grad_buffer_ptr, Q, N, L,
        P: tl.constexpr, G: tl.constexpr, CG: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, ACCUMULATE: tl.constexpr,
    ):
        pixel = tl.program_id(0).to(tl.int64)
        start = tl.load(seg_start_ptr + pixel)
        end = tl.load(seg_start_ptr + pixel + 1)
        offs_e = tl.arange(0, BLOCK_E)
        offs_g = tl.arange(0, BLOCK_G)
        offs_j = tl.arange(0, BLOCK_CG)
        mask_g = offs_g < G
        chan = offs_g[:, None] * CG + offs_j[None, :]
        chan_mask = mask_g[:, None] & (offs_j < CG)[None, :]
        acc = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
        for first in range(start, end, BLOCK_E):
            pos = first + offs_e
            live = pos < end
            entry = tl.load(order_ptr + pos, mask=live, other=0)
            coef = tl.load(coefs_ptr + entry, mask=live, other=0.0)
            bq, w_row = _entry_owner(entry, N, L, P)
            w_idx = w_row[:, None] * G + offs_g[None, :]
            wts = tl.load(weights_ptr + w_idx, mask=live[:, None] & mask_g[None, :], other=0.0).to(tl.float32)
            go = tl.load(
                grad_out_ptr + bq[:, None, None] * (G * CG) + chan[None, :, :],
                mask=live[:, None, None] & chan_mask[None, :, :], other=0.0,
            ).to(tl.float32)
            acc += tl.sum(go * (wts * coef[:, None])[:, :, None], axis=0)
        _store_pixel(grad_buffer_ptr + pixel * (G * CG) + chan, acc, chan_mask, ACCUMULATE)

    @triton.jit
    def _chunk_sum_kernel(
        sorted_keys_ptr, inside_ptr, order_ptr, coefs_ptr, weights_ptr, grad_out_ptr, grad_ptr, carry_ptr, Q, N, L,
        P: tl.constexpr, G: tl.constexpr, CG: tl.constexpr,
        CHUNK: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, ACCUMULATE: tl.constexpr,
    ):
        """Pass 1 of "chunks": sum the runs of one chunk of sorted entries. A run that lies inside the
        chunk is that pixel's whole gradient and is stored; the part of a run that crosses the chunk's
        start goes to carry[chunk, 0], the part of one that crosses its end to carry[chunk, 1]."""
        chunk = tl.program_id(0).to(tl.int64)
        first = chunk * CHUNK
        inside = tl.load(inside_ptr).to(tl.int64)  # entries from `inside` on are outside every map
        last = tl.minimum(first + CHUNK, inside)
        if first < last:
            offs_g = tl.arange(0, BLOCK_G)
            offs_j = tl.arange(0, BLOCK_CG)
            mask_g = offs_g < G
            chan = offs_g[:, None] * CG + offs_j[None, :]
            chan_mask = mask_g[:, None] & (offs_j < CG)[None, :]
            head = tl.load(sorted_keys_ptr + first).to(tl.int64)
            before = tl.load(sorted_keys_ptr + first - 1, mask=first > 0, other=-1).to(tl.int64)
            tail = tl.load(sorted_keys_ptr + last - 1).to(tl.int64)
            after = tl.load(sorted_keys_ptr + last, mask=last < inside, other=-1).to(tl.int64)
            head_crosses = before == head
            carry_head = carry_ptr + chunk * (2 * G * CG) + chan
            acc = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
            current = head
            for pos in range(first, last):
                key = tl.load(sorted_keys_ptr + pos).to(tl.int64)
                if key != current:  # the run of `current` ends here
                    if head_crosses & (current == head):
                        tl.store(carry_head, acc, mask=chan_mask)
                    else:
                        _store_pixel(grad_ptr + current * (G * CG) + chan, acc, chan_mask, ACCUMULATE)
                    acc = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
                    current = key
                entry = tl.load(order_ptr + pos)
                coef = tl.load(coefs_ptr + entry)
                bq, w_row = _entry_owner(entry, N, L, P)
                wts = tl.load(weights_ptr + w_row * G + offs_g, mask=mask_g, other=0.0).to(tl.float32)
                go = tl.load(grad_out_ptr + bq * (G * CG) + chan, mask=chan_mask, other=0.0).to(tl.float32)
                acc += go * (wts * coef)[:, None]
            if head_crosses & (current == head):
                tl.store(carry_head, acc, mask=chan_mask)
            elif after == tail:
                tl.store(carry_head + G * CG, acc, mask=chan_mask)
            else:
                _store_pixel(grad_ptr + current * (G * CG) + chan, acc, chan_mask, ACCUMULATE)

    @triton.jit
    def _chunk_carry_kernel(
        sorted_keys_ptr, inside_ptr, carry_ptr, grad_ptr,
        G: tl.constexpr, CG: tl.constexpr, CHUNK: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
        ACCUMULATE: tl.constexpr,
    ):
        """Pass 2 of "chunks": the chunk where a crossing run starts adds the run's parts from the
        chunks it reaches into, in chunk order, and stores that pixel's gradient."""
        chunk = tl.program_id(0).to(tl.int64)
        first = chunk * CHUNK
        inside = tl.load(inside_ptr).to(tl.int64)
        last = tl.minimum(first + CHUNK, inside)
        if (first < last) & (last < inside):
            tail = tl.load(sorted_keys_ptr + last - 1).to(tl.int64)
            after = tl.load(sorted_keys_ptr + last).to(tl.int64)
            head = tl.load(sorted_keys_ptr + first).to(tl.int64)
            before = tl.load(sorted_keys_ptr + first - 1, mask=first > 0, other=-1).to(tl.int64)
            starts_here = (head != tail) | (before != head)
            if (after == tail) & starts_here:
                offs_g = tl.arange(0, BLOCK_G)
                offs_j = tl.arange(0, BLOCK_CG)
                chan = offs_g[:, None] * CG + offs_j[None, :]
                chan_mask = (offs_g < G)[:, None] & (offs_j < CG)[None, :]
                acc = tl.load(carry_ptr + chunk * (2 * G * CG) + G * CG + chan, mask=chan_mask, other=0.0)
                reach = chunk + 1
                going = after == tail
                while going:  # chunk `reach` starts with the run; it continues past it if it fills it
                    acc += tl.load(carry_ptr + reach * (2 * G * CG) + chan, mask=chan_mask, other=0.0)
                    reach_last = tl.minimum((reach + 1) * CHUNK, inside)
                    fills = tl.load(sorted_keys_ptr + reach_last - 1).to(tl.int64) == tail
                    next_key = tl.load(sorted_keys_ptr + reach_last, mask=reach_last < inside, other=-1).to(tl.int64)
                    going = fills & (next_key == tail)
                    reach += 1
                _store_pixel(grad_ptr + tail * (G * CG) + chan, acc, chan_mask, ACCUMULATE)
