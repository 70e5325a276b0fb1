"""Accuracy on synthetic AICity scenes: generate, convert, train the small config, evaluate.

Prints mAP, NDS and AMOTA of the small configuration (sparse4d/engine/small_config.py) and the
focal-loss A/B: the same seed and data trained with our loss and with a variant that drops unmatched
queries from the classification loss as TAO's Sparse4D does (benchmark only, never a user option).
For both it reports confident false positives: predictions scoring >= 0.3 that match no annotation of
their class within 2 m (greedy by score, per frame), per frame of the val split.

    python benchmarks/accuracy_synthetic.py --workdir /tmp/acc            # main run + A/B
    python benchmarks/accuracy_synthetic.py --workdir /tmp/acc --no-ab    # main run only
    python benchmarks/accuracy_synthetic.py --workdir /tmp/acc24 --no-ab --val-frames 24   # tracking on 24-frame val
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse4d.config import validate_spec  # noqa: E402
from sparse4d.config.convert import AICityConfig  # noqa: E402
from sparse4d.data.convert import run_dataset_convert  # noqa: E402
from sparse4d.data.synth import make_synthetic_dataset  # noqa: E402
from sparse4d.engine.small_config import small_overrides  # noqa: E402

CONFIDENT = 0.3
MATCH_DISTANCE = 2.0
TRACKING_KEYS = ("AMOTA", "AMOTP", "MOTA", "MOTP", "IDF1", "recall", "IDS", "FP", "FN", "TP")


def prepare_data(workdir: Path, *, scenes: int, val_scenes: int, frames: int, cameras: int, size: tuple[int, int],
                 num_anchor: int, seed: int, val_frames: int | None = None) -> dict[str, Any]:
    """Generate (once per workdir) and convert the splits; val scenes get `val_frames` frames (default `frames`).

    Val scene k uses train scene k's rig at any length, so longer val sequences measure tracking on the
    same kind of data the detector is scored on.
    """
    root = workdir / "aicity"
    val_frames = frames if val_frames is None else val_frames
    if not (root / "train").is_dir():
        make_synthetic_dataset(root, scenes=scenes, cameras=cameras, frames=frames, size=size, seed=seed, splits=("train",))
    if not (root / "val").is_dir():
        make_synthetic_dataset(root, scenes=val_scenes, cameras=cameras, frames=val_frames, size=size, seed=seed, splits=("val",))
    for scene_dir in sorted((root / "val").iterdir()):
        have = len(json.loads((scene_dir / "ground_truth.json").read_text()))
        if have != val_frames:
            raise SystemExit(f"{scene_dir} has {have} frames but --val-frames is {val_frames}: use a fresh --workdir "
                             f"(or delete {root / 'val'} and {workdir / 'converted' / 'val'})")
    out = workdir / "converted"
    files: dict[str, list[str]] = {}
    for split in ("train", "val"):
        config = AICityConfig.model_validate({"root": str(root), "split": split, "camera_grouping_mode": "sequential",
                                              "anchor_init_config": {"num_anchor": num_anchor}})
        summary = run_dataset_convert(config, out)
        files[split] = [str(p) for p in summary.annotation_files]
    return {"root": root, "anchor": out / "anchor_init.npy", "train": str(out / "train"), "val": str(out / "val")}


def spec_for(action: str, data: dict[str, Any], results: Path, overrides: dict[str, Any]) -> Any:
    values = dict(overrides)
    values.update({
        "results_dir": str(results),
        "model.head.instance_bank.anchor": str(data["anchor"]),
        "dataset.data_root": str(data["root"] / ("train" if action == "train" else "val")),
        "dataset.train_dataset.ann_file": data["train"],
        "dataset.val_dataset.ann_file": data["val"],
        "dataset.test_dataset.ann_file": data["val"],
    })
    if action != "train":
        values = {k: v for k, v in values.items() if not k.startswith("train.")}
    # ann_file names a folder of per-scene pickles (OVPKLDataset reads them all); the validator's file
    # check wants a single pickle, so files are not checked here (they were just written).
    report = validate_spec(action, {}, overrides=values, check_files=False)
    if not report.valid:
        raise SystemExit("; ".join(f"{e.key}: {e.message}" for e in report.errors))
    results.mkdir(parents=True, exist_ok=True)
    return report.spec


@contextlib.contextmanager
def tao_focal_loss() -> Iterator[None]:
    """Benchmark-only: rows labelled num_classes (unmatched queries) leave the focal loss, as in TAO."""
    import sparse4d.model.sparse4d as detector

    ours = detector.sigmoid_focal_loss

    def dropping_unmatched(logits, labels, **kwargs):
        keep = labels != logits.shape[-1]
        return ours(logits[keep], labels[keep], **kwargs)

    detector.sigmoid_focal_loss = dropping_unmatched
    try:
        yield
    finally:
        detector.sigmoid_focal_loss = ours


@contextlib.contextmanager
def id_transfer(radius: float = 1.0) -> Iterator[None]:
    """Benchmark-only inference variant: a confident new query takes the id of a weaker carried duplicate.

    A query that got a new track id takes instead the id of the nearest carried instance (same class,
    lower confidence, centres within `radius` m), which gives its id up; most confident first.
    """
    import torch

    import sparse4d.model.head as head_module
    import sparse4d.model.instance_bank as bank_module

    last: dict[str, Any] = {}
    head_forward, assign = head_module.Sparse4DHead.forward, bank_module.InstanceBank.assign_track_ids

    def remembering_forward(self, *args, **kwargs):
        last["out"] = head_forward(self, *args, **kwargs)
        return last["out"]

    def transferring_assign(self, state, confidence, temporal_mask, first_frame, threshold):
        ids, counter = assign(self, state, confidence, temporal_mask, first_frame, threshold)
        out, a, t = last.get("out"), self.num_anchor, self.num_temp
        if out is None or t == 0:
            return ids, counter
        xy = out.prediction[-1][:, :a, :2].detach().float()
        label = out.classification[-1][:, :a].detach().argmax(-1)
        ids = ids.clone()
        for b in range(ids.shape[0]):
            if not bool(temporal_mask[b]):
                continue
            fresh = sorted((q for q in range(t, a) if ids[b, q] >= 0), key=lambda q: -float(confidence[b, q]))
            for q in fresh:
                near = [(float(torch.dist(xy[b, q], xy[b, j])), j) for j in range(t)
                        if ids[b, j] >= 0 and label[b, j] == label[b, q] and confidence[b, j] < confidence[b, q]]
                near = [n for n in near if n[0] < radius]
                if near:
                    j = min(near)[1]
                    ids[b, q], ids[b, j] = ids[b, j], -1
        return ids, counter

    head_module.Sparse4DHead.forward = remembering_forward
    bank_module.InstanceBank.assign_track_ids = transferring_assign
    try:
        yield
    finally:
        head_module.Sparse4DHead.forward = head_forward
        bank_module.InstanceBank.assign_track_ids = assign


TRACKING_VARIANTS = {"none": contextlib.nullcontext, "id-transfer": id_transfer}  # track matching is in the model now


def confident_unmatched_per_frame(results: dict[str, list[dict]], gt: dict[str, list[dict]]) -> float:
    """Mean count per frame of predictions scoring >= CONFIDENT that match no same-class annotation within 2 m."""
    counts = []
    for token, annotations in gt.items():
        taken = [False] * len(annotations)
        unmatched = 0
        for box in sorted(results.get(token, []), key=lambda b: -b["detection_score"]):
            if box["detection_score"] < CONFIDENT:
                break
            best, best_dist = -1, MATCH_DISTANCE
            for index, ann in enumerate(annotations):
                if taken[index] or ann["detection_name"] != box["detection_name"]:
                    continue
                dist = float(np.hypot(ann["translation"][0] - box["translation"][0], ann["translation"][1] - box["translation"][1]))
                if dist < best_dist:
                    best, best_dist = index, dist
            if best >= 0:
                taken[best] = True
            else:
                unmatched += 1
        counts.append(unmatched)
    return float(np.mean(counts)) if counts else 0.0


def train_and_evaluate(name: str, data: dict[str, Any], workdir: Path, overrides: dict[str, Any],
                       checkpoint: Path | None = None) -> dict[str, Any]:
    """Train (unless `checkpoint` is given), evaluate detection and tracking on val, collect the numbers."""
    from sparse4d.engine.checkpoint import list_checkpoints
    from sparse4d.engine.evaluate import METRICS_NAME, RESULTS_NAME, run_evaluate
    from sparse4d.engine.predictions import Annotations
    from sparse4d.engine.train import run_train

    started = time.monotonic()
    if checkpoint is None:
        train_dir = workdir / name / "train"
        run_train(spec_for("train", data, train_dir, overrides))
        checkpoint = list_checkpoints(train_dir)[-1][2]
    train_s = time.monotonic() - started
    eval_dir = workdir / name / "evaluate"
    eval_spec = spec_for("evaluate", data, eval_dir, {**overrides, "evaluate.checkpoint": str(checkpoint),
                                                     "evaluate.metrics": ["detection", "tracking"]})
    values = run_evaluate(eval_spec)
    total_s = time.monotonic() - started
    results = json.loads((eval_dir / RESULTS_NAME).read_text())["results"]
    tracking = json.loads((eval_dir / METRICS_NAME).read_text())["tracking"]
    from sparse4d.engine.data_module import build_dataset

    annotations = Annotations.from_dataset(build_dataset(eval_spec.dataset, eval_spec.model, "val"))
    frames = [len(tokens) for tokens in annotations.frames.values()]
    return {"name": name, "mAP": values["mAP"], "NDS": values["NDS"], "AMOTA": values.get("AMOTA"),
            **{key: tracking[key] for key in TRACKING_KEYS if key != "AMOTA"},
            "val_sequences": len(frames), "val_frames_per_sequence": frames,
            "confident_unmatched_per_frame": confident_unmatched_per_frame(results, annotations.gt),
            "train_s": train_s, "total_s": total_s, "checkpoint": str(checkpoint)}


def tracking_line(row: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return "nan" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    return "  ".join(f"{key} {show(row.get(key))}" for key in TRACKING_KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--val-scenes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=6, help="frames per train scene")
    parser.add_argument("--val-frames", type=int, default=None,
                        help="frames per val scene (default: --frames); tracking needs >= 20 to mean much")
    parser.add_argument("--tracking-variant", choices=sorted(TRACKING_VARIANTS), default="none",
                        help="benchmark-only inference variant: id-transfer (see its docstring)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="evaluate this checkpoint of the same recipe instead of training (main run only)")
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--ab-epochs", type=int, default=None, help="epochs of each A/B run (default: --epochs)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-ab", action="store_true", help="skip the focal-loss A/B")
    parser.add_argument("--ab-only", action="store_true", help="only the focal-loss A/B")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra spec overrides (YAML values)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import yaml

    started = time.monotonic()
    data = prepare_data(args.workdir, scenes=args.scenes, val_scenes=args.val_scenes, frames=args.frames, cameras=2,
                        size=(256, 128), num_anchor=64, seed=args.seed, val_frames=args.val_frames)
    print(f"data ready in {time.monotonic() - started:.0f} s", flush=True)
    overrides: dict[str, Any] = small_overrides(width=256, height=128, cameras=2, num_anchor=64)
    overrides.update({"train.seed": args.seed, "train.num_epochs": args.epochs, "train.checkpoint_interval": args.epochs,
                      "train.validation_interval": args.epochs})
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    if not args.ab_only:
        name = "ours" if args.tracking_variant == "none" else f"ours_{args.tracking_variant}"
        with TRACKING_VARIANTS[args.tracking_variant]():
            rows.append(train_and_evaluate(name, data, args.workdir, overrides, checkpoint=args.checkpoint))
        r = rows[-1]
        print(f"\nsmall config on {device}: mAP {r['mAP']:.4f}  NDS {r['NDS']:.4f}  AMOTA {r['AMOTA']:.4f}  "
              f"train {r['train_s']:.0f} s, train+evaluate {r['total_s']:.0f} s", flush=True)
        print(f"tracking on {r['val_sequences']} val sequences of {r['val_frames_per_sequence']} frames: {tracking_line(r)}",
              flush=True)
    if not args.no_ab:
        ab = dict(overrides)
        if args.ab_epochs:
            ab.update({"train.num_epochs": args.ab_epochs, "train.checkpoint_interval": args.ab_epochs, "train.validation_interval": args.ab_epochs})
        ours = rows[0] if rows and not args.ab_epochs else train_and_evaluate("ab_ours", data, args.workdir, ab)
        with tao_focal_loss():
            tao = train_and_evaluate("ab_tao_dropped_unmatched", data, args.workdir, ab)
        rows += [ours, tao] if ours is not (rows[0] if rows else None) else [tao]
        print("\nfocal-loss A/B (same seed and data)")
        print(f"{'variant':28s} {'mAP':>7s} {'NDS':>7s} {'AMOTA':>7s} {'conf>=0.3 unmatched/frame':>26s}")
        for r in (ours, tao):
            print(f"{r['name']:28s} {r['mAP']:7.4f} {r['NDS']:7.4f} {r['AMOTA']:7.4f} {r['confident_unmatched_per_frame']:26.2f}")
        ratio = ours["confident_unmatched_per_frame"] / max(tao["confident_unmatched_per_frame"], 1e-9)
        print(f"ours / TAO-variant confident unmatched: {ratio:.3f} (goal <= 0.5)")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    (args.workdir / "accuracy_synthetic.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
