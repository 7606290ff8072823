"""loftr-kd-demo: headless run on a real video, key handling, end of video and bad sources."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.cli.demo import DemoApp, main
from loftr_kd.matcher import OpenCVMatcher
from loftr_kd.models.student import build_student, save_student

W, H, FRAMES = 320, 240, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A photo panning 4 px per frame, written with cv2.VideoWriter (mp4v)."""
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    photo = cv2.resize(skdata.coffee()[:, :, ::-1], (W + 4 * FRAMES, H + 20), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.ascontiguousarray(photo[10 : 10 + H, 4 * i : 4 * i + W]))
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    n, size = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        n, size = n + 1, frame.shape[:2]
    capture.release()
    return n, size


@pytest.mark.parametrize("backend", ["torch", "orb"])
def test_headless_demo_writes_video_and_timing(video, tmp_path, backend):
    argv = [
        "--source",
        str(video),
        "--headless",
        "--out",
        str(tmp_path / "result.mp4"),
        "--backend",
        backend,
        "--threads",
        "1",
    ]
    if backend == "torch":
        torch.manual_seed(0)
        weights = save_student(
            build_student(input_height=H, input_width=W, match_threshold=0.0), tmp_path / "s.pt"
        )
        argv += ["--weights", str(weights)]
    assert main(argv) == 0  # the video simply ends: no crash
    n, size = count_frames(tmp_path / "result.mp4")
    assert n == FRAMES and size == (H, 2 * W)  # reference | live, side by side
    with (tmp_path / "result.timing.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert all(float(r["match_ms"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "result.timing.json").read_text())
    assert summary["frames"] == FRAMES and summary["fps"] > 0 and summary["backend"] == backend


def test_max_frames_and_reference_frame(video, tmp_path, capsys):
    out = tmp_path / "short.mp4"
    argv = ["--source", str(video), "--headless", "--out", str(out), "--backend", "orb"]
    assert main([*argv, "--max-frames", "5", "--reference-frame", "3"]) == 0
    assert count_frames(out)[0] == 5
    assert "replacing" not in capsys.readouterr().out
    assert main([*argv, "--max-frames", "3"]) == 0  # its own outputs: replaced, and said so
    assert count_frames(out)[0] == 3 and "replacing the outputs of an earlier run" in capsys.readouterr().out


def test_keys_set_reference_snapshot_and_quit():
    frames = [np.roll(cv2.resize(skdata.astronaut()[:, :, ::-1], (W, H)), 6 * i, axis=1) for i in range(3)]
    app = DemoApp(OpenCVMatcher("orb"))
    app.step(frames[0])  # the first frame becomes the reference
    assert np.array_equal(app.reference, frames[0])
    app.step(frames[2])
    shift = np.median(app.last[1]["keypoints1"] - app.last[1]["keypoints0"], axis=0)
    assert shift[0] == pytest.approx(12, abs=1)
    assert app.handle_key(ord("p")) and app.frozen is not None  # snapshot with numbered matches
    assert app.frozen.shape == (H, 2 * W, 3)
    assert app.handle_key(ord("p")) and app.frozen is None  # resume
    assert app.handle_key(ord("s"))
    assert np.array_equal(app.reference, frames[2])  # the live frame is the new reference
    app.step(frames[2])
    shift = np.median(app.last[1]["keypoints1"] - app.last[1]["keypoints0"], axis=0)
    assert np.allclose(shift, 0, atol=0.5)
    assert not app.handle_key(ord("q"))


def test_bad_sources_are_clear(tmp_path, capsys):
    out = ["--headless", "--out", str(tmp_path / "o.mp4"), "--backend", "orb"]
    assert main(["--source", str(tmp_path / "missing.mp4"), *out]) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert main(["--source", str(broken), *out]) == 2
    assert "cannot open" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", str(broken), "--headless"])  # --headless needs --out


def test_frames_too_small_to_match_name_the_video(tmp_path, capsys):
    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (8, 8))
    for i in range(3):
        writer.write(np.full((8, 8, 3), 40 * i, np.uint8))
    writer.release()
    assert main(["--source", str(tiny), "--headless", "--out", str(tmp_path / "o.mp4")]) == 2
    assert (
        f"{tiny}: frames cannot be matched: reference of 8x8 pixels is too small" in capsys.readouterr().err
    )


