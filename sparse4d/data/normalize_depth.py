"""Rewriting depth references of older annotation pickles to the H5 layout.

Older conversions point depth at per-camera PNG folders: ``("scene/Camera", "distance_to_image_plane_png/x.png")``.
AICity 2025 ships one H5 per camera instead, so those become ``("scene/depth_maps/Camera.h5", "x.png")``.
References already pointing at an ``.h5`` file are left alone, which makes the rewrite idempotent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sparse4d.data.safe_pickle import atomic_dump, safe_load
from sparse4d.errors import InputFileError

LOG = logging.getLogger(__name__)
DEPTH_KEY_MARKER = "distance_to_image_plane"


@dataclass
class NormalizeReport:
    files_scanned: int = 0
    files_rewritten: int = 0
    refs_rewritten: int = 0
    refs_already_h5: int = 0
    missing_h5: list[str] = field(default_factory=list)
    dry_run: bool = False

    def format(self) -> str:
        verb = "would rewrite" if self.dry_run else "rewrote"
        text = (f"normalize_depth_paths: scanned {self.files_scanned} file(s), {verb} {self.refs_rewritten} depth "
                f"reference(s) in {self.files_rewritten} file(s); {self.refs_already_h5} already pointed at .h5")
        if self.missing_h5:
            text += f"; {len(self.missing_h5)} target h5 file(s) missing under the data root: {', '.join(self.missing_h5[:5])}"
        return text


def normalize_depth_paths(data_root: Path, annotation_dir: Path, *, dry_run: bool = False) -> NormalizeReport:
    """Rewrite camera-folder depth references in every *.pkl under `annotation_dir` (recursively)."""
    data_root, annotation_dir = Path(data_root), Path(annotation_dir)
    if not annotation_dir.exists():
        raise InputFileError(f"annotation folder {annotation_dir} does not exist")
    files = [annotation_dir] if annotation_dir.is_file() else sorted(annotation_dir.rglob("*.pkl"))
    report = NormalizeReport(dry_run=dry_run)
    missing: set[str] = set()
    for path in files:
        report.files_scanned += 1
        counts: dict[str, Any] = {"rewritten": 0, "ok": 0}
        rewritten = _rewrite(safe_load(path), counts, data_root, missing)
        report.refs_rewritten += counts["rewritten"]
        report.refs_already_h5 += counts["ok"]
        if counts["rewritten"]:
            report.files_rewritten += 1
            if not dry_run:
                atomic_dump(rewritten, path)
    report.missing_h5 = sorted(missing)
    LOG.info("%s", report.format())
    return report


def _rewrite(value: Any, counts: dict[str, Any], data_root: Path, missing: set[str]) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, str) for part in value) \
            and DEPTH_KEY_MARKER in value[1]:
        location, key = value
        if location.endswith(".h5"):
            counts["ok"] += 1
            return value
        folder = PurePosixPath(location)
        target = f"{folder.parts[0]}/depth_maps/{folder.name}.h5"
        target = counts.setdefault(target, target)  # one shared string per file keeps the pickle compact
        if not (data_root / target).is_file():
            missing.add(target)
        counts["rewritten"] += 1
        return target, PurePosixPath(key).name
    if isinstance(value, dict):
        return {k: _rewrite(v, counts, data_root, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(item, counts, data_root, missing) for item in value]
    if isinstance(value, tuple):
        return tuple(_rewrite(item, counts, data_root, missing) for item in value)
    return value
