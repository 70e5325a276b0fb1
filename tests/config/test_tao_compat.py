"""TAO spec files validate unchanged once their ??? values are filled; TAO keys and defaults are kept."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from sparse4d.config import validate_spec
from sparse4d.config.experiment import SPEC_MODELS

ROOT = Path(__file__).resolve().parents[2]
TAO = ROOT / "tests" / "fixtures" / "tao"
DIFFERENCES = yaml.safe_load((ROOT / "references" / "tao_differences.yaml").read_text())


def _tao_leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if not isinstance(child, dict):
            continue
        if isinstance(child.get("properties"), dict) and child.get("type") in ("collection", "object", None):
            yield from _tao_leaves(child, path + ".")
        else:
            yield path, child.get("default")


def _ours(path: str) -> Any:
    node: Any = SPEC_MODELS["train"]().model_dump(mode="json")
    for part in path.split("."):
        node = node[part]
    return node


def test_every_tao_train_key_exists_with_tao_default() -> None:
    tao = json.loads((TAO / "train.schema.json").read_text())  # TAO writes Infinity: Python's json accepts it
    changed = DIFFERENCES["default_changed"]
    ours_fields = SPEC_MODELS["train"].model_fields
    checked = 0
    for path, default in _tao_leaves(tao):
        if path.split(".")[0] not in ours_fields:  # sections train ignores (quantize) are accepted, not defaulted
            assert path.split(".")[0] in ("quantize",), path
            continue
        if path in changed:
            assert _ours(path) == changed[path]["ours"], path
            continue
        assert _ours(path) == default or (isinstance(default, float) and math.isclose(_ours(path), default)), path
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("action", ["train", "evaluate", "inference", "export", "quantize", "dataset_convert"])
def test_tao_template_validates_once_placeholders_filled(action: str) -> None:
    text = (TAO / f"spec_template_{action}.yaml").read_text().replace("???", "/data/filled")
    report = validate_spec(action, yaml.safe_load(text), check_files=False)
    assert [e.to_dict() for e in report.errors] == []
