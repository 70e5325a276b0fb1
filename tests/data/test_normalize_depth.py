"""normalize_depth_paths: camera-folder refs become H5 refs, once, atomically; CLI commands."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from .conftest import aicity_config
from sparse4d.data.cli import normalize_depth_paths as normalize_command, synth_aicity
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.normalize_depth import normalize_depth_paths
from sparse4d.data.safe_pickle import atomic_dump, safe_load


def _legacy(ann_file: Path) -> dict:
    payload = safe_load(ann_file)
    for info in payload["infos"]:
        info["depth_refs"] = [(f"Warehouse_000/{camera}", f"distance_to_image_plane_png/{key}")
                              for camera, (_, key) in zip(info["camera_names"], info["depth_refs"])]
    return payload


def test_rewrite_is_correct_idempotent_and_dry_run_writes_nothing(aicity_root: Path, tmp_path: Path) -> None:
    summary = run_dataset_convert(aicity_config(aicity_root), tmp_path / "out")
    ann_file = summary.annotation_files[0]
    converted = [info["depth_refs"] for info in safe_load(ann_file)["infos"]]
    atomic_dump(_legacy(ann_file), ann_file)
    legacy = ann_file.read_bytes()

    dry = normalize_depth_paths(aicity_root / "train", ann_file.parent, dry_run=True)
    assert dry.refs_rewritten == 40 and dry.files_rewritten == 1 and ann_file.read_bytes() == legacy

    report = normalize_depth_paths(aicity_root / "train", ann_file.parent)
    assert report.refs_rewritten == 40 and not report.missing_h5
    assert [info["depth_refs"] for info in safe_load(ann_file)["infos"]] == converted  # what dataset_convert writes
    rewritten = ann_file.read_bytes()
    again = normalize_depth_paths(aicity_root / "train", ann_file.parent)
    assert again.refs_rewritten == 0 and again.refs_already_h5 == 40 and ann_file.read_bytes() == rewritten
    assert not [p for p in ann_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(synth_aicity, [str(tmp_path / "data"), "--frames", "3", "--cameras", "1", "--size", "64x32",
                                          "--split", "val"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "val" / "Warehouse_000" / "depth_maps" / "Camera_0000.h5").is_file()
    assert runner.invoke(synth_aicity, [str(tmp_path / "x"), "--size", "64"]).exit_code == 2
    missing = runner.invoke(normalize_command, ["--data-root", str(tmp_path), str(tmp_path / "nope")])
    assert missing.exit_code == 4 and "does not exist" in missing.output
