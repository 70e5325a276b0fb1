"""Data-source overrides reproduce the seed's examples exactly, with scene names read from disk/S3."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparse4d.errors import InputFileError, SpecError
from sparse4d.skill import data_sources as ds
from sparse4d.skill.data_sources import build_data_source_overrides, resolve_data_sources

S3_TRAIN = "s3://bucket/data/train"
S3_EVAL = "s3://bucket/data/eval"
CONVERTED = "s3://bucket/results/job-123"
SCENE = "subsetscene+bev-sensor-random-0"


def seed_examples() -> dict[str, dict[str, str]]:
    """The seed's 'Typical Spec Overrides' blocks, written out by hand from the seed text."""
    ann = {
        "dataset.train_dataset.ann_file": f"{CONVERTED}/train/{SCENE}_infos_train.pkl",
        "dataset.val_dataset.ann_file": f"{CONVERTED}/val/{SCENE}_infos_val.pkl",
        "dataset.test_dataset.ann_file": f"{CONVERTED}/test/{SCENE}_infos_test.pkl",
    }
    anchor = {"model.head.instance_bank.anchor": f"{CONVERTED}/anchor_init.npy"}
    return {
        "train": {"dataset.data_root": f"{S3_TRAIN}/train", **anchor, **ann},
        "evaluate": {"dataset.data_root": f"{S3_EVAL}/val", **anchor, **ann},
        "export": dict(anchor),
        "inference": {"dataset.data_root": f"{S3_EVAL}/test", **anchor, **ann},
        "quantize": {"dataset.data_root": f"{S3_TRAIN}/train", **anchor, **ann,
                     "dataset.quant_calibration_dataset.images_dir": f"{S3_TRAIN}"},
    }


