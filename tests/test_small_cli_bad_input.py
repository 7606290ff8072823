"""Bad input to the small commands (loftr-kd-homographies, -bench-loader, -profile, -photos): one line on
stderr naming the option or file, exit status 2, no traceback, nothing of the user's replaced; and a
successful loftr-kd-profile run exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from loftr_kd.cli import bench_loader, homography, photos, profile_students


def write_photo(path: Path, height: int = 120, width: int = 160, seed: int = 0) -> Path:
    """A textured grey image (blurred noise): something the homography pairs accept."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random((height, width)) * 255).astype(np.uint8), (0, 0), 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], program: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{program}: error: "), err
    return lines[0]


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    write_photo(tmp_path / "photos" / "a.png")
    return tmp_path / "photos"


# ------------------------------------------------------------------------------------ loftr-kd-homographies
SMALL = ["--height", "48", "--width", "64"]


@pytest.mark.parametrize(
    ("make", "extra", "named"),
    [
        (lambda t: t / "missing", [], "--images"),
        (lambda t: (t / "file.png").write_text("x") and t / "file.png", [], "--images"),
        (lambda t: (t / "empty").mkdir() or t / "empty", [], "--images"),
        (
            lambda t: (t / "text").mkdir() or (t / "text" / "a.txt").write_text("x") and t / "text",
            [],
            "--images",
        ),
        (lambda t: (t / "bad").mkdir() or (t / "bad" / "a.png").write_text("x") and t / "bad", [], "a.png"),
        (None, ["--height", "0"], "--height"),
        (None, ["--height", "8", "--width", "8"], "--height"),
        (None, ["--width", "-5"], "--width"),
        (None, ["--pairs", "0"], "--pairs"),
        (None, ["--pairs", "-2"], "--pairs"),
    ],
)
def test_homographies_bad_input_is_one_line(tmp_path, photo_dir, capsys, make, extra, named):
    images = make(tmp_path) if make else photo_dir
    out = tmp_path / "out"
    status = homography.main(["--images", str(images), "--out", str(out), *SMALL, "--pairs", "1", *extra])
    assert status == 2
    assert named in one_error_line(capsys, "loftr-kd-homographies")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_homographies_out_inside_images_is_refused(tmp_path, photo_dir, capsys):
    """A rerun read the first run's warped pairs back as photos (7 'photos' from 3)."""
    out = photo_dir / "pairs"
    assert homography.main(["--images", str(photo_dir), "--out", str(out), *SMALL, "--pairs", "1"]) == 2
    assert "is inside --images" in one_error_line(capsys, "loftr-kd-homographies") and not out.exists()


def test_homographies_out_that_is_a_file_is_refused_and_kept(tmp_path, photo_dir, capsys):
    out = tmp_path / "pairs.txt"
    out.write_text("mine")
    assert homography.main(["--images", str(photo_dir), "--out", str(out), *SMALL, "--pairs", "1"]) == 2
    assert "--out" in one_error_line(capsys, "loftr-kd-homographies")
    assert out.read_text() == "mine"


def test_homographies_rerun_replaces_only_its_own_unchanged_pairs(tmp_path, photo_dir, capsys):
    out = tmp_path / "out"
    args = ["--images", str(photo_dir), "--out", str(out), *SMALL]
    assert homography.main([*args, "--pairs", "2"]) == 0
    first = (out / "h_0001" / "H_1_2").read_bytes()
    capsys.readouterr()
    # Another seed over its own pairs: replaced, and said so; a pair beyond --pairs is removed.
    assert homography.main([*args, "--pairs", "1", "--seed", "7"]) == 0
    said = capsys.readouterr().out
    assert "replaced 1 earlier pairs" in said and "removed 1 earlier pairs" in said
    assert sorted(p.name for p in out.iterdir()) == ["h_0000"]
    # An edited pair is the user's now: refused, untouched.
    edited = out / "h_0000" / "H_1_2"
    edited.write_text("1 0 0\n0 1 0\n0 0 1\n")
    assert homography.main([*args, "--pairs", "2"]) == 2
    line = one_error_line(capsys, "loftr-kd-homographies")
    assert "--out" in line and "h_0000" in line and "--force" in line
    assert edited.read_text() == "1 0 0\n0 1 0\n0 0 1\n" and not (out / "h_0001").exists()
    # So is another program's file; --force replaces the pairs' files and leaves it alone.
    (out / "notes.txt").write_text("mine")
    assert homography.main([*args, "--pairs", "2"]) == 2
    assert "notes.txt" in one_error_line(capsys, "loftr-kd-homographies")
    assert homography.main([*args, "--pairs", "2", "--force"]) == 0
    assert "left alone: notes.txt" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "h_0001" / "H_1_2").read_bytes() == first  # seed 2026 again
    assert np.isfinite(np.loadtxt(edited)).all() and not np.allclose(np.loadtxt(edited), np.eye(3))


