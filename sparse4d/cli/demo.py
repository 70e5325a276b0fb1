"""`runner demo`: the README main job on the embedded default, end to end through the runner.

synthetic AICity scenes -> dataset_convert -> train -> evaluate (prints mAP) -> inference (pictures)
-> export (ONNX). Every step is a job on the local backend that names only its parent job id; the
runner stays torch-free and the trainer runs in each job's subprocess.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import Sparse4DError
from .common import emit_json, log, run_guarded
from .launch import LaunchRequest, launch

# Many short scenes generalise far better than a few long ones (benchmarks/README.md, accuracy).
DEMO_SCENES = {"train_scenes": 24, "eval_scenes": 2, "cameras": 2, "frames": 6, "size": "256x128", "seed": 0}


def demo_overrides(epochs: int) -> dict[str, Any]:
    """The small CPU config (shared with benchmarks/accuracy_synthetic.py) plus the epoch budget."""
    from ..engine.small_config import small_overrides  # torch-free module by contract

    overrides = small_overrides()
    overrides.update({"train.num_epochs": epochs, "train.checkpoint_interval": epochs, "train.validation_interval": epochs})
    return overrides


def _as_args(overrides: dict[str, Any]) -> list[str]:
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) else v}" for k, v in overrides.items()]


def _step(title: str, req: LaunchRequest) -> dict[str, Any]:
    log(f"== {title}")
    start = time.monotonic()
    doc = launch(req, wait=True)
    if not doc.get("launched"):
        problems = "; ".join(f"{e['key']}: {e['message']}" for e in doc.get("errors", [])) or doc.get("message", "not launched")
        raise Sparse4DError(f"{req.action} was not launched: {problems}")
    status = doc.get("status", {})
    if status.get("status") != "Done":
        from ..jobs.backend import JobBackend

        tail = JobBackend(req.jobs_root).get_job_logs(doc["job_id"], tail=30)
        raise Sparse4DError(f"{req.action} job {doc['job_id']} ended {status.get('status')}: {status.get('reason')}\n{tail}")
    doc["seconds"] = round(time.monotonic() - start, 1)
    log(f"   job {doc['job_id']} done in {doc['seconds']} s; results {doc['results_dir']}")
    return doc


@click.command("demo", help="Run the main job on synthetic AICity data: convert, train, evaluate, inference, export.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True, help="Folder for data and jobs.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Training epochs.")
@click.option("--seed", type=int, default=None, help="train.seed (default: the spec's); so short a run's scores move a lot with it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def demo(workdir: Path, epochs: int, seed: int | None, as_json: bool) -> None:
    def body() -> int:
        root = workdir.resolve()
        data = root / "aicity"
        jobs = str(root / "jobs")
        started = time.monotonic()
        if not (data / "train").is_dir():
            log(f"== synthetic AICity scenes -> {data}")
            base = [sys.executable, "-m", "sparse4d.cli.trainer", "synth-aicity", str(data), "--cameras", str(DEMO_SCENES["cameras"]), "--frames", str(DEMO_SCENES["frames"]), "--size", DEMO_SCENES["size"], "--seed", str(DEMO_SCENES["seed"])]
            subprocess.run([*base, "--scenes", str(DEMO_SCENES["train_scenes"]), "--split", "train"], check=True)
            subprocess.run([*base, "--scenes", str(DEMO_SCENES["eval_scenes"]), "--split", "val", "--split", "test"], check=True)
        roots = {"train_datasets": str(data), "eval_dataset": str(data), "inference_dataset": str(data)}
        small = demo_overrides(epochs)
        if seed is not None:
            small["train.seed"] = seed
        anchors = small.get("model.head.instance_bank.num_anchor", 900)
        convert = _step("dataset_convert", LaunchRequest("dataset_convert", roots={"train_datasets": str(data)}, overrides=["aicity.split=train,val,test", f"aicity.anchor_init_config.num_anchor={anchors}"], jobs_root=jobs))
        cid = convert["job_id"]
        # Several converted scenes per split: read every *_infos_<split>.pkl of the split folder.
        folders = [f"dataset.{split}_dataset.ann_file={convert['results_dir']}/{split}" for split in ("train", "val", "test")]
        train = _step("train", LaunchRequest("train", roots=roots, convert_job_id=cid, overrides=_as_args(small) + folders, automl_policy="off", jobs_root=jobs))
        tid = train["job_id"]
        common = [a for a in _as_args(small) if not a.startswith("train.")] + folders
        evaluate = _step("evaluate", LaunchRequest("evaluate", roots=roots, convert_job_id=cid, parent_job_id=tid, overrides=common + ["evaluate.metrics=[detection, tracking]"], jobs_root=jobs))
        inference = _step("inference", LaunchRequest("inference", roots=roots, convert_job_id=cid, parent_job_id=tid, overrides=common, jobs_root=jobs))
        export = _step("export", LaunchRequest("export", roots=roots, convert_job_id=cid, parent_job_id=tid, overrides=common + ["export.input_width=256", "export.input_height=128", "export.on_cpu=true"], jobs_root=jobs))
        metrics = _read_metrics(Path(jobs) / evaluate["job_id"], Path(evaluate["results_dir"]))
        summary = {
            "workdir": str(root),
            "data": str(data),
            "jobs_root": jobs,
            "jobs": {step: doc["job_id"] for step, doc in (("dataset_convert", convert), ("train", train), ("evaluate", evaluate), ("inference", inference), ("export", export))},
            "results": {step: doc["results_dir"] for step, doc in (("dataset_convert", convert), ("train", train), ("evaluate", evaluate), ("inference", inference), ("export", export))},
            "checkpoints": sorted(str(p) for p in Path(train["results_dir"]).glob("model_epoch_*.pth")),
            "metrics": metrics,
            "pictures": sorted(str(p) for p in Path(inference["results_dir"]).rglob("*.png"))[:6],
            "onnx": sorted(str(p) for p in Path(export["results_dir"]).rglob("*.onnx")),
            "seconds": round(time.monotonic() - started, 1),
        }
        if as_json:
            emit_json(summary)
        else:
            _print_summary(summary)
        return 0

    run_guarded(body, as_json=as_json)


def _read_metrics(job_dir: Path, results_dir: Path) -> dict[str, Any]:
    from ..jobs.status_file import read_events
    from ..jobs.store import status_path

    kpi: dict[str, Any] = {}
    for event in read_events(status_path(job_dir, str(results_dir))):
        kpi.update(event.get("kpi") or {})
    return kpi


def _print_summary(s: dict[str, Any]) -> None:
    m = s["metrics"]
    click.echo("")
    def fmt(key: str) -> str:
        value = m.get(key)
        return "n/a" if value is None else f"{value:.4f}"

    click.echo(f"mAP {fmt('mAP')}  NDS {fmt('NDS')}  AMOTA {fmt('AMOTA')}")
    click.echo(f"data:        {s['data']}")
    for step, job in s["jobs"].items():
        click.echo(f"{step:<12} job {job}  {s['results'][step]}")
    click.echo(f"checkpoints: {s['checkpoints']}")
    click.echo(f"pictures:    {len(s['pictures'])} shown, e.g. {s['pictures'][:2]}")
    click.echo(f"onnx:        {s['onnx']}")
    click.echo(f"total {s['seconds']} s")
