"""Restricted unpickling: arrays and containers load, code does not run."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sparse4d.data.safe_pickle import atomic_dump, safe_load, safe_loads
from sparse4d.errors import DataError


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_plain_infos_round_trip(tmp_path: Path) -> None:
    infos = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), ("x.h5", "k"), {1, 2}, np.float64(2.5)],
             "names": np.array(["person", "gr1_t2"]), "flags": np.zeros(3, bool), "n": None}
    atomic_dump(infos, tmp_path / "infos.pkl")
    loaded = safe_load(tmp_path / "infos.pkl")
    np.testing.assert_array_equal(loaded["a"][0], infos["a"][0])
    assert loaded["a"][1:] == infos["a"][1:] and list(loaded["names"]) == ["person", "gr1_t2"]
    for protocol in (2, 5):
        assert safe_loads(pickle.dumps(infos, protocol=protocol))["a"][2] == {1, 2}


def test_code_carrying_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"infos": [_Payload(marker)]}))
    with pytest.raises(DataError, match=r"hostile\.pkl: refused to load global '(posix|os)\.system'"):
        safe_load(hostile)
    assert not marker.exists()
    with pytest.raises(DataError, match="refused"):
        safe_loads(pickle.dumps(Path("/etc")))
    with pytest.raises(DataError, match="not a readable annotation pickle"):
        safe_loads(b"\x80\x04garbage")
