"""Safe with whatever it is given (issue 21): no code from checkpoints, no user file deleted or replaced,
every failure one clear line, never a silent wrong, empty or endless result.

Each class of bad input is tried through several doors (other commands, other file names, other kinds of
file), against the real commands and APIs: real checkpoints, real filesystems (a read-only and a full
tmpfs where the machine allows mounting one), real videos and real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.checkpoints import load_checkpoint
from loftr_kd.files import OUTPUT_MANIFEST, check_input_file
from loftr_kd.paths import WEIGHTS_DIR
from loftr_kd.rundir import CLAIM_NAME, RunDirError, claim_run_dir, read_claim

STUDENT = WEIGHTS_DIR / "student_paper.pt"
ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("LOFTR_KD_DEBUG", "HYDRA_FULL_ERROR", "LOFTR_KD_RUN_CLAIM")
}
W, H = 320, 240


def _run(*command: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
    )


def _error_lines(stderr: str, program: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{program}: error:")]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> list[str]:
    """Overrides for a tiny, exact BlendedMVS-layout data set at 320x240 (no generation at run time)."""
    from loftr_kd.data.synthetic import write_toy_dataset

    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, scenes=2, views=4, height=H, width=W)
    return [f"data.root={root}", "data.generate=null"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------------
# 1. A checkpoint never runs code
# ------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``exec``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _evil_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A real student checkpoint in every respect (Lightning layout included), plus a payload."""
    payload = torch.load(STUDENT, weights_only=True)
    checkpoint = {
        **payload,
        "state_dict": {f"student.{k}": v for k, v in payload["state_dict"].items()},
        "global_step": 4,
        "epoch": 0,
        "callbacks": {"payload": _Payload(marker)},
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    return _evil_checkpoint(tmp_path / "model.ckpt", marker, legacy=request.param == "legacy"), marker


def _refused(error: BaseException, path: Path) -> None:
    text = str(error)
    assert str(path) in text and "could run code" in text, text
    assert "\n" not in text and "weights_only=False" not in text and "corrupt" not in text


def _student_file_doors(path: Path, cache: Path, height: int, width: int) -> dict:
    """Every door that reads a student file (weights=, init_weights=, teacher=student), as calls."""
    from omegaconf import OmegaConf

    from loftr_kd.cli.evaluate import build_methods
    from loftr_kd.kornia_loftr import StudentLoFTR
    from loftr_kd.matcher import Matcher
    from loftr_kd.models.student import load_student
    from loftr_kd.teachers import build_student_teacher
    from loftr_kd.train import check_init_weights

    return {
        "load_student": lambda: load_student(path),
        "init_weights": lambda: check_init_weights(str(path)),
        "teacher=student": lambda: build_student_teacher(str(path), height, width),
        "Matcher torch": lambda: Matcher(weights=path, backend="torch"),
        "Matcher onnx": lambda: Matcher(weights=path, backend="onnx", cache_dir=cache),
        "kornia drop-in": lambda: StudentLoFTR(weights=path),
        "evaluate": lambda: build_methods(
            OmegaConf.create({"methods": {"mine": {"backend": "torch", "weights": str(path)}}})
        ),
    }


def test_every_python_door_refuses_a_checkpoint_carrying_code(evil, tmp_path):
    from loftr_kd.models.student import build_student, init_student_weights
    from loftr_kd.teachers import build_teacher
    from loftr_kd.train import resolve_resume_checkpoint

    path, marker = evil
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    doors = {
        "load_checkpoint": lambda: load_checkpoint(path),
        "init_student_weights": lambda: init_student_weights(build_student(), path),
        "resume (file)": lambda: resolve_resume_checkpoint(str(path)),
        "resume (run folder)": lambda: resolve_resume_checkpoint(str(run)),
        "teacher=loftr_outdoor": lambda: build_teacher(str(path), temp_bug_fix=False),
        **_student_file_doors(path, tmp_path / "cache", 240, 320),
    }
    for door, call in doors.items():
        with pytest.raises(ValueError) as info:  # UnsafeCheckpointError, or a door's own prefix to it
            call()
        _refused(info.value, run / "checkpoints" / "last.ckpt" if "run folder" in door else path)
        assert not marker.exists(), f"{door} ran the checkpoint's code"


@pytest.mark.parametrize(
    ("program", "args"),
    [
        ("loftr_kd.cli.train", ["debug=fast", "ckpt_path={ckpt}", "hydra.run.dir={run}"]),
        ("loftr_kd.cli.export", ["ckpt_path={ckpt}", "hydra.run.dir={run}"]),
        ("loftr_kd.cli.match", ["{image}", "{image}", "--weights", "{ckpt}", "--out", "{run}"]),
    ],
)
def test_every_command_refuses_a_checkpoint_carrying_code_in_one_line(program, args, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _evil_checkpoint(tmp_path / "last.ckpt", marker)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), cv2.resize(skdata.camera(), (W, H)))
    filled = [a.format(ckpt=ckpt, run=tmp_path / "run", image=image) for a in args]
    result = _run("-m", program, *filled)
    name = {"loftr_kd.cli.train": "loftr-kd-train", "loftr_kd.cli.export": "loftr-kd-export"}.get(
        program, "loftr-kd-match"
    )
    lines = _error_lines(result.stderr, name)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and str(ckpt) in lines[0] and "could run code" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    assert not marker.exists()


