"""loftr-kd-export config and entry point (loftr_kd.cli.export)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from loftr_kd.cli.export import resolve_checkpoint, run_export
from loftr_kd.config import CONFIG_DIR
from loftr_kd.models.student import build_student, save_student


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="export", overrides=list(overrides))


def test_config_defaults():
    cfg = _cfg("ckpt_path=x.pt")
    assert (cfg.height, cfg.width, cfg.batch, cfg.opset) == (480, 640, 1, 17)
    assert cfg.dynamic is False and cfg.tensorrt.fp16 is True and cfg.tensorrt.workspace_mb == 1024


def test_run_export_end_to_end(tmp_path, capsys):
    ckpt = save_student(build_student(input_height=64, input_width=96, border_removal=0), tmp_path / "s.pt")
    cfg = _cfg(
        f"ckpt_path={ckpt}",
        f"out_dir={tmp_path / 'out'}",
        "height=64",
        "width=96",
        "parity_pairs=1",
        "int8.enabled=true",
        "int8.calibration_pairs=2",
    )
    summary = run_export(cfg)
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "student_64x96.onnx").is_file()
    report = json.loads((tmp_path / "out" / "student_64x96.export_report.json").read_text())
    assert report["ok"]
    # the split export beside it, checked the same way (issue 24)
    for part in ("encoder", "matcher"):
        assert (tmp_path / "out" / f"student_64x96.{part}.onnx").is_file()
        assert (
            report["split"][part]["onnx_checker"] == "passed"
            and not report["split"][part]["op_check"]["violations"]
        )
    assert report["split"]["parity"]["vs_pytorch"]["ok"] and summary["encoder"].endswith(".encoder.onnx")
    assert summary["int8"].endswith(".int8.onnx") and "speedup" in summary["int8_comparison"]
    # TensorRT: either an engine or exactly one line saying why not
    assert "engine" in summary or sum("engine build skipped" in line for line in out.splitlines()) == 1


def test_run_export_missing_checkpoint(tmp_path):
    cfg = _cfg(f"ckpt_path={tmp_path / 'nope.pt'}", f"out_dir={tmp_path}")
    with pytest.raises(FileNotFoundError, match="nope.pt: no such checkpoint file or run folder"):
        run_export(cfg)


def test_a_training_run_folder_exports_its_best_checkpoint_as_training_resumes_from_one(tmp_path, capsys):
    """``ckpt_path=<run dir>``: the newest best-*.ckpt of its checkpoints/, else last.ckpt; a folder
    without either is one line naming it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_checkpoint(str(run)) == run / "checkpoints" / "last.ckpt"
    (run / "checkpoints" / "best-epoch007.ckpt").write_bytes(b"")
    assert resolve_checkpoint(str(run)) == run / "checkpoints" / "best-epoch007.ckpt"
    assert f"from the run folder {run}" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: a folder without best-\*\.ckpt or last\.ckpt"):
        resolve_checkpoint(str(empty))


