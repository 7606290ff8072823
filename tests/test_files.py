"""Atomic writes (loftr_kd.files): all or nothing, usual permissions, JSON-safe values."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from loftr_kd.files import replacing, to_jsonable, torch_save, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_text(tmp_path / "a" / "report.md", "old\n")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        for path in (write_text(tmp_path / "t.txt", "x"), torch_save({"a": 1}, tmp_path / "c.pt")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(mask)


def test_json_holds_what_reports_contain(tmp_path: Path) -> None:
    @dataclass
    class Check:
        value: float

        @property
        def ok(self) -> bool:
            return self.value < 1

    payload = {"check": Check(0.5), "inf": math.inf, "arr": np.arange(3), "n": np.float32(2.5), 1: Path("p")}
    assert to_jsonable(payload) == {
        "check": {"value": 0.5, "ok": True},
        "inf": None,
        "arr": [0, 1, 2],
        "n": 2.5,
        "1": "p",
    }
    assert json.loads(write_json(tmp_path / "r.json", payload).read_text())["inf"] is None