def test_lightning_checkpoints_and_shipped_weights_still_load():
    for path in (STUDENT, WEIGHTS_DIR / "student_paper_refine.pt"):
        assert "state_dict" in load_checkpoint(path)


# ------------------------------------------------------------------------------------------------------
# Non-regular files: refused at once, never read
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "fifo"])
def test_pipes_and_devices_are_refused_at_once(device, fifo, tmp_path):
    from loftr_kd.images import ImageError, read_image
    from loftr_kd.models.student import load_student

    path = fifo if device == "fifo" else Path(device)
    kind = "named pipe" if device == "fifo" else "character device"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"is a {kind}, not a regular file"):
        check_input_file(path, "image")
    with pytest.raises(ImageError, match=kind):
        read_image(path)
    with pytest.raises(ValueError, match=kind):
        load_student(path)
    assert time.perf_counter() - start < 5


def test_match_with_a_pipe_as_image_or_weights_is_one_line_not_a_hang(fifo, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), cv2.resize(skdata.camera(), (W, H)))
    for args in ([str(fifo), str(image)], [str(image), str(image), "--weights", "/dev/zero"]):
        result = _run("-m", "loftr_kd.cli.match", *args, "--out", str(tmp_path / "o"), timeout=120)
        lines = _error_lines(result.stderr, "loftr-kd-match")
        assert result.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], result.stderr


# ------------------------------------------------------------------------------------------------------
# 2. A user's files are never deleted or replaced
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    image0 = cv2.resize(skdata.astronaut()[:, :, ::-1], (W, H), interpolation=cv2.INTER_AREA)
    warp = np.array([[0.95, 0.08, 12.0], [-0.06, 1.02, -8.0], [2e-5, -1e-5, 1.0]])
    cv2.imwrite(str(root / "a.png"), image0)
    cv2.imwrite(str(root / "b.png"), cv2.warpPerspective(image0, warp, (W, H)))
    return root / "a.png", root / "b.png"


def _match(pair, *args: str) -> int:
    from loftr_kd.cli.match import main

    return main([str(pair[0]), str(pair[1]), "--backend", "sift", *args])