class FakeS3:
    """An injected lister over a fixed set of object keys (what list_objects_v2 would return)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.calls: list[str] = []

    def __call__(self, prefix: str) -> list[str]:
        self.calls.append(prefix)
        bucket_prefix = prefix[len("s3://bucket/"):].rstrip("/") + "/"
        return [k for k in self.keys if k.startswith(bucket_prefix)]


def converted_keys(scene: str = SCENE) -> list[str]:
    keys = ["results/job-123/anchor_init.npy"]
    for split in ("train", "val", "test"):
        keys.append(f"results/job-123/{split}/{scene}_infos_{split}.pkl")
        keys.append(f"results/job-123/{split}/frame_cache.json")  # unrelated files are ignored
    return keys


@pytest.mark.parametrize("action", ["train", "evaluate", "export", "inference", "quantize"])
def test_reproduces_seed_examples_on_s3(action: str) -> None:
    lister = FakeS3(converted_keys())
    roots = {"train_datasets": S3_TRAIN, "eval_dataset": S3_EVAL}
    out = build_data_source_overrides(action, roots, CONVERTED, lister=lister)
    assert out == seed_examples()[action]
    assert list(out) == list(seed_examples()[action])  # same order as the seed
    if action != "export":
        assert all(call.startswith(CONVERTED) for call in lister.calls) and lister.calls


def _convert_dir(tmp_path: Path, scene: str = SCENE, splits=("train", "val", "test")) -> Path:
    conv = tmp_path / "conv"
    for split in splits:
        (conv / split).mkdir(parents=True, exist_ok=True)
        (conv / split / f"{scene}_infos_{split}.pkl").write_bytes(b"x")
    (conv / "anchor_init.npy").write_bytes(b"x")
    return conv


def _data_root(tmp_path: Path) -> Path:
    root = tmp_path / "aicity"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
    return root


def test_local_paths_and_scene_read_from_disk(tmp_path: Path) -> None:
    scene = "Warehouse_017+bev-sensor-sequential-3"
    conv, root = _convert_dir(tmp_path, scene), _data_root(tmp_path)
    out = build_data_source_overrides("train", {"train_datasets": str(root), "eval_dataset": str(root)}, str(conv))
    assert out["dataset.data_root"] == f"{root}/train"
    assert out["dataset.val_dataset.ann_file"] == f"{conv}/val/{scene}_infos_val.pkl"
    assert out["model.head.instance_bank.anchor"] == f"{conv}/anchor_init.npy"
    for value in out.values():
        assert Path(value).exists()


def test_scene_basename_is_never_stripped(tmp_path: Path) -> None:
    conv = _convert_dir(tmp_path, "subsetscene+bev-sensor-random-0")
    res = resolve_data_sources("export", {}, str(conv))
    assert res.scenes == {}
    res = resolve_data_sources("evaluate", {"eval_dataset": str(_data_root(tmp_path))}, str(conv))
    assert set(res.scenes.values()) == {"subsetscene+bev-sensor-random-0"}


def test_several_scenes_need_an_explicit_choice(tmp_path: Path) -> None:
    conv = _convert_dir(tmp_path, "a+bev-sensor-random-0")
    _convert_dir(tmp_path, "b+bev-sensor-random-1")
    root = _data_root(tmp_path)
    roots = {"train_datasets": str(root), "eval_dataset": str(root)}
    with pytest.raises(SpecError, match="several converted scenes"):
        build_data_source_overrides("train", roots, str(conv))
    out = build_data_source_overrides("train", roots, str(conv), scene="b+bev-sensor-random-1")
    assert out["dataset.test_dataset.ann_file"].endswith("/test/b+bev-sensor-random-1_infos_test.pkl")
    with pytest.raises(InputFileError, match="does not exist"):
        build_data_source_overrides("train", roots, str(conv), scene="b")


def test_missing_split_points_at_dataset_convert(tmp_path: Path) -> None:
    conv = _convert_dir(tmp_path, splits=("train",))
    root = _data_root(tmp_path)
    with pytest.raises(InputFileError) as err:
        build_data_source_overrides("train", {"train_datasets": str(root), "eval_dataset": str(root)}, str(conv))
    assert err.value.key == "dataset.val_dataset.ann_file"
    assert "dataset_convert" in str(err.value)


@pytest.mark.parametrize(("action", "roots", "missing"), [
    ("train", {"eval_dataset": "s3://b/e"}, "train_datasets"),
    ("evaluate", {"train_datasets": "s3://b/t"}, "eval_dataset"),
    ("inference", {"train_datasets": "s3://b/t"}, "inference_dataset"),
    ("quantize", {"eval_dataset": "s3://b/e"}, "train_datasets"),
    ("dataset_convert", {}, "train_datasets"),
])
def test_missing_source_names_source_and_action(action: str, roots: dict, missing: str) -> None:
    with pytest.raises(InputFileError) as err:
        build_data_source_overrides(action, roots, CONVERTED, lister=FakeS3(converted_keys()))
    assert missing in str(err.value) and action in str(err.value)


def test_missing_convert_results_is_the_seed_error() -> None:
    with pytest.raises(InputFileError) as err:
        build_data_source_overrides("train", {"train_datasets": S3_TRAIN}, None)
    assert ds.CONVERT_REQUIRED_MESSAGE in str(err.value)


def test_missing_local_anchor_and_data_root(tmp_path: Path) -> None:
    conv, root = _convert_dir(tmp_path), _data_root(tmp_path)
    (conv / "anchor_init.npy").unlink()
    with pytest.raises(InputFileError, match="anchor_init.npy"):
        build_data_source_overrides("evaluate", {"eval_dataset": str(root)}, str(conv))
    # Export takes the anchors from the checkpoint: the missing file is only a warning there.
    res = resolve_data_sources("export", {}, str(conv))
    assert res.overrides["model.head.instance_bank.anchor"] == f"{conv}/anchor_init.npy"
    assert any("anchor_init.npy" in w for w in res.warnings)
    with pytest.raises(InputFileError, match="nowhere"):
        build_data_source_overrides("evaluate", {"eval_dataset": str(tmp_path / "nowhere")}, str(_convert_dir(tmp_path)))


def test_user_overrides_win_with_a_warning() -> None:
    user = {"dataset.data_root": "s3://other/train", "train.num_epochs": "30"}
    res = resolve_data_sources("train", {"train_datasets": S3_TRAIN, "eval_dataset": S3_EVAL}, CONVERTED,
                               user_overrides=user, lister=FakeS3(converted_keys()))
    assert res.overrides["dataset.data_root"] == "s3://other/train"
    assert res.overrides["train.num_epochs"] == "30"
    assert any("dataset.data_root" in w and "replaces" in w for w in res.warnings)
    same = resolve_data_sources("train", {"train_datasets": S3_TRAIN, "eval_dataset": S3_EVAL}, CONVERTED,
                                user_overrides={"dataset.data_root": f"{S3_TRAIN}/train"},
                                lister=FakeS3(converted_keys()))
    assert not [w for w in same.warnings if "replaces" in w]


def test_user_ann_file_skips_discovery_for_that_split() -> None:
    lister = FakeS3(converted_keys())
    user = {f"dataset.{s}_dataset.ann_file": f"s3://x/{s}.pkl" for s in ("train", "val", "test")}
    out = build_data_source_overrides("evaluate", {"eval_dataset": S3_EVAL}, CONVERTED, user_overrides=user,
                                      lister=lister)
    assert lister.calls == []
    assert out["dataset.val_dataset.ann_file"] == "s3://x/val.pkl"


def test_calibration_and_inference_roots_when_given() -> None:
    roots = {"train_datasets": S3_TRAIN, "eval_dataset": S3_EVAL, "inference_dataset": "s3://bucket/data/infer",
             "calibration_dataset": "s3://bucket/calib"}
    lister = FakeS3(converted_keys())
    assert build_data_source_overrides("inference", roots, CONVERTED, lister=lister)["dataset.data_root"] == \
        "s3://bucket/data/infer/test"
    assert build_data_source_overrides("quantize", roots, CONVERTED, lister=lister)[
        "dataset.quant_calibration_dataset.images_dir"] == "s3://bucket/calib"


def test_unknown_action_and_role() -> None:
    with pytest.raises(SpecError):
        build_data_source_overrides("deploy", {}, CONVERTED)
    with pytest.raises(SpecError, match="unknown dataset role"):
        build_data_source_overrides("export", {"training": "x"}, CONVERTED)


def test_scene_name_parsing() -> None:
    assert ds.scene_from_annotation_name("a/b/x+bev-sensor-random-0_infos_val.pkl", "val") == "x+bev-sensor-random-0"
    assert ds.scene_from_annotation_name("x_infos_train.pkl", "val") is None
    assert ds.scene_from_annotation_name("_infos_val.pkl", "val") is None


def test_real_s3_listing_with_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    for name in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bucket")
        for key in converted_keys():
            s3.put_object(Bucket="bucket", Key=key, Body=b"x")
        out = build_data_source_overrides("train", {"train_datasets": S3_TRAIN, "eval_dataset": S3_EVAL}, CONVERTED)
    assert out == seed_examples()["train"]


def test_table_shape() -> None:
    for action in ds.CONVERT_CONSUMERS:
        assert ds.needs_convert(action)
        assert "model.head.instance_bank.anchor" in ds.data_source_keys(action)
    assert not ds.needs_convert("dataset_convert")
    assert ds.required_roles("export") == ()
