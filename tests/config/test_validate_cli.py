"""`runner validate spec`: broken specs fail with exit 3 naming the key; hostile files get one clear message."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sparse4d.cli.runner import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def valid_train_spec(tmp_path: Path) -> dict:
    """A train spec whose every file exists, so only the breakage under test is reported."""
    root = tmp_path / "aicity" / "train"
    root.mkdir(parents=True)
    conv = tmp_path / "converted"
    for split in ("train", "val", "test"):
        (conv / split).mkdir(parents=True)
        (conv / split / f"scene+bev-sensor-random-0_infos_{split}.pkl").write_bytes(b"x")
    np.save(conv / "anchor_init.npy", np.zeros((900, 11), dtype=np.float32))
    spec = yaml.safe_load((ROOT / "references" / "spec_template_train.yaml").read_text())
    spec["dataset"]["data_root"] = str(root)
    for split in ("train", "val", "test"):
        spec["dataset"][f"{split}_dataset"]["ann_file"] = str(conv / split / f"scene+bev-sensor-random-0_infos_{split}.pkl")
    spec["model"]["head"]["instance_bank"]["anchor"] = str(conv / "anchor_init.npy")
    return spec


def _run(args: list[str]):
    return CliRunner().invoke(cli, args)


def _write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def test_valid_spec_exits_zero(tmp_path: Path, valid_train_spec: dict) -> None:
    result = _run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] is True and doc["errors"] == []


def _set(spec: dict, dotted: str, value) -> None:
    node = spec
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def _delete(spec: dict, dotted: str) -> None:
    node = spec
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[p]
    del node[parts[-1]]


BROKEN = [
    ("train.num_epochs", -3),
    ("train.num_epochs", "ten"),
    ("train.num_epochs", 2.5),
    ("train.optim.lr", -1e-4),
    ("train.optim.type", "lamb"),
    ("train.optim.grad_clip.max_norm", -1),
    ("train.optim.grad_clip.norm_type", "L3"),
    ("train.optim.lr_scheduler.policy", "step"),
    ("train.optim.lr_scheduler.warmup_ratio", 2.0),
    ("train.optim.paramwise_cfg.custom_keys.img_backbone.lr_mult", -0.5),
    ("train.precision", "int4"),
    ("train.checkpoint_interval_unit", "hour"),
    ("train.checkpoint_interval", 50),
    ("train.gpu_ids", [0, 1]),
    ("train.num_gpus", 0),
    ("train.optim", [1, 2]),
    ("train.num_epochz", 3),
    ("model.backbone.type", "vit_l"),
    ("model.head.instance_bank.num_temp_instances", 1000),
    ("model.head.num_output", 901),
    ("model.head.deformable_model.num_cams", 21),
    ("model.head.deformable_model.residual_mode", "mul"),
    ("model.head.num_decoder", 4),
    ("model.neck.in_channels", [64, 128, 256, 512]),
    ("model.neck.num_outs", 3),
    ("model.head.decoder.score_threshold", 1.5),
    ("model.head.loss.cls.alpha", 2),
    ("model.head.sampler.reg_weights", [1.0, 2.0]),
    ("model.input_shape", [1408]),
    ("model.head.graph_model.embed_dims", 256),
    ("model.embed_dims", 255),
    ("dataset.classes", []),
    ("dataset.classes", ["person", "person"]),
    ("dataset.batch_size", 0),
    ("dataset.augmentation.final_dim", [256, 704]),
    ("dataset.augmentation.rot_lim", [5.4, -5.4]),
    ("dataset.use_h5_file_for_rgb", True),
    ("dataset.val_dataset.tracking_threshold", -0.1),
    ("dataset.train_dataset.ann_file", "???"),
    ("dataset", "not-a-mapping"),
    ("wandb.enable", "maybe"),
    ("model.head.temporal", {"a": 1}),
]


@pytest.mark.parametrize(("key", "value"), BROKEN, ids=[f"{k}={v!r}"[:60] for k, v in BROKEN])
def test_broken_spec_exits_3_and_names_key(tmp_path: Path, valid_train_spec: dict, key: str, value) -> None:
    _set(valid_train_spec, key, value)
    result = _run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec)), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    named = [e["key"] + " " + e["message"] for e in doc["errors"]]
    assert any(key in text or text.split(" ")[0] in key for text in named), named
    for e in doc["errors"]:
        assert e["message"]


def test_unknown_key_gets_did_you_mean(tmp_path: Path, valid_train_spec: dict) -> None:
    _set(valid_train_spec, "train.optim.learning_rat", 1e-4)
    _set(valid_train_spec, "model.head.instance_bank.num_anchors", 10)
    doc = json.loads(_run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec)), "--json"]).stdout)
    hints = {e["key"]: e["hint"] for e in doc["errors"]}
    assert "did you mean model.head.instance_bank.num_anchor?" == hints["model.head.instance_bank.num_anchors"]


def test_missing_anchor_file_exits_4(tmp_path: Path, valid_train_spec: dict) -> None:
    _set(valid_train_spec, "model.head.instance_bank.anchor", str(tmp_path / "nope.npy"))
    result = _run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec))])
    assert result.exit_code == 4
    assert "model.head.instance_bank.anchor" in result.output


def test_short_anchor_file_is_invalid(tmp_path: Path, valid_train_spec: dict) -> None:
    np.save(tmp_path / "short.npy", np.zeros((10, 11), dtype=np.float32))
    _set(valid_train_spec, "model.head.instance_bank.anchor", str(tmp_path / "short.npy"))
    result = _run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec)), "--json"])
    assert result.exit_code == 3
    assert "10 anchors" in json.loads(result.stdout)["errors"][0]["message"]


def test_nan_anchor_file_is_invalid(tmp_path: Path, valid_train_spec: dict) -> None:
    a = np.zeros((900, 11), dtype=np.float32)
    a[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", a)
    _set(valid_train_spec, "model.head.instance_bank.anchor", str(tmp_path / "nan.npy"))
    assert _run(["validate", "spec", "train", str(_write(tmp_path, valid_train_spec))]).exit_code == 3


def test_wandb_without_key_fails_only_for_launch(tmp_path: Path, valid_train_spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _set(valid_train_spec, "wandb.enable", True)
    path = str(_write(tmp_path, valid_train_spec))
    assert _run(["validate", "spec", "train", path]).exit_code == 0
    result = _run(["validate", "spec", "train", path, "--launch", "--json"])
    assert result.exit_code == 3 and json.loads(result.stdout)["errors"][0]["key"] == "wandb.enable"


def test_override_is_applied_and_validated(tmp_path: Path, valid_train_spec: dict) -> None:
    path = str(_write(tmp_path, valid_train_spec))
    assert _run(["validate", "spec", "train", path, "-o", "train.num_epochs=3", "-o", "train.optim.lr=1e-4"]).exit_code == 0
    result = _run(["validate", "spec", "train", path, "-o", "train.optim.lr=abc", "--json"])
    assert result.exit_code == 3 and json.loads(result.stdout)["errors"][0]["key"] == "train.optim.lr"


BAD_FILES = {
    "malformed.yaml": (b"train:\n  num_epochs: [1, 2\n", "line"),
    "empty.yaml": (b"", "empty"),
    "list.yaml": (b"- a\n- b\n", "not a mapping"),
    "binary.yaml": (bytes(range(256)) * 4, "binary"),
    "latin1.yaml": ("train:\n  x: caf\xe9\n".encode("latin-1"), "UTF-8"),
    "bomb.yaml": (("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(24))).encode(), "YAML aliases"),
    "tabs.yaml": (b"train:\n\tnum_epochs: 3\n", "line"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_get_one_clear_message(tmp_path: Path, name: str) -> None:
    content, needle = BAD_FILES[name]
    p = tmp_path / name
    p.write_bytes(content)
    result = _run(["validate", "spec", "train", str(p), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] is False and needle in doc["errors"][0]["message"]
    assert "Traceback" not in result.output


def test_huge_file_is_refused_without_parsing(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    with p.open("w") as f:
        f.write("train:\n")
        line = "  # " + "x" * 1000 + "\n"
        for _ in range(50 * 1024):
            f.write(line)
    result = _run(["validate", "spec", "train", str(p), "--json"])
    assert result.exit_code == 3 and "MB" in json.loads(result.stdout)["errors"][0]["message"]


def test_missing_spec_file_exits_4(tmp_path: Path) -> None:
    assert _run(["validate", "spec", "train", str(tmp_path / "absent.yaml")]).exit_code == 4


def test_unknown_action_is_usage_error(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("a: 1\n")
    result = _run(["validate", "spec", "trian", str(p)])
    assert result.exit_code == 2


def test_real_process_prints_no_traceback_and_json_only_on_stdout(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("train: [1, 2]\n")
    proc = subprocess.run([sys.executable, "-m", "sparse4d.cli.runner", "validate", "spec", "train", str(p), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors"][0]["key"] == "train"


def test_validate_path_never_imports_torch(tmp_path: Path, valid_train_spec: dict) -> None:
    path = _write(tmp_path, valid_train_spec)
    code = (
        "import sys\n"
        "from sparse4d.cli.runner import cli\n"
        f"try:\n    cli(['validate', 'spec', 'train', {str(path)!r}], standalone_mode=False)\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout + proc.stderr
