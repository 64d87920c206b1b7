"""The restricted pickle of load_pkl/store_pkl: the original's whitelist, nothing else ever runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from kachery_p2p.client.safe_pickle import UnsafePickleError, safe_dumps, safe_loads
from kachery_p2p.errors import UsageError


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Evil(marker))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle .*system"):
        safe_loads(data)
    assert not marker.exists()
    # Hidden inside allowed containers, still refused.
    with pytest.raises(UnsafePickleError):
        safe_loads(pickle.dumps({"a": [1, (_Evil(marker),)]}))
    assert not marker.exists()


def test_other_globals_are_refused() -> None:
    for value in (Path("/x"), pickle.Pickler, UsageError("x")):
        with pytest.raises(UnsafePickleError):
            safe_loads(pickle.dumps(value))


def test_round_trip_of_plain_data_and_numpy() -> None:
    value = {
        "ints": [1, 2, 3],
        "nested": {"t": (1.5, "x", None, True)},
        "range": range(3, 9, 2),
        "complex": 1 + 2j,
        "slice": slice(1, 5, 2),
        "array": np.arange(12, dtype=np.int16).reshape(3, 4),
        "scalar": np.float32(2.5),
    }
    back = safe_loads(safe_dumps(value))
    assert back["ints"] == [1, 2, 3] and back["nested"] == {"t": (1.5, "x", None, True)}
    assert back["range"] == range(3, 9, 2) and back["complex"] == 1 + 2j and back["slice"] == slice(1, 5, 2)
    assert back["array"].dtype == np.int16 and (back["array"] == value["array"]).all()
    assert back["scalar"] == np.float32(2.5) and isinstance(back["scalar"], np.float32)


def test_store_side_refuses_what_load_would_refuse() -> None:
    with pytest.raises(UsageError, match="not safe for pickling"):
        safe_dumps({"x": Path("/etc")})
    with pytest.raises(UsageError, match="dtype object"):
        safe_dumps(np.array([{"a": 1}], dtype=object))


def test_broken_pickle_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="not a valid pickle"):
        safe_loads(b"\x80\x04garbage")
