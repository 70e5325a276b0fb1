"""The decoder's self attention ("gnn") with denoising groups: one masked attention over all queries
vs the blocks it is made of (`attention.self_attention_in_groups`).

Default shapes: batch 2, 900 queries plus 5 denoising groups of 256 slots (128 GT, positive and
negative copies), embed 256, decoupled (512 wide), 8 heads; every slot valid. Times one forward and
backward of the layer (CUDA-event medians on a GPU, wall-clock medians on the CPU).

    PYTHONPATH=. python benchmarks/denoising_attention.py [--device cuda] [--bf16] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sparse4d.model.attention import InstanceAttention, self_attention_in_groups


def dense_blocked(dn_valid: torch.Tensor, num_anchor: int, group_size: int) -> torch.Tensor:
    """(B, L, L) True = blocked: the denoising mask the dense variant needs (built each call, as it was)."""
    b, dn = dn_valid.shape
    device = dn_valid.device
    group = torch.cat([torch.full((num_anchor,), -1, device=device), torch.arange(dn, device=device) // group_size])
    key_valid = torch.cat([torch.ones(b, num_anchor, dtype=torch.bool, device=device), dn_valid], dim=1)
    allowed = (group[:, None] == group[None, :])[None] & key_valid[:, None, :]
    return ~(allowed | torch.eye(num_anchor + dn, dtype=torch.bool, device=device)[None])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as training on a GPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--anchors", type=int, default=900)
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--group-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = InstanceAttention(256, num_heads=8, dropout=0.0, decouple=True).to(device)
    length = args.anchors + args.groups * args.group_size
    feature = torch.randn(args.batch, length, 256, device=device, requires_grad=True)
    pos = torch.randn(args.batch, length, 256, device=device, requires_grad=True)
    valid = torch.ones(args.batch, args.groups * args.group_size, dtype=torch.bool, device=device)

    def dense() -> torch.Tensor:
        mask = dense_blocked(valid, args.anchors, args.group_size).repeat_interleave(layer.attn.num_heads, dim=0)
        return layer(feature, pos, attn_mask=mask)

    def grouped() -> torch.Tensor:
        return self_attention_in_groups(layer, feature, pos, valid, args.groups)

    def timed(fn) -> float:
        times = []
        for _ in range(args.repeats + 2):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            begin = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = fn()
            out.float().square().mean().backward()
            if device.type == "cuda":
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                times.append((time.perf_counter() - begin) * 1000)
            feature.grad = pos.grad = None
            layer.zero_grad(set_to_none=True)
        return statistics.median(times[2:])

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        diff = float((dense() - grouped()).abs().max())
    record = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "bf16": args.bf16, "batch": args.batch, "queries": length,
        "dense_masked_ms": round(timed(dense), 3), "grouped_ms": round(timed(grouped), 3), "max_abs_difference": diff,
    }
    print(json.dumps(record, indent=2, sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
