"""Synthetic AICity scenes for the GPU benchmarks: parallel generation and conversion, resumable.

`sparse4d.data.synth` renders one scene at a time on one core (numpy ray casting, about 0.7 s per
6-camera 1408x512 frame on one core of the dev box), and `run_dataset_convert` decodes the videos one
camera after another. On a 16-core GPU host both are parallelised here without changing them:

- scenes are written by a process pool, one scene per task (a scene is one mp4 per camera, which
  cannot be split), longest tasks first;
- conversion first extracts every (scene, camera) video into the converter's own frame cache in a
  pool (`sparse4d.data.frames.extract_frames` with the converter's paths, so the converter finds the
  frames cached and only writes pickles and anchors).

A scene is complete once its ground_truth.json exists (`write_scene` writes it last, atomically);
an interrupted run regenerates only the incomplete scenes. `prepare_scenes` records what it made in
`<workdir>/data.json` (written last, atomically) and returns early when that record matches.

Layout: ``<workdir>/aicity/{train,val}/Warehouse_NNN`` (val scene k shares train scene k's camera rig
and floor, with other objects and motion), ``<workdir>/converted/{train,val}/*.pkl`` and
``<workdir>/converted/anchor_init.npy``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MANIFEST = "data.json"
# Single-threaded numpy in every worker: the pool already uses every core.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class SceneSet:
    """What to generate: counts, frames per scene, rig and anchor count (the k-means anchors of the model)."""

    train_scenes: int
    val_scenes: int
    train_frames: int
    val_frames: int
    cameras: int
    width: int
    height: int
    num_anchor: int
    seed: int = 7

    def frames_total(self) -> int:
        return self.train_scenes * self.train_frames + self.val_scenes * self.val_frames


def _write_scene_task(task: tuple[str, str, int, int, int, tuple[int, int], int]) -> tuple[float, float]:
    """Pool worker: render and write one scene (skipped when already complete); (wall, CPU) seconds."""
    from sparse4d.data.synth import build_scene, scene_name, write_scene

    root, split, index, cameras, frames, size, seed = task
    scene_dir = Path(root) / split / scene_name(index)
    if (scene_dir / "ground_truth.json").is_file():
        return 0.0, 0.0
    if scene_dir.exists():  # left by a killed run: no ground truth yet, so start it again
        shutil.rmtree(scene_dir)
    started, cpu_started = time.perf_counter(), time.process_time()
    scene = build_scene(seed=seed, split=split, scene_index=index, cameras=cameras, size=size)
    write_scene(scene_dir, scene, frames=frames, with_ground_truth=True)
    return time.perf_counter() - started, time.process_time() - cpu_started


def _extract_task(task: tuple[str, str, int]) -> int:
    from sparse4d.data.frames import extract_frames

    video, camera_dir, limit = task
    return extract_frames(Path(video), Path(camera_dir), limit)


def _pool(workers: int) -> Any:
    """A spawn pool whose workers start with one BLAS/OpenMP thread (the env is read at their import)."""
    saved = {key: os.environ.get(key) for key in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        return mp.get_context("spawn").Pool(workers)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def generate_scenes(root: Path, scenes: SceneSet, workers: int) -> dict[str, float]:
    """Write the train and val splits under `root` in parallel; returns timings (seconds)."""
    tasks = [(str(root), "train", i, scenes.cameras, scenes.train_frames, (scenes.width, scenes.height), scenes.seed)
             for i in range(scenes.train_scenes)]
    tasks += [(str(root), "val", i, scenes.cameras, scenes.val_frames, (scenes.width, scenes.height), scenes.seed)
              for i in range(scenes.val_scenes)]
    tasks.sort(key=lambda task: -task[4])  # longest scenes first: the pool's tail is short
    started = time.perf_counter()
    busy = cpu = 0.0
    with _pool(max(1, min(workers, len(tasks)))) as pool:
        for task_wall, task_cpu in pool.imap_unordered(_write_scene_task, tasks, chunksize=1):
            busy, cpu = busy + task_wall, cpu + task_cpu
    rendered = sum(task[4] for task in tasks)
    # cpu_s_per_frame is the figure to extrapolate from (it does not grow when cores are shared)
    return {"generate_s": time.perf_counter() - started, "generate_task_wall_s": busy, "generate_cpu_s": cpu,
            "generate_cpu_s_per_frame": cpu / rendered if cpu else 0.0}


def _aicity_config(root: Path, split: str, num_anchor: int, num_frames: int) -> Any:
    from sparse4d.config.convert import AICityConfig

    return AICityConfig.model_validate({"root": str(root), "split": split, "camera_grouping_mode": "sequential",
                                        "num_frames": num_frames, "anchor_init_config": {"num_anchor": num_anchor}})


def convert_scenes(root: Path, out: Path, scenes: SceneSet, workers: int) -> dict[str, Any]:
    """Frames extracted in a pool into the converter's cache, then `run_dataset_convert` per split."""
    from sparse4d.data.convert import run_dataset_convert
    from sparse4d.data.synth import scene_name

    started = time.perf_counter()
    limits = {"train": scenes.train_frames, "val": scenes.val_frames}
    counts = {"train": scenes.train_scenes, "val": scenes.val_scenes}
    tasks = []
    for split, count in counts.items():
        for index in range(count):
            videos = root / split / scene_name(index) / "videos"
            for video in sorted(videos.glob("*.mp4")):
                tasks.append((str(video), str(out / split / "frames" / scene_name(index) / video.stem), limits[split]))
    with _pool(max(1, min(workers, len(tasks)))) as pool:
        extracted = pool.map(_extract_task, tasks, chunksize=1)
    if min(extracted, default=0) == 0:
        from sparse4d.errors import DataError

        raise DataError(f"some synthetic videos under {root} have no readable frame", hint="delete the workdir and rerun the data phase")
    extract_s = time.perf_counter() - started
    files: dict[str, list[str]] = {}
    frames: dict[str, int] = {}
    for split in ("train", "val"):
        summary = run_dataset_convert(_aicity_config(root, split, scenes.num_anchor, limits[split]), out)
        files[split] = [str(p) for p in summary.annotation_files]
        frames[split] = summary.frames
    return {"extract_s": extract_s, "convert_s": time.perf_counter() - started, "frames": frames,
            "annotation_files": files}


