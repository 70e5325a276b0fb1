"""Accuracy of the default-size Sparse4D trained from scratch on one GPU for a wall-clock budget (issue #6).

The default config of references/spec_template_train.yaml (ResNet-101 from scratch, 1408x512 input,
6 cameras, 900 anchors, bf16-mixed) trains on synthetic AICity scenes (benchmarks/synthetic_scenes.py)
for `--train-minutes`, then the val split is scored: mAP, NDS, per-class AP, AMOTA/AMOTP/MOTA/IDF1.

Phases, each resumable, so that no single device command has to run longer than 10 minutes:

    data      generate + convert the scenes in parallel (all cores)        -> <workdir>/data.json
    train     probe the real step rate, size the schedule to the budget,
              train (checkpoint every epoch; a rerun resumes the latest)    -> <workdir>/train/
    evaluate  predict + score the val split with the last checkpoint      -> <workdir>/evaluate/
    all       the three in order
    status    where a (background) train run stands

    PYTHONPATH=. python benchmarks/accuracy_default_gpu.py --workdir /tmp/acc_gpu --phase data
    PYTHONPATH=. setsid nohup python benchmarks/accuracy_default_gpu.py --workdir /tmp/acc_gpu --phase train \\
        --train-minutes 15 > /tmp/acc_gpu_train.log 2>&1 &
    PYTHONPATH=. python benchmarks/accuracy_default_gpu.py --workdir /tmp/acc_gpu --phase status
    PYTHONPATH=. python benchmarks/accuracy_default_gpu.py --workdir /tmp/acc_gpu --phase evaluate --json acc_gpu.json
    PYTHONPATH=. python benchmarks/accuracy_default_gpu.py --workdir /tmp/acc_smoke --phase all --smoke   # CPU, minutes

Budget. The trainer stops on epochs, not on time, so the train phase first times `--probe-steps`
real steps (the trainer's model, step and loader; benchmarks/train_throughput.py `real_data_steps`),
then picks num_epochs = floor((budget - probe - startup - final validation) / epoch time). The
cosine schedule is sized from those epochs, so it anneals fully inside the budget. A batch that runs
out of GPU memory in the probe is halved.

Recipe for a short from-scratch run (the defaults are for fine-tuning an ImageNet backbone): AdamW at
lr 3e-4 with the backbone at the full lr (lr_mult 1.0 instead of 0.2: a randomly initialised ResNet
must learn as fast as the head), linear warmup over 10% of the steps (at most 500), cosine to
1e-3 x lr, gradient clipping 25 (default). 3e-4 sits between Sparse4D's 6e-4 at batch 48 and the
sqrt-scaled 2.4e-4 for batch 8; short runs favour the larger side. cuDNN autotuning is on and
deterministic mode off (speed; the default spec is deterministic). Everything else is the default
spec: GridMask, image/3D augmentation, denoising, depth branch, temporal instance bank.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic_scenes import (  # noqa: E402
    SceneSet, batch_bytes, prepare_scenes, read_manifest, shared_memory_workers, spec_paths, streaming_overrides)

RECORD = "record.json"
PLAN = "plan.json"
EPOCH_OVERHEAD_S = 6.0  # per epoch: checkpoint (~0.7 GB with AdamW state) and restarting the loader workers
EVAL_STEP_SHARE = 0.4  # a no-grad validation step of one batch costs about this share of a train step


def scene_set(args: argparse.Namespace) -> SceneSet:
    if args.smoke:
        return SceneSet(train_scenes=3, val_scenes=1, train_frames=8, val_frames=20, cameras=2, width=256, height=128,
                        num_anchor=64, seed=args.seed)
    return SceneSet(train_scenes=args.train_scenes, val_scenes=args.val_scenes, train_frames=args.frames,
                    val_frames=args.val_frames, cameras=6, width=1408, height=512, num_anchor=900, seed=args.seed)


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def update_record(workdir: Path, section: str, values: dict[str, Any]) -> dict[str, Any]:
    path = workdir / RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[section] = values
    write_json(path, record)
    return record


def need_manifest(workdir: Path, scenes: SceneSet) -> dict[str, Any]:
    manifest = read_manifest(workdir)
    if manifest is None:
        raise SystemExit(f"{workdir}/data.json is missing: run --phase data first")
    if manifest["scenes"] != asdict(scenes):
        raise SystemExit(f"{workdir}/data.json was made for {manifest['scenes']}, not {asdict(scenes)}: "
                         "use the same scene options as the data phase, or another --workdir")
    return manifest


# ------------------------------------------------------------------------------------------- spec
def base_overrides(args: argparse.Namespace, scenes: SceneSet, batch: int, workers: int) -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = {}
    if args.smoke:
        from sparse4d.engine.small_config import small_overrides

        values.update(small_overrides(width=scenes.width, height=scenes.height, cameras=scenes.cameras, num_anchor=scenes.num_anchor))
    values.update(streaming_overrides(scenes, batch, workers))
    values.update({
        "train.seed": args.seed,
        "train.precision": "fp32" if args.smoke else "bf16",
        "train.cudnn.benchmark": True,
        "train.cudnn.deterministic": False,
        "train.checkpoint_interval": 1,
        "train.checkpoint_interval_unit": "epoch",
    })
    if not args.smoke:
        values.update({"train.optim.lr": args.lr, "train.optim.paramwise_cfg.custom_keys.img_backbone.lr_mult": 1.0})
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    return values


def schedule_overrides(num_epochs: int, total_steps: int) -> dict[str, Any]:
    return {"train.num_epochs": num_epochs, "train.validation_interval": num_epochs,
            "train.optim.lr_scheduler.warmup_iters": min(500, max(1, round(0.1 * total_steps)))}


def build_spec(action: str, manifest: dict[str, Any], results: Path, overrides: dict[str, Any]) -> Any:
    from accuracy_synthetic import spec_for

    return spec_for(action, spec_paths(manifest), results, overrides)


# ------------------------------------------------------------------------------------------ phases
def phase_data(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    scenes = scene_set(args)
    started = time.perf_counter()
    manifest = prepare_scenes(workdir, scenes, workers=args.gen_workers)
    values = {"scenes": manifest["scenes"], "frames": manifest["frames"], "timings_s": manifest["timings_s"],
              "disk_gb": manifest["disk_gb"], "reused": manifest["reused"], "phase_wall_s": round(time.perf_counter() - started, 1)}
    update_record(workdir, "data", values)
    t = manifest["timings_s"]
    print(f"data: {manifest['frames']['train']} train + {manifest['frames']['val']} val frames "
          f"({scenes.cameras} cameras, {scenes.width}x{scenes.height}) in {t['data_s']:.0f} s "
          f"(generate {t['generate_s']:.0f} s, {t['generate_cpu_s_per_frame']:.2f} CPU s/frame; extract {t['extract_s']:.0f} s; "
          f"convert {t['convert_s']:.0f} s), {manifest['disk_gb']} GB{' (reused)' if manifest['reused'] else ''}", flush=True)
    return values


def probe(args: argparse.Namespace, scenes: SceneSet, manifest: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Real steps at the requested batch (halved on out-of-memory); returns the probe record."""
    import torch

    from train_throughput import real_data_steps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch
    while True:
        workers, warning = shared_memory_workers(args.workers, batch_bytes(scenes, batch))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        spec = build_spec("train", manifest, workdir / "probe", base_overrides(args, scenes, batch, workers))
        try:
            result = real_data_steps(spec, steps=args.probe_steps, warmup=args.probe_warmup, device=device, bf16=not args.smoke)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"batch {batch} runs out of GPU memory: trying {batch // 2}", flush=True)
            batch //= 2
        finally:
            import gc

            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {**result, "batch": batch, "workers": workers}


