"""Instance bank: carrying instances and the track-ID rule over a 3-frame sequence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.errors import DataError, InputFileError
from sparse4d.model.instance_bank import InstanceBank, InstanceBankState, load_anchors, move_by_velocity

from .model_helpers import random_anchors

THRESHOLD = 0.5


def step(bank: InstanceBank, state: InstanceBankState, conf: list[float], first: bool, ts: float):
    confidence = torch.tensor([conf])
    first_frame = torch.tensor([first])
    temporal = state.valid & ~first_frame
    feature = torch.arange(len(conf), dtype=torch.float32)[None, :, None].expand(1, -1, 4) + 100 * ts
    anchor = torch.zeros(1, len(conf), 11)
    ids, nxt = bank.assign_track_ids(state, confidence, temporal, first_frame, THRESHOLD)
    new_state = bank.next_state(state, feature, anchor, confidence, ids, nxt, temporal, torch.tensor([ts], dtype=torch.float64))
    return ids[0].tolist(), new_state


def test_track_ids_over_three_frames() -> None:
    bank = InstanceBank(random_anchors(6), embed_dims=4, num_temp_instances=2, confidence_decay=0.5)
    state = InstanceBankState.empty(1, 2, 4)
    # frame 1: queries 1 and 3 are confident -> new ids 0 and 1 in query order
    ids1, state = step(bank, state, [0.1, 0.9, 0.2, 0.8, 0.3, 0.05], True, 0.0)
    assert ids1 == [-1, 0, -1, 1, -1, -1]
    # carried: the two most confident (queries 1 and 3) with their ids, ranked by confidence
    assert state.track_ids[0].tolist() == [0, 1] and torch.allclose(state.confidences[0], torch.tensor([0.9, 0.8]))
    # frame 2: slots 0,1 are the carried instances and keep ids 0,1 even when their confidence dropped;
    # query 4 becomes confident -> the next id, 2
    ids2, state = step(bank, state, [0.3, 0.95, 0.1, 0.2, 0.7, 0.1], False, 0.1)
    assert ids2 == [0, 1, -1, -1, 2, -1]
    # carried ranking: slot 0 decays to max(0.9*0.5, 0.3)=0.45, slot 1 max(0.8*0.5, .95)=0.95, query 4 0.7
    assert state.track_ids[0].tolist() == [1, 2]
    assert int(state.next_track_id[0]) == 3
    # frame 3 starts a new sequence: nothing inherited, ids restart at 0
    ids3, state = step(bank, state, [0.6, 0.1, 0.1, 0.1, 0.9, 0.1], True, 5.0)
    assert ids3 == [0, -1, -1, -1, 1, -1]


def test_merge_carried_puts_history_first_only_where_valid() -> None:
    bank = InstanceBank(random_anchors(4), embed_dims=2, num_temp_instances=2, confidence_decay=0.6)
    feature = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2).repeat(2, 1, 1)
    anchor = torch.zeros(2, 4, 11)
    cls = torch.tensor([[[0.0], [3.0], [1.0], [2.0]]]).repeat(2, 1, 1)
    carried_f = torch.full((2, 2, 2), -1.0)
    carried_a = torch.ones(2, 2, 11)
    f, a = bank.merge_carried(feature, anchor, cls, carried_f, carried_a, torch.tensor([True, False]))
    assert f[0, :2].eq(-1).all() and f[0, 2:].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # top-2 current: queries 1 and 3
    assert torch.equal(f[1], feature[1]) and torch.equal(a[1], anchor[1])


def test_velocity_moves_carried_anchors() -> None:
    a = torch.zeros(1, 1, 11)
    a[0, 0, 8:11] = torch.tensor([1.0, -2.0, 0.0])
    moved = move_by_velocity(a, torch.tensor([0.5]))
    assert moved[0, 0, :3].tolist() == [0.5, -1.0, 0.0]


def test_anchor_file_errors(tmp_path) -> None:
    with pytest.raises(InputFileError, match="instance_bank.anchor"):
        load_anchors(str(tmp_path / "missing.npy"), 10)
    with pytest.raises(InputFileError):
        load_anchors("", 10)
    short = tmp_path / "short.npy"
    np.save(short, random_anchors(5))
    with pytest.raises(DataError, match="5 rows"):
        load_anchors(str(short), 10)
    bad_shape = tmp_path / "shape.npy"
    np.save(bad_shape, np.zeros((20, 10), dtype=np.float32))
    with pytest.raises(DataError, match="shape"):
        load_anchors(str(bad_shape), 10)
    nan = tmp_path / "nan.npy"
    arr = random_anchors(12)
    arr[3, 2] = np.nan
    np.save(nan, arr)
    with pytest.raises(DataError, match="non-finite"):
        load_anchors(str(nan), 10)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all")
    with pytest.raises(DataError):
        load_anchors(str(garbage), 10)
    good = tmp_path / "good.npy"
    np.save(good, random_anchors(12))
    assert load_anchors(str(good), 10).shape == (10, 11)
