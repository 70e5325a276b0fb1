"""status.json: TAO layout, torn lines, concurrent writers, metric lookup."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from sparse4d.jobs.status_file import StatusWriter, last_status, latest_metric, read_events

TAO_KEYS = {"date", "time", "status", "verbosity", "message", "categorical", "graphical", "kpi"}


def test_each_line_is_a_full_tao_event(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    writer = StatusWriter(path)
    writer.write("STARTED", "go")
    writer.write("RUNNING", "epoch 0", kpi={"val_mAP": 0.25, "loss": 1.5})
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert all(set(e) == TAO_KEYS for e in events)
    assert events[1]["kpi"] == {"val_mAP": 0.25, "loss": 1.5}
    assert [e["status"] for e in read_events(path)] == ["STARTED", "RUNNING"]


def test_unknown_status_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        StatusWriter(tmp_path / "s.json").write("DONE-ISH")


def test_torn_last_line_is_skipped_and_closed_by_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    writer = StatusWriter(path)
    writer.write("RUNNING", "epoch 0", kpi={"mAP": 0.1})
    with open(path, "ab") as handle:  # a writer killed mid-line
        handle.write(b'{"date": "1/1/2025", "time": "1:00:00", "status": "RUN')
    assert [e["message"] for e in read_events(path)] == ["epoch 0"]
    writer.write("RUNNING", "epoch 1", kpi={"mAP": 0.2})
    assert [e["message"] for e in read_events(path)] == ["epoch 0", "epoch 1"]
    assert latest_metric(path) == pytest.approx(0.2)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    assert read_events(tmp_path / "absent.json") == []
    garbage = tmp_path / "g.json"
    garbage.write_bytes(b"\xff\xfe not json\n[1, 2]\n\n")
    assert read_events(garbage) == []
    assert latest_metric(garbage) is None
    assert last_status(garbage) is None


def test_latest_metric_prefers_newest_event_then_alias_order(tmp_path: Path) -> None:
    events = [
        {"status": "RUNNING", "kpi": {"val_mAP": 0.1}},
        {"status": "RUNNING", "kpi": {"img_bbox_NuScenes/mAP": 0.3, "mAP": 0.2}},
        {"status": "RUNNING", "kpi": {"loss": 3.0}},
        {"status": "SUCCESS", "kpi": {}},
    ]
    assert latest_metric(events) == pytest.approx(0.2)
    assert latest_metric(events, aliases=("img_bbox_NuScenes/mAP",)) == pytest.approx(0.3)
    assert latest_metric(events[:1]) == pytest.approx(0.1)
    assert latest_metric([{"kpi": {"mAP": True}}, {"kpi": "x"}]) is None


def test_nan_is_written_as_null_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    writer = StatusWriter(path)
    writer.write("RUNNING", kpi={"val_mAP": 0.4})
    writer.write("RUNNING", kpi={"val_mAP": float("nan")})
    json.loads(path.read_text().splitlines()[-1])  # strict JSON (no NaN token)
    assert "NaN" not in path.read_text()
    assert latest_metric(path) == pytest.approx(0.4)


def _hammer(path: str, worker: int) -> None:
    writer = StatusWriter(path)
    for i in range(50):
        writer.write("RUNNING", f"w{worker} #{i}", kpi={"mAP": i / 100}, categorical={"pad": "x" * 2000})


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert len({json.loads(line)["message"] for line in lines}) == 200