@pytest.mark.parametrize("name", ["homography.txt", "registered_overlay.png", "matches.json"])
def test_match_out_never_replaces_a_users_file_of_an_output_name(pair, tmp_path, capsys, name):
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    assert _match(pair, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("loftr-kd-match: error:") == 1 and name in err and "--force" in err
    assert _snapshot(out) == before
    # Other files are left alone while the run writes its outputs next to them; --force replaces.
    assert _match(pair, "--out", str(out), "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / name).read_bytes() != b"the user's own file"


def test_match_reuses_its_own_outputs_by_content_not_by_name(pair, tmp_path, capsys):
    out = tmp_path / "o"
    assert _match(pair, "--out", str(out)) == 0
    assert _match(pair, "--out", str(out)) == 0  # its own, unchanged outputs: replaced
    (out / "homography.txt").write_text("edited by the user\n")  # now the user's file
    assert _match(pair, "--out", str(out)) == 2
    assert (out / "homography.txt").read_text() == "edited by the user\n"
    manifest = json.loads((out / OUTPUT_MANIFEST).read_text())
    assert set(manifest["files"]) >= {"matches.png", "matches.json", "homography.txt"}


def test_match_json_never_replaces_a_file_it_did_not_write(pair, tmp_path, capsys):
    target = tmp_path / "keep" / "result.json"
    target.parent.mkdir()
    target.write_text('{"mine": true}')
    assert _match(pair, "--out", str(tmp_path / "o"), "--json", str(target)) == 2
    assert "result.json" in capsys.readouterr().err and target.read_text() == '{"mine": true}'
    fresh = tmp_path / "new.json"
    assert _match(pair, "--out", str(tmp_path / "o2"), "--json", str(fresh)) == 0
    assert _match(pair, "--out", str(tmp_path / "o3"), "--json", str(fresh)) == 0  # its own: replaced


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """Twenty frames of a photo panning 4 px per frame, MJPG in AVI."""
    path = tmp_path_factory.mktemp("video") / "pan.avi"
    photo = cv2.resize(skdata.coffee()[:, :, ::-1], (W + 80, H + 20), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(20):
        writer.write(np.ascontiguousarray(photo[10 : 10 + H, 4 * i : 4 * i + W]))
    writer.release()
    return path


@pytest.mark.parametrize("existing", ["annotated.mp4", "annotated.timing.csv"])
def test_demo_out_never_replaces_a_users_file(video, tmp_path, capsys, existing):
    from loftr_kd.cli.demo import main

    out = tmp_path / "annotated.mp4"
    (tmp_path / existing).write_bytes(b"mine")
    args = ["--source", str(video), "--backend", "orb", "--headless", "--out", str(out), "--max-frames", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert existing in err and "--force" in err and (tmp_path / existing).read_bytes() == b"mine"
    assert main([*args, "--force"]) == 0 and (tmp_path / existing).read_bytes() != b"mine"
    assert main(args) == 0  # its own outputs now: replaced without --force


def test_export_never_replaces_a_users_file_in_out_dir(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.cli.export import run_export
    from loftr_kd.config import CONFIG_DIR
    from loftr_kd.files import OutputExistsError

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.export_report.md").write_text("my notes")
    overrides = [
        f"ckpt_path={STUDENT}",
        f"out_dir={out}",
        "name=mine",
        "height=64",
        "width=96",
        "parity_pairs=1",
        "tensorrt.enabled=false",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="export", overrides=overrides)
        forced = compose(config_name="export", overrides=[*overrides, "force=true"])
    with pytest.raises(OutputExistsError, match="mine.export_report.md.*force=true"):
        run_export(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["mine.export_report.md"]
    run_export(forced)
    assert (out / "mine.onnx").is_file() and (out / "mine.export_report.md").read_text() != "my notes"
    run_export(cfg)  # its own outputs now: replaced without force


def _finished_run(folder: Path) -> dict[str, bytes]:
    """A finished training run as train() leaves it (claim, config, log, checkpoint)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (folder / ".hydra" / "overrides.yaml").write_text("- seed=7\n")
    (folder / "train.log").write_text("the old run's log\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(STUDENT.read_bytes())
    (folder / CLAIM_NAME).write_text(json.dumps({"task": "train", "state": "finished", "pid": 1}))
    return _snapshot(folder)


def test_a_refused_training_touches_nothing_of_the_existing_run(tmp_path):
    run = tmp_path / "run"
    before = _finished_run(run)
    result = _run("-m", "loftr_kd.cli.train", f"hydra.run.dir={run}", "debug=fast", "seed=3")
    lines = _error_lines(result.stderr, "loftr-kd-train")
    assert result.returncode == 2 and len(lines) == 1 and "already holds a finished train run" in lines[0]
    assert f"ckpt_path={run}" in lines[0]
    assert _snapshot(run) == before


def test_a_refused_sweep_touches_nothing_of_the_runs_in_its_folder(tmp_path):
    """Each job claims its folder only when it starts, after Hydra wrote its .hydra/ and log: a sweep rerun
    into a folder with a finished job rewrote that run's config (so `make rerun` reran another) and said
    'nothing in it was touched'. The sweep folder is checked before any job now."""
    sweep = tmp_path / "sweep"
    before = _finished_run(sweep / "0")
    result = _run("-m", "loftr_kd.cli.train", "-m", f"hydra.sweep.dir={sweep}", "debug=fast", "seed=3,4")
    lines = _error_lines(result.stderr, "loftr-kd-train")
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert (
        f"sweep folder {sweep} already holds runs: 0 (finished)" in lines[0] and "hydra.sweep.dir" in lines[0]
    )
    assert _snapshot(sweep / "0") == before and sorted(p.name for p in sweep.iterdir()) == ["0"]
    # a failed job too: taking its folder over would delete the .hydra/ Hydra writes for the new job first
    claim = json.loads((sweep / "0" / CLAIM_NAME).read_text())
    (sweep / "0" / CLAIM_NAME).write_text(json.dumps({**claim, "state": "failed"}))
    result = _run("-m", "loftr_kd.cli.train", "-m", f"hydra.sweep.dir={sweep}", "debug=fast", "seed=3,4")
    assert result.returncode == 2 and "already holds runs: 0 (failed)" in result.stderr


def _claim_in_child(folder: str, queue, go, done) -> None:
    go.wait(30)
    try:
        claim_run_dir(folder, "train")
        queue.put("won")
    except RunDirError:
        queue.put("refused")
    done.wait(30)  # a winner stays alive, as a training does, while the others try


def test_two_runs_started_into_one_folder_at_once_have_one_winner(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        folder = tmp_path / f"run{attempt}"
        queue, go, done = context.Queue(), context.Event(), context.Event()
        children = [
            context.Process(target=_claim_in_child, args=(str(folder), queue, go, done)) for _ in range(6)
        ]
        for child in children:
            child.start()
        go.set()
        outcomes = sorted(queue.get(timeout=30) for _ in children)
        assert read_claim(folder)["state"] == "running"
        done.set()
        for child in children:
            child.join(30)
        assert outcomes == ["refused"] * 5 + ["won"]


def test_a_run_that_failed_before_training_is_marked_and_its_folder_reusable(tmp_path):
    run = tmp_path / "run"
    missing = tmp_path / "missing.pt"
    first = _run("-m", "loftr_kd.cli.train", f"hydra.run.dir={run}", "debug=fast", f"init_weights={missing}")
    assert first.returncode == 2 and "missing.pt" in first.stderr
    claim = read_claim(run)
    assert claim["state"] == "failed" and "missing.pt" in claim["error"]
    # A new run may take the folder: it fails here for its own reason, not because of the failed one.
    second = _run(
        "-m",
        "loftr_kd.cli.train",
        f"hydra.run.dir={run}",
        "debug=fast",
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
    )
    lines = _error_lines(second.stderr, "loftr-kd-train")
    assert second.returncode == 2 and len(lines) == 1 and "nope.ckpt" in lines[0], second.stderr
    assert "missing.pt" not in (run / "train.log").read_text()  # the failed run's files were cleared


# ------------------------------------------------------------------------------------------------------
# 3. One line for a user's mistake or the machine's state
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the write-error test needs one"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only(tmp_path):
    if os.geteuid() != 0:  # permissions stop a normal user; root needs a read-only filesystem
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        yield folder
        return
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


@pytest.fixture
def full(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a full filesystem needs a tmpfs mount (root)")
    with _tmpfs(tmp_path / "full", "size=16k") as folder:
        (folder / "filler").write_bytes(b"\0" * 8192)
        yield folder


def test_read_only_and_full_output_locations_are_one_line(pair, video, read_only, full, tmp_path):
    image0, image1 = map(str, pair)
    for where in (read_only, full):
        cases = {
            "loftr-kd-train": ("loftr_kd.cli.train", "debug=fast", f"hydra.run.dir={where / 'run'}"),
            "loftr-kd-export": (
                "loftr_kd.cli.export",
                f"ckpt_path={STUDENT}",
                f"hydra.run.dir={where / 'exp'}",
            ),
            "loftr-kd-match": (
                "loftr_kd.cli.match",
                image0,
                image1,
                "--backend",
                "orb",
                "--out",
                str(where / "m"),
            ),
            "loftr-kd-demo": (
                "loftr_kd.cli.demo",
                *("--source", str(video), "--backend", "orb", "--headless", "--max-frames", "2"),
                *("--out", str(where / "v.mp4")),
            ),
            "loftr-kd-evaluate": ("loftr_kd.cli.evaluate", f"hydra.run.dir={where / 'ev'}"),
        }
        for program, command in cases.items():
            result = _run("-m", *command)
            lines = _error_lines(result.stderr, program)
            assert result.returncode == 2, (program, where.name, result.stderr[-3000:])
            assert len(lines) == 1 and str(where) in lines[0], (program, result.stderr[-3000:])
            assert "Traceback" not in result.stderr


def test_resuming_a_run_of_one_preset_with_another_is_one_line(tmp_path):
    from conftest import instantiate_preset
    from loftr_kd.train import ResumeError, check_resumed_student

    payload = torch.load(STUDENT, weights_only=True)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "global_step": 3,
            "student_config": payload["student_config"],
            "state_dict": {f"student.{k}": v for k, v in payload["state_dict"].items()},
        },
        ckpt,
    )
    check_resumed_student(str(ckpt), instantiate_preset("paper", 240, 320), "paper")  # the same: fine
    for preset in ("fast", "paper_refine"):
        with pytest.raises(ResumeError, match=f"another student than this run's \\(student={preset}\\)"):
            check_resumed_student(str(ckpt), instantiate_preset(preset, 240, 320), preset)
    result = _run(
        "-m",
        "loftr_kd.cli.train",
        "debug=fast",
        "student=fast",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    lines = _error_lines(result.stderr, "loftr-kd-train")
    assert result.returncode == 2 and len(lines) == 1 and "another student" in lines[0], result.stderr[-3000:]
    assert len(result.stderr.splitlines()) < 15


def test_logger_none_trains(tmp_path, toy_data):
    run = tmp_path / "run"
    result = _run(
        "-m",
        "loftr_kd.cli.train",
        f"hydra.run.dir={run}",
        "debug=fast",
        "logger=none",
        "trainer.max_epochs=1",
        "validate_before_training=false",
        "deploy.enabled=false",
        *toy_data,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and read_claim(run)["state"] == "finished"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.optimizer.lr=-0.001", r"optim.optimizer.lr=-0.001: expected a learning rate >= 0"),
        ("optim.optimizer.weight_decay=-1", r"optim.optimizer.weight_decay=-1: expected >= 0"),
        ("+optim.optimizer.lrr=0.1", r"optim.optimizer.lrr is not a setting of AdamW \(did you mean"),
        ("deploy.opset=99", r"deploy: opset=99: the exporter writes ONNX opsets 13 to 20"),
        ("+deploy.dynamc=true", r"deploy: dynamc is not an export setting \(did you mean dynamic\?\)"),
    ],
)
def test_settings_are_checked_before_any_work(override, message, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.config import CONFIG_DIR
    from loftr_kd.config_check import ConfigError, check_train_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[override])
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)


def test_bad_settings_stop_the_commands_before_their_run_folder_exists(tmp_path):
    cases = [
        ("loftr-kd-train", "loftr_kd.cli.train", "optim.optimizer.lr=-1", "learning rate >= 0"),
        ("loftr-kd-export", "loftr_kd.cli.export", f"ckpt_path={STUDENT}", "opset=5"),
        ("loftr-kd-export", "loftr_kd.cli.export", "height=240", "ckpt_path is required"),
    ]
    for index, (program, module, override, expected) in enumerate(cases):
        run = tmp_path / f"run{index}"
        extra = ["opset=5"] if expected == "opset=5" else []
        start = time.perf_counter()
        result = _run("-m", module, f"hydra.run.dir={run}", override, *extra)
        lines = _error_lines(result.stderr, program)
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
        assert not run.exists() and time.perf_counter() - start < 60


def test_a_misspelt_method_setting_names_the_method_and_the_key():
    from omegaconf import OmegaConf

    from loftr_kd.cli.evaluate import build_methods

    for spec, message in (
        (
            {"backend": "onnx", "wieghts": "x.pt"},
            r"methods.mine: 'wieghts' is not a matcher setting \(did you mean weights\?\)",
        ),
        (
            {"backend": "orb", "max_featurs": 500},
            r"methods.mine: 'max_featurs' .*did you mean max_features\?",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            build_methods(OmegaConf.create({"methods": {"mine": spec}}))


def test_teacher_load_errors_are_one_line(tmp_path, toy_data):
    garbage = tmp_path / "outdoor_ds.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for teacher in (f"teacher.weights={garbage}", "teacher=student"):
        extra = [f"teacher.weights={garbage}"] if teacher == "teacher=student" else []
        result = _run(
            "-m",
            "loftr_kd.cli.train",
            f"hydra.run.dir={tmp_path / teacher[-6:]}",
            "debug=fast",
            teacher,
            *extra,
            *toy_data,
        )
        lines = _error_lines(result.stderr, "loftr-kd-train")
        assert result.returncode == 2 and len(lines) == 1 and str(garbage) in lines[0], result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "Error in call to target" not in result.stderr


# ------------------------------------------------------------------------------------------------------
# 4. Never a silent wrong, empty or endless result
# ------------------------------------------------------------------------------------------------------


def _train_then_signal(run: Path, toy_data: list[str], signum: int) -> tuple[int, str, str]:
    """A long training run stopped by ``signum`` once its first step checkpoint exists: (status, out, err)."""
    command = [
        sys.executable,
        "-m",
        "loftr_kd.cli.train",
        f"hydra.run.dir={run}",
        "debug=fast",
        "trainer.max_epochs=50",
        "data.pairs_per_epoch=16",
        "validate_before_training=false",
        "deploy.enabled=false",
        *toy_data,
    ]
    # A shell's background job ignores SIGINT, and its children inherit that (then Python never raises
    # KeyboardInterrupt): the child gets the default disposition, as in a terminal.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step.ckpt").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_sigterm_writes_a_resumable_checkpoint_and_exits_143(tmp_path, toy_data):
    from loftr_kd.train import resolve_resume_checkpoint

    run = tmp_path / "run"
    status, out, err = _train_then_signal(run, toy_data, signal.SIGTERM)
    assert status == 143, err[-3000:]
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file() and f"ckpt_path={run}" in out + err
    step = load_checkpoint(interrupted)["global_step"]
    assert step >= 2 and resolve_resume_checkpoint(str(run)).endswith(
        ("interrupted.ckpt", "last.ckpt", "step.ckpt")
    )
    assert read_claim(run)["state"] == "interrupted"


def test_ctrl_c_says_what_to_resume_from_and_exits_130(tmp_path, toy_data):
    """Ctrl-C ended with Lightning's 'attempting graceful shutdown' and exit 1, nothing said of resuming."""
    run = tmp_path / "run"
    status, out, err = _train_then_signal(run, toy_data, signal.SIGINT)
    assert status == 130, err[-3000:]
    assert "Stopped by Ctrl-C at global step" in out + err and f"ckpt_path={run}" in out + err
    assert read_claim(run)["state"] == "interrupted"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda img: (img * 255).to(torch.uint8), r"torch.uint8: kornia's LoFTR takes float images"),
        (lambda img: (img * 255).to(torch.int64), r"torch.int64"),
        (
            lambda img: img * 255.0,
            r"values in \[.*\]: kornia's LoFTR takes images in \[0, 1\] \(0-255 values",
        ),
        (lambda img: img - 0.5, r"values in \[-0\.49\d*, 0\.5\]"),
    ],
)
def test_kornia_drop_in_refuses_wrong_ranges_instead_of_matching_nothing(make, message):
    from loftr_kd.kornia_loftr import StudentLoFTR

    gray = torch.from_numpy(cv2.resize(skdata.camera(), (W, H))).float()[None, None] / 255.0
    loftr = StudentLoFTR()
    assert len(loftr({"image0": gray, "image1": gray})["keypoints0"]) > 0  # the right range matches
    with pytest.raises(ValueError, match=message):
        loftr({"image0": make(gray), "image1": gray})


@pytest.mark.parametrize("damage", ["zeroed middle", "cut tail"])
def test_a_video_that_ends_early_is_reported_with_its_frame_counts(video, tmp_path, capsys, damage):
    from loftr_kd.cli.demo import main

    data = bytearray(video.read_bytes())
    n = len(data)
    broken = tmp_path / "broken.avi"
    if damage == "zeroed middle":
        data[int(n * 0.3) : int(n * 0.7)] = bytes(int(n * 0.7) - int(n * 0.3))
        broken.write_bytes(bytes(data))
    else:
        broken.write_bytes(bytes(data[: n // 2]))
    out = tmp_path / "annotated.mp4"
    status = main(["--source", str(broken), "--backend", "orb", "--headless", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "of the 20 frames its container announces" in err, err
    summary = json.loads(out.with_name("annotated.timing.json").read_text())
    assert summary["ended_early"] and summary["frames_consumed"] < summary["frames_announced"] == 20
    assert out.is_file()  # what was read was processed and written


def test_an_intact_video_is_read_to_its_announced_end(video, tmp_path):
    from loftr_kd.cli.demo import main

    out = tmp_path / "annotated.mp4"
    assert main(["--source", str(video), "--backend", "orb", "--headless", "--out", str(out)]) == 0
    summary = json.loads(out.with_name("annotated.timing.json").read_text())
    assert summary["frames_consumed"] == summary["frames_announced"] == 20 and not summary["ended_early"]


def test_a_huge_jpeg_is_decoded_reduced_and_matched_in_its_own_pixels(tmp_path):
    """A 12000x9000 JPEG: decoded at 1/4, matched by the student, reported in full-size pixels, in bounded
    memory: its peak is within 200 MB of the same command on a small pair (the full decode and its float
    copies took several GB)."""
    big = tmp_path / "big.jpg"
    photo = cv2.resize(skdata.astronaut()[:, :, ::-1], (12000, 9000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(big), photo, [cv2.IMWRITE_JPEG_QUALITY, 80])
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(photo, (1200, 900), interpolation=cv2.INTER_AREA))
    del photo

    def peak_rss_mb(image0: Path, out: str) -> tuple[float, subprocess.CompletedProcess]:
        code = (
            "import resource, sys; from loftr_kd.cli.match import main; "
            f"status = main([{str(image0)!r}, {str(small)!r}, '--no-guided', "
            f"'--out', {str(tmp_path / out)!r}]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
        )
        result = _run("-c", code)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout.split("MAXRSS")[-1].split()[0]) / 1024, result

    # The same command on the small pair is the baseline (imports, model, export cache): the huge image
    # may add its 1/4 decode and no more; a full decode alone would add its 324 MB of pixels.
    baseline_mb, _ = peak_rss_mb(small, "baseline")
    max_rss_mb, result = peak_rss_mb(big, "o")
    assert "decoded at 1/4" in result.stderr
    assert max_rss_mb - baseline_mb < 200, (
        f"{max_rss_mb:.0f} MB against {baseline_mb:.0f} MB for the small pair"
    )
    record = json.loads((tmp_path / "o" / "matches.json").read_text())
    homography = np.array(record["homography"])
    # big -> small is a 1/10 scaling: the homography is in the full image's pixels.
    corners = np.array([[0, 0, 1], [11999, 8999, 1]], float) @ homography.T
    corners = corners[:, :2] / corners[:, 2:]
    assert np.allclose(corners, [[-0.45, -0.45], [1199.45, 899.45]], atol=8.0), corners


@pytest.mark.parametrize(("width", "height", "factor"), [(601, 451, 2), (607, 453, 4)])
def test_a_reduced_png_of_odd_size_maps_back_exactly(tmp_path, width, height, factor):
    """OpenCV's reduced read of a PNG resizes to floor(W / f): points drifted towards the far edge (up to
    -0.9 px at 1/2 and -2.5 px at 1/4 for 6001- and 6007-px photos) under the x -> (x + 0.5) f - 0.5 rule."""
    from loftr_kd.images import read_image_for_matching

    dots = [(16, 16), (width // 2, height // 2), (width - 17, height - 17), (width - 17, 16)]
    image = np.zeros((height, width, 3), np.uint8)
    for x, y in dots:
        image[y - 4 : y + 5, x - 4 : x + 5] = 255  # 9x9 squares centred on (x, y)
    path = tmp_path / "dots.png"
    cv2.imwrite(str(path), image)
    reduced, got = read_image_for_matching(path, max_pixels=(width * height) // (factor * factor) + 1)
    assert got == factor and reduced.shape[:2] == (-(-height // factor), -(-width // factor))
    gray = reduced[:, :, 0].astype(np.float64)
    for x, y in dots:
        cx, cy = (round((x + 0.5) / factor - 0.5), round((y + 0.5) / factor - 0.5))
        window = gray[cy - 3 : cy + 4, cx - 3 : cx + 4]
        ys, xs = np.mgrid[cy - 3 : cy + 4, cx - 3 : cx + 4]
        centroid = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()
        np.testing.assert_allclose((centroid + 0.5) * factor - 0.5, (x, y), atol=0.25)  # box quantisation


def test_an_image_too_large_for_memory_is_refused_before_decoding(tmp_path):
    """A PNG whose header announces 200000x200000 pixels: refused from the header, nothing allocated."""
    import struct
    import zlib

    from loftr_kd.images import ImageError, read_image, read_image_for_matching

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", 200000, 200000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    for reader in (read_image, lambda p: read_image_for_matching(p)[0]):
        with pytest.raises(ImageError, match=r"200000x200000 image needs about .* GiB .*downscale it first"):
            reader(path)


def test_every_python_door_refuses_weights_holding_nan(tmp_path):
    """A student file whose weights hold NaN (a diverged run's, a damaged file) matched nothing and said
    "no homography", exported "verified", trained on: every door refuses it, naming the file and a tensor."""
    from loftr_kd.matcher import MatcherError
    from loftr_kd.models.student import build_student, save_student

    student = build_student(input_height=96, input_width=128)
    with torch.no_grad():
        student.backbone.conv1.weight[0, 0, 0, 0] = float("nan")
    path = save_student(student, tmp_path / "diverged.pt")
    doors = _student_file_doors(path, tmp_path / "cache", 96, 128)
    from loftr_kd.averaging import average_students
    from loftr_kd.export.onnx import export_student

    doors["export"] = lambda: export_student(path, tmp_path / "cache" / "export", height=96, width=128)
    doors["average"] = lambda: average_students([path, path])
    for door, call in doors.items():
        with pytest.raises((ValueError, MatcherError)) as info:
            call()
        text = str(info.value)
        assert str(path) in text and "NaN or infinite" in text and "backbone.conv1.weight" in text, (
            door,
            text,
        )
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing exported from it