def plan_epochs(args: argparse.Namespace, scenes: SceneSet, measured: dict[str, Any], spent_s: float) -> dict[str, Any]:
    """Epochs that fit the budget: budget - probe so far - startup - final validation, over the epoch time."""
    step_s = measured["step_ms"] / 1000
    val_steps = scenes.val_frames * math.ceil(scenes.val_scenes / min(measured["batch"], scenes.val_scenes))
    validation_s = val_steps * step_s * EVAL_STEP_SHARE + 10.0
    epoch_s = measured["steps_per_epoch"] * step_s + EPOCH_OVERHEAD_S
    available = args.train_minutes * 60 - spent_s - measured["startup_s"] - validation_s
    epochs = 1 if args.smoke else max(1, int(available // epoch_s))
    total_steps = epochs * measured["steps_per_epoch"]
    return {"num_epochs": epochs, "steps_per_epoch": measured["steps_per_epoch"], "total_steps": total_steps,
            "batch": measured["batch"], "workers": measured["workers"], "budget_s": args.train_minutes * 60,
            "probe_s": round(spent_s, 1), "estimated_epoch_s": round(epoch_s, 1), "estimated_validation_s": round(validation_s, 1),
            "estimated_train_s": round(spent_s + measured["startup_s"] + validation_s + epochs * epoch_s, 1),
            "warmup_iters": schedule_overrides(epochs, total_steps)["train.optim.lr_scheduler.warmup_iters"], "probe": measured}


def train_status(train_dir: Path) -> tuple[str | None, list[dict[str, Any]]]:
    from sparse4d.jobs.status_file import last_status, read_events

    events = read_events(train_dir / "status.json")
    return last_status(events), events


def phase_train(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from sparse4d.engine.checkpoint import LATEST_NAME, list_checkpoints
    from sparse4d.engine.train import run_train
    from sparse4d.jobs.status_file import SUCCESS

    started = time.perf_counter()
    scenes = scene_set(args)
    manifest = need_manifest(workdir, scenes)
    train_dir = workdir / "train"
    plan_path = workdir / PLAN
    status, _ = train_status(train_dir)
    if status == SUCCESS and plan_path.is_file():
        print("train: already finished (train/status.json says SUCCESS); delete train/ to train again", flush=True)
        return summarise_train(workdir, json.loads(plan_path.read_text()), None, None)
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())  # a resumed run keeps its schedule
    else:
        measured = probe(args, scenes, manifest, workdir)
        plan = plan_epochs(args, scenes, measured, time.perf_counter() - started)
        write_json(plan_path, plan)
    print(f"train plan: {plan['num_epochs']} epoch(s) x {plan['steps_per_epoch']} steps at batch {plan['batch']} "
          f"({plan['probe']['samples_per_s']} samples/s in the probe, data wait {plan['probe']['data_wait_ms_median']} ms/step), "
          f"estimated {plan['estimated_train_s']:.0f} s of a {plan['budget_s']:.0f} s budget", flush=True)
    overrides = {**base_overrides(args, scenes, plan["batch"], plan["workers"]), **schedule_overrides(plan["num_epochs"], plan["total_steps"])}
    resumed = bool(list_checkpoints(train_dir))
    if resumed:
        overrides["train.resume_training_checkpoint_path"] = str(train_dir / LATEST_NAME)
        print(f"train: resuming from {(train_dir / LATEST_NAME).resolve()}", flush=True)
    spec = build_spec("train", manifest, train_dir, overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_started = time.perf_counter()
    run_train(spec)
    run_s = time.perf_counter() - run_started
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    return summarise_train(workdir, plan, run_s, peak, phase_s=time.perf_counter() - started, resumed=resumed)


def summarise_train(workdir: Path, plan: dict[str, Any], run_s: float | None, peak_gb: float | None,
                    phase_s: float | None = None, resumed: bool = False) -> dict[str, Any]:
    """Train record from status.json (all runs of this workdir); wall times add up over resumed runs."""
    from sparse4d.engine.checkpoint import list_checkpoints

    status, events = train_status(workdir / "train")
    epochs = [e["kpi"] for e in events if e.get("status") == "RUNNING" and "epoch_time_s" in e.get("kpi", {})]
    last = epochs[-1] if epochs else {}
    steps = int(last.get("global_step", 0))
    loop_s = sum(float(k["epoch_time_s"]) for k in epochs)
    previous = json.loads((workdir / RECORD).read_text()).get("train", {}) if (workdir / RECORD).is_file() else {}
    values = {
        "status": status, "num_epochs": plan["num_epochs"], "epochs_done": int(last.get("epoch", 0)), "steps": steps,
        "batch": plan["batch"], "samples": steps * plan["batch"], "epoch_loop_s": round(loop_s, 1),
        "samples_per_s": round(steps * plan["batch"] / loop_s, 3) if loop_s else None,
        "final_loss": last.get("loss"), "val_mAP_in_training": last.get("mAP"),
        "run_train_s": _add(previous.get("run_train_s") if resumed else None, run_s, previous.get("run_train_s")),
        "phase_wall_s": _add(previous.get("phase_wall_s") if resumed else None, phase_s, previous.get("phase_wall_s")),
        "peak_memory_gb": round(peak_gb, 2) if peak_gb is not None else previous.get("peak_memory_gb"),
        "checkpoint": str(list_checkpoints(workdir / "train")[-1][2]) if list_checkpoints(workdir / "train") else None,
        "plan": {k: v for k, v in plan.items() if k != "probe"}, "probe": plan["probe"],
    }
    update_record(workdir, "train", values)
    print(f"train: {values['status']}, {values['epochs_done']}/{values['num_epochs']} epochs, {steps} steps at batch {plan['batch']}, "
          f"{values['samples_per_s']} samples/s over {loop_s:.0f} s of epochs; run_train {values['run_train_s']} s, "
          f"peak {values['peak_memory_gb']} GB, final loss {values['final_loss']}", flush=True)
    return values


def _add(earlier: float | None, this_run: float | None, fallback: float | None) -> float | None:
    if this_run is None:
        return fallback
    return round((earlier or 0.0) + this_run, 1)


def phase_evaluate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sparse4d.engine.checkpoint import list_checkpoints
    from sparse4d.engine.evaluate import METRICS_NAME, run_evaluate

    started = time.perf_counter()
    scenes = scene_set(args)
    manifest = need_manifest(workdir, scenes)
    plan = json.loads((workdir / PLAN).read_text()) if (workdir / PLAN).is_file() else None
    checkpoints = list_checkpoints(workdir / "train")
    if plan is None or not checkpoints:
        raise SystemExit(f"no checkpoint under {workdir}/train: run --phase train first")
    checkpoint = checkpoints[-1][2]
    overrides = {**base_overrides(args, scenes, plan["batch"], plan["workers"]),
                 "evaluate.checkpoint": str(checkpoint), "evaluate.metrics": ["detection", "tracking"]}
    eval_dir = workdir / "evaluate"
    run_evaluate(build_spec("evaluate", manifest, eval_dir, overrides))
    metrics = json.loads((eval_dir / METRICS_NAME).read_text())
    det, trk = metrics["detection"], metrics.get("tracking", {})
    values = {
        "checkpoint": str(checkpoint), "val_frames": manifest["frames"]["val"], "val_scenes": scenes.val_scenes,
        "mAP": det["mAP"], "NDS": det["NDS"], "per_class_AP": det["class_mean_ap"],
        "tp_errors": {k: det.get(k) for k in ("mATE", "mASE", "mAOE", "mAVE")},
        "AMOTA": trk.get("AMOTA"), "AMOTP": trk.get("AMOTP"), "MOTA": trk.get("MOTA"), "IDF1": trk.get("IDF1"),
        "IDS": trk.get("IDS"), "phase_wall_s": round(time.perf_counter() - started, 1),
    }
    update_record(workdir, "evaluate", values)
    return values


def print_summary(record: dict[str, Any]) -> None:
    data, train, ev = record.get("data", {}), record.get("train", {}), record.get("evaluate", {})

    def num(value: Any, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    print("\n=== default-size Sparse4D from scratch on synthetic AICity ===")
    if data:
        print(f"data      {data['frames']['train']} train / {data['frames']['val']} val frames, "
              f"{data['timings_s']['data_s']:.0f} s (phase {data['phase_wall_s']:.0f} s)")
    if train:
        print(f"train     {train['steps']} steps x batch {train['batch']} = {train['samples']} samples, {train['epochs_done']} epochs, "
              f"{train['samples_per_s']} samples/s, run_train {train['run_train_s']} s, phase {train['phase_wall_s']} s, "
              f"peak {train['peak_memory_gb']} GB")
    if ev:
        print(f"evaluate  mAP {num(ev['mAP'])}  NDS {num(ev['NDS'])}  AMOTA {num(ev['AMOTA'])}  AMOTP {num(ev['AMOTP'])}  "
              f"MOTA {num(ev['MOTA'])}  IDF1 {num(ev['IDF1'])}  (phase {ev['phase_wall_s']:.0f} s)")
        print("          per-class AP: " + ", ".join(f"{c} {num(v)}" for c, v in ev["per_class_AP"].items()))


def phase_status(workdir: Path) -> None:
    plan = json.loads((workdir / PLAN).read_text()) if (workdir / PLAN).is_file() else None
    status, events = train_status(workdir / "train")
    print(f"plan: {json.dumps({k: v for k, v in plan.items() if k != 'probe'}) if plan else 'none yet (probe running or not started)'}")
    print(f"train status: {status}")
    for event in events[-8:]:
        kpi = event.get("kpi", {})
        short = {k: round(v, 4) if isinstance(v, float) else v for k, v in kpi.items()
                 if k in ("epoch", "global_step", "loss", "epoch_time_s", "mAP", "NDS")}
        print(f"  {event.get('time')} {event.get('status')}: {event.get('message')} {short if short else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--phase", choices=("data", "train", "evaluate", "all", "status"), default="all")
    parser.add_argument("--train-minutes", type=float, default=15.0, help="wall-clock budget of the train phase, probe included")
    parser.add_argument("--batch", type=int, default=8, help="per-GPU batch (halved if the probe runs out of memory)")
    parser.add_argument("--workers", type=int, default=10, help="dataloader workers (lowered if /dev/shm is too small)")
    parser.add_argument("--gen-workers", type=int, default=None, help="processes generating scenes (default: all cores)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-scenes", type=int, default=40)
    parser.add_argument("--val-scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=40, help="frames per train scene (one training sequence each)")
    parser.add_argument("--val-frames", type=int, default=40, help="frames per val scene (tracking needs >= 20)")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--probe-warmup", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra spec overrides (YAML values)")
    parser.add_argument("--smoke", action="store_true", help="tiny: 2 cameras, 256x128, small config, 1 epoch (CPU)")
    parser.add_argument("--json", type=Path, help="write the record (all phases so far) here")
    args = parser.parse_args()
    if args.smoke:
        args.probe_steps, args.probe_warmup, args.batch, args.workers = min(args.probe_steps, 3), min(args.probe_warmup, 1), 2, 1
    if args.val_frames < 20 and not args.smoke:
        print("warning: val sequences shorter than 20 frames make the tracking metrics noisy", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.phase == "status":
        phase_status(workdir)
        return
    if args.phase in ("data", "all"):
        phase_data(args, workdir)
    if args.phase in ("train", "all"):
        phase_train(args, workdir)
    if args.phase in ("evaluate", "all"):
        phase_evaluate(args, workdir)
    record = json.loads((workdir / RECORD).read_text())
    print_summary(record)
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