def test_failed_export_is_one_line_on_stderr(tmp_path):
    """loftr-kd-export: a missing checkpoint or a bad setting is one line naming it (exit 2), before the
    run folder exists."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOFTR_KD_DEBUG": "0", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", "loftr_kd.cli.export", f"hydra.run.dir={tmp_path / 'run'}"]
    missing = subprocess.run(
        [*command, f"ckpt_path={tmp_path / 'nope.pt'}"], capture_output=True, text=True, env=env
    )
    last = [line for line in missing.stderr.splitlines() if line.strip()][-1]
    assert missing.returncode == 2 and last.startswith("loftr-kd-export: error: ") and "nope.pt" in last
    assert not (tmp_path / "run").exists()
    bad = subprocess.run([*command, "ckpt_path=x.pt", "batch=0"], capture_output=True, text=True, env=env)
    last = [line for line in bad.stderr.splitlines() if line.strip()][-1]
    assert bad.returncode == 2 and "batch must be >= 1" in last and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("width=abc", r"width='abc': expected an integer"),
        ("height=100000", r"export size height=100000 width=640: at most 4096 px a side"),
        ("name=../../x", r"name='../../x': expected a file stem \(no folders\)"),
        ("atol=-1", r"atol=-1: expected a finite parity tolerance > 0"),
        ("atol=inf", r"atol=inf: expected a finite parity tolerance > 0"),  # passed every parity check
        ("opset=11", r"opset=11: the exporter writes ONNX opsets 13 to 20"),  # failed after loading
        ("parity_pairs=0", r"parity_pairs must be >= 1"),  # became 4 without a word
        ("opset=12", r"opset=12: the exporter writes ONNX opsets 13 to 20"),  # wrote an invalid INT8 file
    ],
)
def test_export_settings_are_checked_before_any_work(override, message):
    """width=abc was a TypeError traceback, height=100000 ran a minute before failing to allocate 250 GB,
    name=../../x wrote outside the run folder."""
    from loftr_kd.cli.export import export_settings

    with pytest.raises(ValueError, match=message):
        export_settings(_cfg("ckpt_path=x.pt", override))


def test_an_export_size_off_the_stride_names_the_size_not_the_file(tmp_path):
    ckpt = save_student(build_student(input_height=64, input_width=96), tmp_path / "s.pt")
    cfg = _cfg(f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'out'}", "height=33", "width=96")
    with pytest.raises(ValueError, match=r"^height=33 width=96: input_height=33 must be a positive multiple"):
        run_export(cfg)


def test_a_checkpoint_that_is_no_student_is_the_users_error(tmp_path):
    """Any other torch file was an ExportError (exit 1, "the export failed") quoting a KeyError."""
    import torch

    from loftr_kd.errors import is_user_error

    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(3)}, other)
    cfg = _cfg(f"ckpt_path={other}", f"out_dir={tmp_path / 'out'}", "tensorrt.enabled=false")
    with pytest.raises(
        ValueError, match=r"could not load the student from .*other.pt: .*has no 'student_config'"
    ) as info:
        run_export(cfg)
    assert is_user_error(info.value) and '"' not in str(info.value)[:40]


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_short_line(tmp_path):
    """Weights of other block widths under a config: torch's size-mismatch text, a 6 KB line, exit 1."""
    import torch

    from loftr_kd.errors import is_user_error

    ckpt = save_student(build_student(input_height=64, input_width=96), tmp_path / "s.pt")
    payload = torch.load(ckpt, weights_only=True)
    payload["student_config"] = {**payload["student_config"], "block_dims": [8, 16, 24, 32]}
    torch.save(payload, tmp_path / "other.pt")
    cfg = _cfg(f"ckpt_path={tmp_path / 'other.pt'}", f"out_dir={tmp_path / 'out'}", "height=64", "width=96")
    with pytest.raises(
        ValueError, match=r"other.pt: its weights do not fit its student_config \(shapes differ"
    ) as info:
        run_export(cfg)
    assert is_user_error(info.value) and len(str(info.value)) < 400 and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_graph_that_fails_its_checks_never_takes_the_deployed_name(tmp_path):
    """A parity failure used to leave the unchecked graph at <name>.onnx, and the rerun into the same folder
    was refused ("not written by loftr-kd"); an earlier good graph stays where it was."""
    from loftr_kd.export.onnx import ExportError

    ckpt = save_student(build_student(input_height=64, input_width=96, border_removal=0), tmp_path / "s.pt")
    out = tmp_path / "out"
    common = (
        f"ckpt_path={ckpt}",
        f"out_dir={out}",
        "height=64",
        "width=96",
        "parity_pairs=1",
        "+split=false",
    )
    run_export(_cfg(*common))
    good = (out / "student_64x96.onnx").read_bytes()
    with pytest.raises(ExportError, match=r"moved to .*student_64x96\.failed\.onnx"):
        run_export(_cfg(*common, "atol=1e-30"))  # float rounding alone fails it
    assert (out / "student_64x96.onnx").read_bytes() == good
    assert (out / "student_64x96.failed.onnx").is_file()
    assert json.loads((out / "student_64x96.export_report.json").read_text())["ok"]  # still the good one's
    report = json.loads((out / "student_64x96.failed.export_report.json").read_text())
    assert not report["ok"] and report["onnx_path"].endswith("student_64x96.failed.onnx")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.suffix == ".onnx"]
    run_export(_cfg(*common))  # the rerun replaces what loftr-kd wrote, and its failed files go
    assert json.loads((out / "student_64x96.export_report.json").read_text())["ok"]
    assert not [p.name for p in out.iterdir() if ".failed." in p.name]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupted_export_is_one_line_and_leaves_no_graph(tmp_path, signum):
    import signal
    import sys

    from conftest import signal_when

    ckpt = save_student(build_student(), tmp_path / "s.pt")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "loftr_kd.cli.export", f"hydra.run.dir={tmp_path / 'run'}"]
    # many parity pairs: the checks outlast a test process starved of CPU for seconds, so the signal lands in
    # them and not after the export ended (a SIGINT during interpreter shutdown killed the process: -2)
    command += [f"ckpt_path={ckpt}", f"out_dir={out}", "dynamic=true", "parity_pairs=64"]
    exporting = lambda: out.is_dir() and any(p.suffix == ".onnx" for p in out.iterdir())  # noqa: E731
    status, stderr = signal_when(command, exporting, getattr(signal, signum))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 128 + getattr(signal, signum) and "Traceback" not in stderr
    assert lines[-1] == f"loftr-kd-export: stopped by {'Ctrl-C' if signum == 'SIGINT' else 'SIGTERM'}"
    assert not [p.name for p in out.iterdir() if ".onnx" in p.name]


