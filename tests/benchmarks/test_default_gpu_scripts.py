"""Fast checks of the GPU benchmark scripts' planning logic and spec overrides (no training, no GPU)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import accuracy_default_gpu as acc  # noqa: E402
from synthetic_scenes import SceneSet, shared_memory_workers  # noqa: E402


def default_args(**changes) -> argparse.Namespace:
    values = dict(smoke=False, seed=7, lr=3e-4, set=[], train_scenes=40, val_scenes=8, frames=40, val_frames=40, train_minutes=15.0)
    values.update(changes)
    return argparse.Namespace(**values)


def manifest_for(tmp_path: Path) -> dict:
    return {"root": str(tmp_path / "aicity"), "anchor": str(tmp_path / "anchor_init.npy"), "train": str(tmp_path / "train"),
            "val": str(tmp_path / "val")}


def test_default_overrides_make_valid_train_and_evaluate_specs(tmp_path):
    args = default_args()
    scenes = acc.scene_set(args)
    overrides = {**acc.base_overrides(args, scenes, 8, 10), **acc.schedule_overrides(5, 1000)}
    spec = acc.build_spec("train", manifest_for(tmp_path), tmp_path / "train_out", overrides)
    assert spec.model.backbone.type == "resnet_101" and list(spec.model.input_shape) == [1408, 512]
    assert spec.model.head.instance_bank.num_anchor == 900 and spec.train.precision == "bf16"
    assert spec.train.num_epochs == 5 and spec.train.validation_interval == 5
    assert spec.train.optim.lr_scheduler.warmup_iters == 100
    assert spec.dataset.train_dataset.same_scene_in_batch is False and spec.dataset.train_dataset.sequences_split_num == 40
    evaluate = acc.build_spec("evaluate", manifest_for(tmp_path), tmp_path / "eval_out",
                              {**overrides, "evaluate.checkpoint": "x.pth", "evaluate.metrics": ["detection", "tracking"]})
    assert evaluate.dataset.batch_size == 8


def probe_result(step_ms: float, steps_per_epoch: int = 200) -> dict:
    return {"step_ms": step_ms, "steps_per_epoch": steps_per_epoch, "startup_s": 30.0, "batch": 8, "workers": 10}


def test_plan_fits_the_budget_and_scales_with_speed():
    args, scenes = default_args(), acc.scene_set(default_args())
    slow = acc.plan_epochs(args, scenes, probe_result(1000.0), spent_s=60.0)
    fast = acc.plan_epochs(args, scenes, probe_result(500.0), spent_s=60.0)
    assert fast["num_epochs"] > slow["num_epochs"] >= 1
    for plan in (slow, fast):
        assert plan["estimated_train_s"] <= plan["budget_s"]
        assert plan["total_steps"] == plan["num_epochs"] * 200
        assert 1 <= plan["warmup_iters"] <= 500


def test_plan_keeps_one_epoch_when_the_budget_is_too_small():
    args = default_args(train_minutes=1.0)
    plan = acc.plan_epochs(args, acc.scene_set(args), probe_result(2000.0), spent_s=50.0)
    assert plan["num_epochs"] == 1


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
@pytest.mark.parametrize("requested", [1, 4])
def test_shared_memory_workers_never_raises_the_request(requested):
    workers, warning = shared_memory_workers(requested, batch_bytes=1)
    assert workers == requested and warning is None
    huge, warning = shared_memory_workers(requested, batch_bytes=10 ** 15)
    assert huge == 0 and "using 0 workers" in warning


def test_scene_set_rejects_an_empty_val_split(tmp_path):
    from synthetic_scenes import prepare_scenes

    with pytest.raises(ValueError, match="val scene"):
        prepare_scenes(tmp_path, SceneSet(1, 0, 4, 4, 2, 64, 32, 8))


def test_loader_verdict_needs_both_low_wait_and_headroom():
    from train_throughput import keeps_up

    step = {"data_wait_ms_median": 1.0, "step_ms": 500.0, "data_wait_share": 0.01, "samples_per_s": 16.0}
    assert keeps_up(step, {"loader_only_samples_per_s": 40.0})["loader_keeps_up"]
    assert not keeps_up(step, {"loader_only_samples_per_s": 16.5})["loader_keeps_up"]
    starved = {**step, "data_wait_ms_median": 200.0, "data_wait_share": 0.4}
    assert not keeps_up(starved, {"loader_only_samples_per_s": 40.0})["loader_keeps_up"]


def test_ddp_scaling_passes_every_option_to_its_runs(monkeypatch):
    """The driver starts one process per GPU count; each must get the driver's options, and a
    --devices run must hand them to run_one (an option lost here costs a GPU session)."""
    import ddp_scaling

    argv = ["--steps", "12", "--warmup", "3", "--batch", "1", "--lr", "2e-05", "--compile", "--compile-mode", "reduce-overhead",
            "--graphed-optimizer", "--auto-gc", "--find-unused"]
    driver = ddp_scaling.build_parser().parse_args(argv)
    child = ddp_scaling.child_command(driver, 2, "/tmp/two.json")[2:]  # without the interpreter and script
    calls = []
    monkeypatch.setattr(ddp_scaling, "run_one", lambda *a: calls.append(a))
    monkeypatch.setattr(ddp_scaling.torch.cuda, "is_available", lambda: True)
    assert ddp_scaling.main(child) == 0
    assert calls == [(2, 12, 3, 1, "/tmp/two.json", True, "reduce-overhead", 2e-05, True, True)]
    calls.clear()
    plain = ddp_scaling.build_parser().parse_args([])
    assert ddp_scaling.main(ddp_scaling.child_command(plain, 1, "/tmp/one.json")[2:]) == 0
    assert calls == [(1, 40, 8, 2, "/tmp/one.json", False, None, None, False, False)]  # eager, the trainer's lr, paused GC


def test_in_process_ab_toggles_flip_what_they_name(tmp_path):
    """train_throughput --ab NAME: each toggle reads back what it set (the GPU run alternates on it)."""
    import numpy as np

    import train_throughput
    from sparse4d.model.sparse4d import Sparse4D
    from tests.model.model_helpers import random_anchors, small_config
    from train_throughput import AB_TOGGLES

    np.save(tmp_path / "anchor_init.npy", random_anchors(64))
    model = Sparse4D.from_config(small_config(str(tmp_path / "anchor_init.npy")), num_classes=3)
    import sys

    from sparse4d.model import matching

    graphed = object()  # stands in for the GraphedOptimizerStep the GPU run builds
    switches = train_throughput.Switches(model, optimizer_step=None, graphed_step=graphed)
    graphed_losses, launched_losses = object(), object()  # stand in for the two compiled decoder losses
    switches.losses = {True: graphed_losses, False: launched_losses}
    assert sorted(AB_TOGGLES) == ["anchor-encoder", "denoising-costs", "graphed-optimizer", "losses-graphs", "solver-workers", "switch-interval"]
    interval, pool = sys.getswitchinterval(), matching.solver_pool()
    try:
        for get, set_, names in AB_TOGGLES.values():
            assert len(names) == 2
            for state in (True, False, True):
                set_(switches, state)
                assert get(switches) is state
        assert model.head.anchor_encoder.stack_branches and train_throughput.GT_ON_HOST and switches.optimizer_step is graphed
        assert model.decoder_losses is graphed_losses and sys.getswitchinterval() < interval
        assert matching.solver_pool() is not pool and matching.solver_pool()._max_workers == train_throughput.FEW_SOLVER_WORKERS
    finally:
        train_throughput.GT_ON_HOST = True
        sys.setswitchinterval(interval)
        matching._solver_pool = pool


def test_the_benchmark_leaves_the_gt_on_the_host_as_the_trainer_does():
    """denoising-costs "host": the GT lists stay where they are and the rest moves; "device": all move."""
    import torch

    import train_throughput

    batch = train_throughput.synthetic_batch(1, 3, 0, pin=False, width=64, height=32)
    meta = torch.device("meta")
    try:
        for on_host in (True, False):
            train_throughput.GT_ON_HOST = on_host
            moved = train_throughput.to_device(batch, meta)
            assert moved["img"].device == meta
            for key in ("gt_bboxes_3d", "gt_labels_3d", "instance_ids"):
                assert moved[key][0].device.type == ("cpu" if on_host else "meta"), (on_host, key)
    finally:
        train_throughput.GT_ON_HOST = True


def test_records_are_replaced_whole(tmp_path):
    """A partial record (written as the A/B goes) is replaced by the next one, never left half-written."""
    import json

    import train_throughput

    path = tmp_path / "ab.json"
    train_throughput.save_json({"partial": True, "step_ms": 110.0}, str(path))
    train_throughput.save_json({"step_ms": 101.5, "ab": {"denoising-costs": {"host_ms": [101.5]}}}, str(path))
    assert json.loads(path.read_text()) == {"step_ms": 101.5, "ab": {"denoising-costs": {"host_ms": [101.5]}}}
    assert [f.name for f in tmp_path.iterdir()] == ["ab.json"]
    train_throughput.save_json({"x": 1}, None)  # no path: nothing written


def test_gpu_lag_is_how_long_after_the_host_the_gpu_reaches_a_mark():
    """Host marks at 10 and 30 ms after the origin; the GPU reached them at 25 and 31 ms: lags 15, 1."""
    import train_throughput

    marks = [("start", 100.010), ("forward_queued", 100.030), ("start", 100.110), ("forward_queued", 100.130)]
    gpu_ms = [25.0, 31.0, 135.0, 133.0]
    lags = train_throughput.gpu_lag_medians(marks, gpu_ms, origin_host=100.0)
    assert lags == {"start": 20.0, "forward_queued": 2.0}  # medians of (15, 25) and (1, 3)


def test_inductor_settings_are_set_and_unknown_keys_refused():
    """train_throughput --inductor KEY=VALUE: the config Inductor compiles with, checked before any GPU time."""
    import pytest
    import torch._inductor.config as inductor_config

    from train_throughput import apply_inductor_config

    before = (inductor_config.combo_kernels, inductor_config.triton.cudagraph_trees)
    try:
        assert apply_inductor_config(["combo_kernels=True", "triton.cudagraph_trees=False"]) == {"combo_kernels": True, "triton.cudagraph_trees": False}
        assert inductor_config.combo_kernels is True and inductor_config.triton.cudagraph_trees is False
        for bad, message in (("no_such_key=1", "has no 'no_such_key'"), ("triton.nope=1", "has no 'triton.nope'"),
                             ("combo_kernels", "expected KEY=VALUE"), ("combo_kernels=yes", "Python literal")):
            with pytest.raises(ValueError, match=message):
                apply_inductor_config([bad])
    finally:
        inductor_config.combo_kernels, inductor_config.triton.cudagraph_trees = before