def test_frame_options_out_of_range_are_one_line(video, tmp_path, capsys):
    """--max-frames -3 processed one frame; a reference frame past the end blamed the video."""
    out = ["--headless", "--out", str(tmp_path / "o.mp4"), "--backend", "orb"]
    with pytest.raises(SystemExit):
        main(["--source", str(video), "--max-frames", "-3", *out])
    assert "argument --max-frames: -3 is not >= 0" in capsys.readouterr().err
    assert main(["--source", str(video), "--reference-frame", "99", *out]) == 2
    assert "--reference-frame 99 is past the end of" in capsys.readouterr().err


def test_window_loop_with_scripted_keys(video, tmp_path, monkeypatch):
    """The window loop, with the window calls replaced: p freezes (snapshot saved), p resumes, q quits."""
    keys = iter([-1, ord("p"), -1, ord("p"), ord("s"), -1, ord("q")])
    shown = []
    monkeypatch.setenv("DISPLAY", "remote-host:0")  # taken on trust; the window calls below need none
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append(image.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    assert main(["--source", str(video), "--backend", "orb", "--snapshots", str(tmp_path / "snaps")]) == 0
    assert len(shown) == 7  # one frame per key poll, the frozen one shown twice
    assert len(list((tmp_path / "snaps").glob("snapshot_*.png"))) == 1


def test_a_window_without_a_display_is_refused_in_one_line(video, monkeypatch, capsys):
    """Without --headless on a Linux machine with no display, OpenCV's window would abort the process
    (rc 134, a Qt message, no hint): the demo refuses first and names --headless."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["--source", str(video), "--backend", "orb"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, no usage block
    assert line.startswith("loftr-kd-demo: error: no display to open the demo's window on")


def test_a_stale_display_is_refused_in_one_line(video, tmp_path, monkeypatch, capsys):
    """DISPLAY set to a local X server that is not there (ssh without forwarding, a closed session): Qt
    aborted the process (rc 134) after the model was built."""
    number = next(n for n in range(90, 1000) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.setenv("DISPLAY", f":{number}")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["--source", str(video), "--backend", "orb"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"DISPLAY=:{number}, but no X server listens at /tmp/.X11-unix/X{number}" in line
    assert "--headless --out" in line


def test_an_x_server_on_the_abstract_socket_is_a_display(monkeypatch):
    """Xorg and Xvfb also listen on @/tmp/.X11-unix/X<n>: a container on the host's network without the
    /tmp/.X11-unix mount has a working display."""
    import socket

    from loftr_kd.cli.demo import missing_display

    number = next(n for n in range(900, 2000) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.setenv("DISPLAY", f":{number}")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "no X server listens" in missing_display()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:  # a listening X-like socket
        server.bind(f"\0/tmp/.X11-unix/X{number}")
        server.listen(1)
        assert missing_display() is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--headless", "--out", "x.png"],
            r"--out x.png: the annotated video is written with the mp4v codec",
        ),
        (["--headless", "--out", "x.webm"], r"into a .mp4, .m4v, .avi, .mkv, .mov file \(got .webm\)"),
        (["--out", "x.mp4"], r"--out writes the annotated video of a --headless run"),  # was ignored
    ],
)
def test_outputs_the_demo_cannot_write_are_refused_before_any_work(video, argv, message, capsys):
    """--out x.png wrote one picture and said "wrote x.png"; --out without --headless wrote nothing."""
    with pytest.raises(SystemExit):
        main(["--source", str(video), "--backend", "orb", *argv])
    assert re.search(message, capsys.readouterr().err)


def test_a_camera_index_beyond_any_camera_is_one_line(capsys):
    assert main(["--source", "99999999999999999999", "--headless", "--out", "o.mp4"]) == 2
    assert "camera index 99999999999999999999 is not a camera" in capsys.readouterr().err


def test_directory_source_and_out_over_the_source_are_refused(video, tmp_path, capsys):
    out = ["--headless", "--backend", "orb"]
    assert main(["--source", str(tmp_path), "--out", str(tmp_path / "o.mp4"), *out]) == 2
    assert "is a directory, not a video file" in capsys.readouterr().err
    before = Path(video).read_bytes()
    with pytest.raises(SystemExit):
        main(["--source", str(video), "--out", str(video), *out])
    assert "would overwrite the source video" in capsys.readouterr().err
    assert Path(video).read_bytes() == before


def test_the_student_encodes_the_reference_once(tmp_path):
    """Each frame costs its own encoding and the matching: the reference is encoded when it is set (the
    first frame, then the s key), never again per frame, and the matches are the whole pair's."""
    from loftr_kd.matcher import Matcher

    torch.manual_seed(0)
    weights = save_student(
        build_student(input_height=H, input_width=W, match_threshold=0.0), tmp_path / "s.pt"
    )
    matcher = Matcher(weights, backend="torch")
    encoded = []  # (name, image) of every encoding
    encode = matcher.encode
    matcher.encode = lambda image, **kwargs: (
        encoded.append((kwargs.get("name"), image)) or encode(image, **kwargs)
    )
    frames = [np.roll(cv2.resize(skdata.astronaut()[:, :, ::-1], (W, H)), 6 * i, axis=1) for i in range(3)]
    app = DemoApp(matcher)
    for frame in frames:
        app.step(frame)
    assert [name for name, _ in encoded] == ["reference", "image1", "image1", "image1"]
    assert np.array_equal(encoded[0][1], frames[0]) and app.reference_features is not None
    whole = matcher(frames[0], frames[2])
    np.testing.assert_allclose(app.last[1]["keypoints1"], whole["keypoints1"], atol=1e-3)
    assert (
        app.handle_key(ord("s"))
        and encoded[-1][0] == "reference"
        and np.array_equal(encoded[-1][1], frames[2])
    )
    assert len(app.timings) == 3


@pytest.mark.parametrize(("name", "status", "how"), [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_a_headless_run_stopped_by_a_signal_keeps_its_frames(tmp_path, name, status, how):
    """Ctrl-C threw the annotated video and its timing away without a word; SIGTERM left a hidden,
    unplayable temporary file. Both now finish the video with the frames processed so far."""
    import signal
    import subprocess

    source = tmp_path / "long.avi"  # long enough to be running still when the signal comes
    photo = cv2.resize(skdata.coffee()[:, :, ::-1], (W, H), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    assert writer.isOpened()
    for i in range(3000):
        writer.write(np.roll(photo, 3 * (i % 20), axis=1))
    writer.release()
    out = tmp_path / "out" / "long.mp4"
    command = [sys.executable, "-m", "loftr_kd.cli.demo", "--source", str(source), "--headless"]
    command += ["--out", str(out), "--backend", "orb", "--threads", "1"]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # a background job inherits an ignored SIGINT: give the child Python's own Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        progress = child.stdout.readline()  # "frame 50 of 3000, ... FPS": the video is being written
        assert progress.startswith("frame 50 of 3000"), progress + child.stderr.read()
        child.send_signal(getattr(signal, name))
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == status, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"loftr-kd-demo: stopped by {how} after ") and "processed so far are in" in line
    frames, size = count_frames(out)
    assert 50 <= frames < 3000 and size == (H, 2 * W)
    summary = json.loads((tmp_path / "out" / "long.timing.json").read_text())
    assert summary["interrupted"] is True and summary["ended_early"] is False
    assert summary["frames"] == frames
    with (tmp_path / "out" / "long.timing.csv").open() as f:
        assert len(list(csv.DictReader(f))) == frames
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".long.mp4")) == []