def test_homographies_as_a_process_exits_2_and_shows_the_traceback_only_when_asked(tmp_path, photo_dir):
    command = [sys.executable, "-m", "loftr_kd.cli.homography", "--images", str(photo_dir)]
    command += ["--out", str(tmp_path / "out"), "--pairs", "0"]
    env = {**os.environ, "LOFTR_KD_DEBUG": "0"}
    quiet = subprocess.run(command, capture_output=True, text=True, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        "loftr-kd-homographies: error: --pairs must be at least 1, got 0"
    ]
    loud = subprocess.run(command, capture_output=True, text=True, env={**env, "LOFTR_KD_DEBUG": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr


# ------------------------------------------------------------------------------------ loftr-kd-bench-loader
@pytest.mark.parametrize(
    ("make", "extra", "named"),
    [
        (lambda t: t / "missing", [], "--root"),
        (lambda t: (t / "file").write_text("x") and t / "file", [], "--root"),
        (lambda t: (t / "empty").mkdir() or t / "empty", [], "--root"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--batch-size", "0"], "--batch-size"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--pairs", "0"], "--pairs"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--pairs", "-3"], "--pairs"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--num-workers", "-1"], "--num-workers"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--height", "0"], "--height"),
        (lambda t: (t / "empty").mkdir() or t / "empty", ["--torch-threads", "-1"], "--torch-threads"),
    ],
)
def test_bench_loader_bad_input_is_one_line(tmp_path, capsys, make, extra, named):
    root = make(tmp_path)
    assert bench_loader.main(["--root", str(root), "--num-workers", "0", *extra]) == 2
    assert named in one_error_line(capsys, "loftr-kd-bench-loader")


def test_bench_loader_make_toy_never_writes_into_a_users_folder(tmp_path, capsys):
    (tmp_path / "training_list.txt").write_text("mine\n")
    assert bench_loader.main(["--root", str(tmp_path), "--make-toy", "--num-workers", "0"]) == 2
    line = one_error_line(capsys, "loftr-kd-bench-loader")
    assert "--root" in line and "training_list.txt" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_list.txt"]
    assert (tmp_path / "training_list.txt").read_text() == "mine\n"


# ------------------------------------------------------------------------------------ loftr-kd-profile
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--repeats", "0"], "--repeats"),
        (["--repeats", "-1"], "--repeats"),
        (["--threads", "0"], "--threads"),
        (["--sizes", "64"], "--sizes"),
        (["--sizes", "0x96"], "--sizes"),
        (["--sizes", "8x8"], "--sizes 8x8"),
        (["--presets", "no_such_preset"], "--presets no_such_preset"),
        (["--presets", "fast+initial_dim"], "--presets"),
    ],
)
def test_profile_bad_input_is_one_line(capsys, extra, named):
    argv = ["--presets", "fast", "--sizes", "64x96", "--repeats", "1", "--threads", "1", *extra]
    assert profile_students.main(argv) == 2
    assert named in one_error_line(capsys, "loftr-kd-profile")


def test_profile_json_never_replaces_a_users_file(tmp_path, capsys):
    mine = tmp_path / "results.json"
    mine.write_text("mine")
    argv = ["--presets", "fast", "--sizes", "64x96", "--repeats", "1", "--json", str(mine)]
    assert profile_students.main(argv) == 2
    assert "--json" in one_error_line(capsys, "loftr-kd-profile")
    assert mine.read_text() == "mine"
    assert profile_students.main(["--presets", "fast", "--json", str(tmp_path)]) == 2
    assert "--json" in one_error_line(capsys, "loftr-kd-profile")


def test_a_successful_profile_run_exits_0(tmp_path):
    """The console script does ``sys.exit(main())``: a dict there was exit status 1 and a dump on stderr."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "profile.json"
    command = [sys.executable, "-m", "loftr_kd.cli.profile_students", "--presets", "fast"]
    command += ["--sizes", "64x96", "--repeats", "1", "--threads", "1", "--json", str(out)]
    for _ in range(2):  # the second run replaces its own JSON
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "{'machine'" not in done.stderr and "| fast | 64x96 | full |" in done.stdout
    assert '"rows"' in out.read_text()


# ------------------------------------------------------------------------------------ loftr-kd-photos
def test_photos_bad_input_is_one_line(tmp_path, capsys):
    assert photos.main(["--set", "heldout", "--out", str(tmp_path / "a"), "--max-side", "0"]) == 2
    assert "--max-side" in one_error_line(capsys, "loftr-kd-photos")
    assert not (tmp_path / "a").exists()
    file = tmp_path / "file"
    file.write_text("mine")
    for out in (file, file / "below"):
        assert photos.main(["--set", "heldout", "--out", str(out), "--max-side", "64"]) == 2
        assert "--out" in one_error_line(capsys, "loftr-kd-photos")
    assert file.read_text() == "mine"


def test_photos_never_replace_a_users_file_without_force(tmp_path, capsys):
    from loftr_kd.data.photos import HELDOUT

    if any(p.locate() is None for p in HELDOUT):
        pytest.skip("the held-out photos are not installed")
    name = HELDOUT[0].name
    mine = write_photo(tmp_path / f"{name}.png", 40, 40)
    data = mine.read_bytes()
    argv = ["--set", "heldout", "--out", str(tmp_path), "--max-side", "64"]
    assert photos.main(argv) == 2
    assert f"{name}.png" in one_error_line(capsys, "loftr-kd-photos")
    assert mine.read_bytes() == data and not (tmp_path / "photos.json").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert photos.main([*argv, "--force"]) == 0
    assert mine.read_bytes() != data and (tmp_path / "notes.txt").read_text() == "mine"
    assert "notes.txt" in capsys.readouterr().err  # said to be left alone
    assert photos.main(argv) == 0  # its own files now: replaced without --force, and said so
    assert "replaced" in capsys.readouterr().out
