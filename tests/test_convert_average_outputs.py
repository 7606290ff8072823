"""``loftr-kd-convert`` and ``loftr-kd-average`` never replace a file loftr-kd did not write (a user's
checkpoint, a text file, an image) without ``--force``; they replace their own earlier, unchanged output;
a folder, or a file where a folder should be, as the destination is one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loftr_kd.cli.average import main as average
from loftr_kd.cli.convert import main as convert
from loftr_kd.files import OUTPUT_MANIFEST, is_own_output
from loftr_kd.models.student import build_student, load_student, save_student

USER_BYTES = b"my notes: do not lose them\n"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """One-line errors, not the traceback ``LOFTR_KD_DEBUG=1`` asks for."""
    monkeypatch.delenv("LOFTR_KD_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small students of one architecture, written by save_student (not recorded as outputs)."""
    folder = tmp_path_factory.mktemp("sources")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_student(build_student(input_height=128, input_width=160), folder / f"s{seed}.pt"))
    return paths


def _convert(sources: list[Path], dest: Path, *extra: str) -> int:
    return convert([str(sources[0]), str(dest), *extra])


def _average(sources: list[Path], dest: Path, *extra: str) -> int:
    return average([*map(str, sources), "--out", str(dest), *extra])


TOOLS = {"convert": _convert, "average": _average}


def _one_line(capsys: pytest.CaptureFixture, program: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _users_file(path: Path) -> bytes:
    """A user's own file at ``path`` (a torch.save checkpoint for ``.pt``, else bytes); not a loftr-kd output."""
    if path.suffix == ".pt":
        torch.save({"mine": torch.arange(5)}, path)
    else:
        path.write_bytes(USER_BYTES)
    return path.read_bytes()


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("user_file", ["notes.txt", "mine.pt", "photo.png"])
def test_a_users_file_is_refused_unchanged_and_force_replaces_it(
    tool: str, user_file: str, sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    program = f"loftr-kd-{tool}"
    dest = tmp_path / user_file
    before = _users_file(dest)
    assert TOOLS[tool](sources, dest) == 2
    line = _one_line(capsys, program)
    assert str(dest) in line and "--force" in line and "not written by loftr-kd" in line
    assert dest.read_bytes() == before
    assert not (tmp_path / OUTPUT_MANIFEST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [user_file]  # no temporary file left either

    assert TOOLS[tool](sources, dest, "--force") == 0
    out = capsys.readouterr().out
    assert f"replaced {dest}" in out and "--force" in out and f"wrote {dest}" in out
    assert load_student(dest).config.input_height == 128
    assert is_own_output(dest)  # recorded: a rerun may replace it
    manifest = json.loads((tmp_path / OUTPUT_MANIFEST).read_text())
    assert manifest["files"][user_file]["command"] == program


@pytest.mark.parametrize("tool", TOOLS)
def test_a_rerun_replaces_its_own_output_but_not_an_edited_one(
    tool: str, sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dest = tmp_path / "sub" / "student.pt"
    assert TOOLS[tool](sources, dest) == 0
    out = capsys.readouterr().out
    assert "replaced" not in out and f"wrote {dest}" in out
    assert is_own_output(dest)

    assert TOOLS[tool](sources, dest) == 0  # the same command again: its own, unchanged output
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("replaced")]) == 1
    assert f"replaced {dest}" in out and "earlier output of loftr-kd" in out

    # the other command may replace it too: both record into the folder's manifest
    other = "average" if tool == "convert" else "convert"
    assert TOOLS[other](sources, dest) == 0
    assert f"replaced {dest}" in capsys.readouterr().out
    assert is_own_output(dest)

    with open(dest, "ab") as f:  # edited since: no longer loftr-kd's to replace
        f.write(b"edit")
    edited = dest.read_bytes()
    assert TOOLS[tool](sources, dest) == 2
    line = _one_line(capsys, f"loftr-kd-{tool}")
    assert str(dest) in line and "--force" in line
    assert dest.read_bytes() == edited


@pytest.mark.parametrize("tool", TOOLS)
def test_a_folder_or_a_file_as_folder_is_one_line(
    tool: str, sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    program = f"loftr-kd-{tool}"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_bytes(USER_BYTES)
    for extra in ((), ("--force",)):
        assert TOOLS[tool](sources, folder, *extra) == 2
        line = _one_line(capsys, program)
        assert str(folder) in line and "folder" in line
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and (
        folder / "keep.txt"
    ).read_bytes() == USER_BYTES

    a_file = tmp_path / "notes.txt"
    a_file.write_bytes(USER_BYTES)
    assert TOOLS[tool](sources, a_file / "student.pt", "--force") == 2
    line = _one_line(capsys, program)
    assert str(a_file) in line and "not a folder" in line
    assert a_file.read_bytes() == USER_BYTES


@pytest.mark.parametrize("tool", TOOLS)
def test_an_input_is_never_the_output_even_with_force(
    tool: str, sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = sources[0].read_bytes()
    link = tmp_path / "link.pt"
    link.hardlink_to(sources[0])  # another name for the input
    for dest in (sources[0], link):
        assert TOOLS[tool](sources, dest, "--force") == 2
        assert "refusing to write over" in _one_line(capsys, f"loftr-kd-{tool}")
    assert sources[0].read_bytes() == before


def test_the_console_command_gives_one_line_for_a_folder(sources: list[Path], tmp_path: Path) -> None:
    """The real process: exit status 2 and one line on stderr, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOFTR_KD_DEBUG", "HYDRA_FULL_ERROR")}
    result = subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.convert", str(sources[0]), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip() == f"loftr-kd-convert: error: output {tmp_path} is a folder; choose a file path"
    )
    assert result.stdout == ""


def test_a_size_off_the_stride_names_the_options(tmp_path, capsys):
    source = save_student(build_student(input_height=64, input_width=96), tmp_path / "s.pt")
    assert convert([str(source), str(tmp_path / "d.pt"), "--height", "100"]) == 2
    assert "--height 100: input_height=100 must be a positive multiple" in capsys.readouterr().err
    assert (
        convert([str(source), str(tmp_path / "d.pt"), "--height", "0"]) == 2
    )  # was "error: : input_height=0"
    assert "error: --height 0: input_height=0 must be a positive multiple" in capsys.readouterr().err
    # one cell a side: written, then refused by the Matcher ("size 16 must be between 32 and ...")
    assert convert([str(source), str(tmp_path / "d.pt"), "--height", "16", "--width", "16"]) == 2
    assert (
        "input size 16x16: a student matches at least two coarse cells a side (32 px"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "d.pt").exists()
