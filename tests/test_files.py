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


def test_a_broken_link_where_a_folder_must_be_is_named(tmp_path: Path) -> None:
    from loftr_kd.files import check_folder_path

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(
        NotADirectoryError, match=r"--out .*gone/run is inside .*gone, which is a broken symbolic link"
    ):
        check_folder_path(tmp_path / "gone" / "run", "--out")
    with pytest.raises(NotADirectoryError, match="broken symbolic link"):  # the writers' own backstop
        write_text(tmp_path / "gone" / "a.txt", "x")
    assert not (tmp_path / "nowhere").exists()


def test_the_record_itself_is_never_an_output(tmp_path: Path) -> None:
    """An output named like the record was written, then overwritten by the record: a lost checkpoint."""
    from loftr_kd.files import OUTPUT_MANIFEST, OutputExistsError, check_outputs

    for force in (False, True):
        with pytest.raises(OutputExistsError, match="the name of loftr-kd's record"):
            check_outputs([tmp_path / OUTPUT_MANIFEST], force=force)


def test_commands_recording_into_one_folder_at_once_lose_no_entry(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from loftr_kd.files import is_own_output, record_outputs

    paths = [write_text(tmp_path / f"out{i}.txt", str(i)) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda path: record_outputs([path], "test"), paths))
    assert all(is_own_output(path) for path in paths)


def test_a_failed_forced_run_records_only_what_it_wrote(tmp_path: Path) -> None:
    """A user's file that a --force run did not reach (it failed first) stays the user's: a later run
    without --force must still refuse it."""
    from loftr_kd.cli.photos import write_outputs
    from loftr_kd.files import OutputExistsError, check_outputs, is_own_output

    written, mine = tmp_path / "a.png", tmp_path / "photos.json"
    mine.write_text('{"my": "notes"}')

    def work() -> list[dict]:
        write_text(written, "a")
        raise RuntimeError("stopped half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_outputs(tmp_path, [written, mine], [], True, work)
    assert is_own_output(written) and not is_own_output(mine)
    with pytest.raises(OutputExistsError, match="photos.json already exists and was not written by loftr-kd"):
        check_outputs([written, mine])
