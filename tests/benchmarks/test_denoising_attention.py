"""benchmarks/denoising_attention.py runs end to end on the CPU at small shapes and both variants agree."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import denoising_attention  # noqa: E402


def test_reports_both_timings_and_equal_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "attention.json"
    monkeypatch.setattr(sys, "argv", ["denoising_attention.py", "--device", "cpu", "--anchors", "30", "--groups", "3",
                                      "--group-size", "8", "--repeats", "1", "--json", str(out)])
    assert denoising_attention.main() == 0
    record = json.loads(out.read_text())
    assert record["queries"] == 54 and record["dense_masked_ms"] > 0 and record["grouped_ms"] > 0
    assert record["max_abs_difference"] < 1e-5