def read_manifest(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(workdir) / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def prepare_scenes(workdir: Path, scenes: SceneSet, *, workers: int | None = None) -> dict[str, Any]:
    """Generate + convert (or reuse) the scenes; returns the manifest (paths as str, timings in s).

    The manifest has the keys `accuracy_synthetic.spec_for` reads: root, anchor, train, val.
    """
    workdir = Path(workdir)
    existing = read_manifest(workdir)
    if existing is not None and existing.get("scenes") == asdict(scenes):
        existing["reused"] = True
        return existing
    if scenes.train_scenes < 1 or scenes.val_scenes < 1:
        raise ValueError("need at least one train and one val scene")
    workers = workers or os.cpu_count() or 1
    workdir.mkdir(parents=True, exist_ok=True)
    root, out = workdir / "aicity", workdir / "converted"
    started = time.perf_counter()
    timings = generate_scenes(root, scenes, workers)
    converted = convert_scenes(root, out, scenes, workers)
    manifest = {
        "scenes": asdict(scenes), "workers": workers,
        "root": str(root), "anchor": str(out / "anchor_init.npy"), "train": str(out / "train"), "val": str(out / "val"),
        "frames": converted["frames"], "annotation_files": converted["annotation_files"],
        "timings_s": {**{k: round(v, 3) for k, v in timings.items()}, "extract_s": round(converted["extract_s"], 2),
                      "convert_s": round(converted["convert_s"], 2), "data_s": round(time.perf_counter() - started, 2)},
        "disk_gb": round(sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()) / 1e9, 2),
        "reused": False,
    }
    _write_json_atomic(workdir / MANIFEST, manifest)
    return manifest


def spec_paths(manifest: dict[str, Any]) -> dict[str, Any]:
    """The dict `accuracy_synthetic.spec_for` expects (root and anchor as Paths)."""
    return {"root": Path(manifest["root"]), "anchor": Path(manifest["anchor"]), "train": manifest["train"], "val": manifest["val"]}


def streaming_overrides(scenes: SceneSet, batch_size: int, num_workers: int) -> dict[str, Any]:
    """Batch, loader and sequence keys for many short synthetic scenes.

    Each scene is one training sequence (split_num = its frames). Slots of a batch take different
    scenes (same_scene_in_batch false): with one sequence per scene, the default (true) would fill
    every slot of a batch with the same sequence and the same augmentation.
    """
    return {
        "dataset.batch_size": batch_size,
        "dataset.num_workers": num_workers,
        "dataset.num_frames": scenes.train_frames,
        "dataset.sequences.split_num": scenes.train_frames,
        "dataset.train_dataset.sequences_split_num": scenes.train_frames,
        "dataset.sequences.same_scene_in_batch": False,
        "dataset.train_dataset.same_scene_in_batch": False,
        "dataset.val_dataset.same_scene_in_batch": False,
        "dataset.test_dataset.same_scene_in_batch": False,
    }


def shared_memory_workers(requested: int, batch_bytes: int, prefetch: int = 2) -> tuple[int, str | None]:
    """Loader workers that fit /dev/shm (each holds `prefetch` batches there), and a warning if lowered."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return requested, None
    per_worker = prefetch * batch_bytes * 1.25
    fits = int(free // per_worker) if per_worker else requested
    if fits >= requested:
        return requested, None
    lowered = max(0, fits)
    return lowered, (f"/dev/shm has {free / 1e9:.1f} GB free; {requested} loader workers x {prefetch} batches of "
                     f"{batch_bytes / 1e9:.2f} GB need {requested * per_worker / 1e9:.1f} GB: using {lowered} workers")


def batch_bytes(scenes: SceneSet, batch_size: int) -> int:
    """Host bytes of one collated batch: uint8 images (3 channels) and float32 depth targets pooled to
    stride 4 (the default first FPN level, `sparse4d.data.depth_targets`)."""
    depth_pixels = -(-scenes.width // 4) * -(-scenes.height // 4)
    return batch_size * scenes.cameras * (scenes.width * scenes.height * 3 + depth_pixels * 4)


def main() -> None:
    """CLI: prepare scenes in a fresh, light process (its pool workers then import only this module)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--train-scenes", type=int, required=True)
    parser.add_argument("--val-scenes", type=int, default=1)
    parser.add_argument("--train-frames", type=int, required=True)
    parser.add_argument("--val-frames", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--size", default="1408x512", help="WIDTHxHEIGHT")
    parser.add_argument("--num-anchor", type=int, default=900)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    scenes = SceneSet(args.train_scenes, args.val_scenes, args.train_frames, args.val_frames, args.cameras, width, height,
                      args.num_anchor, args.seed)
    manifest = prepare_scenes(args.workdir, scenes, workers=args.workers)
    print(json.dumps({k: manifest[k] for k in ("frames", "timings_s", "disk_gb", "reused")}))


if __name__ == "__main__":
    main()