def test_an_out_dir_that_cannot_be_written_is_refused_before_loading(tmp_path):
    """A file in the way (or a read-only place) failed after loading and tracing, naming a hidden temp file."""
    import os

    ckpt = save_student(build_student(input_height=64, input_width=96), tmp_path / "s.pt")
    (tmp_path / "afile").write_text("mine")
    common = (f"ckpt_path={ckpt}", "height=64", "width=96")
    with pytest.raises(NotADirectoryError, match=r"out_dir .*afile/out is inside .*afile, which is a file"):
        run_export(_cfg(*common, f"out_dir={tmp_path / 'afile' / 'out'}"))
    if os.geteuid() == 0:  # root writes through the permission bits; a read-only mount needs privileges
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=r"locked \(out_dir .*locked/out\)"):
            run_export(_cfg(*common, f"out_dir={locked / 'out'}"))
    finally:
        locked.chmod(0o755)


def test_the_threads_setting_runs_the_export_and_its_checks_on_that_many_threads(tmp_path):
    """Export had no threads setting: on a shared 2-core machine its onnxruntime checks took every core."""
    import torch

    from loftr_kd.cli.export import check_export_config

    ckpt = save_student(build_student(input_height=64, input_width=96, border_removal=0), tmp_path / "s.pt")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = _cfg(
            f"ckpt_path={ckpt}", f"out_dir={tmp_path}", "height=64", "width=96", "parity_pairs=1", "threads=1"
        )
        run_export(cfg)
        assert torch.get_num_threads() == 2  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    report = json.loads((tmp_path / "student_64x96.export_report.json").read_text())
    assert report["threads"] == {"torch": 1, "onnxruntime": 1}
    assert "CPU threads: torch 1, onnxruntime 1" in (tmp_path / "student_64x96.export_report.md").read_text()
    with pytest.raises(ValueError, match=r"threads=0: expected a number of CPU threads >= 1"):
        check_export_config(_cfg(f"ckpt_path={ckpt}", "threads=0"))
