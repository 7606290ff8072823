"""loftr-kd-train with bad input: one clear line (exit 2) before any work, and no data ever touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import quiet_cpu_trainer, shifted_photo_pairs
from loftr_kd.config import CONFIG_DIR, register_resolvers
from loftr_kd.config_check import ConfigError, check_train_config
from loftr_kd.data import synthetic
from loftr_kd.data.synthetic import write_toy_dataset
from loftr_kd.train import ResumeError, check_output_dir, resolve_resume_checkpoint

register_resolvers()


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _train(run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "loftr_kd.cli.train",
        f"hydra.run.dir={run_dir}",
        "debug=fast",
        *overrides,
    ]
    environment = {k: v for k, v in os.environ.items() if k not in ("LOFTR_KD_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**environment, **(env or {})}
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "loftr-kd-train: error:" in line]


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", r"trainer.max_epochs='abc': expected an integer or null"),
        ("trainer.max_epochs=-5", r"trainer.max_epochs=-5: expected -1 \(no limit\)"),
        ("data.batch_size=0", r"data.batch_size=0: expected >= 1"),
        ("data.height=16", r"data.height=16: expected >= 32 pixels \(two coarse cells"),
        ("data.height=tall", r"data.height='tall': expected an integer"),
        ("data.on_bad_data=ignore", r"data.on_bad_data='ignore': expected one of raise, skip"),
        (
            "+trainer.max_epoch=3",
            r"trainer.max_epoch is not a setting of Trainer \(did you mean trainer.max_epochs\?\)",
        ),
        ("trainer.deterministic=maybe", r"trainer.deterministic='maybe': expected"),
        ("seed=x", r"seed='x': expected an integer"),
        ("max_nonfinite_steps=0", r"max_nonfinite_steps=0: expected the number \(>= 1\)"),
        ("loss.w_kd=-0.5", r"loss: w_kd must be >= 0, got -0.5"),
        ("loss.temperature=0", r"loss: temperature must be > 0, got 0"),
        ("+loss.w_focal=1", r"loss.w_focal is not a setting of LossConfig"),
        (
            "callbacks.throughput.window_size=1",
            r"callbacks.throughput.window_size=1: expected a number of batches >= 2",
        ),
        # each was a traceback or Hydra's multi-line error, the scheduler's after a whole epoch
        ("optim.optimizer.lr=abc", r"optim.optimizer.lr='abc': expected a number"),
        ("optim.scheduler.step_size=0", r"optim.scheduler.step_size=0: expected a number of epochs >= 1"),
        ("trainer.devices=0", r"trainer.devices=0: expected a number of devices >= 1, -1 \(all\) or auto"),
        (
            "callbacks.step_checkpoint.every_n_train_steps=-1",
            r"callbacks.step_checkpoint.every_n_train_steps=-1: expected >= 0",
        ),
    ],
)
def test_config_type_and_range_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(_compose(override))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.homography.max_rotation_deg=nan",
            r"data.homography.max_rotation_deg=nan: expected degrees in \[0, 180\]",
        ),
        ("+data.val_homography.max_zoom=0.5", r"data.val_homography.max_zoom=0.5: expected >= 1"),
        (
            "data=mixed +data.sources.photos.homography.max_zoom=-2",
            r"data.sources.photos.homography.max_zoom=-2",
        ),
    ],
)
def test_a_homography_range_is_checked_before_any_work(override, message):
    """A zoom below 1 was a bare "math domain error" at the first item, a NaN rotation NaN homographies."""
    overrides = (
        override.split() if override.startswith("data=") else ["data=homography", "data.root=/x", override]
    )
    with pytest.raises(ConfigError, match=message):
        check_train_config(_compose(*overrides))


def test_a_mix_source_called_homography_has_its_range_checked_too():
    """The block under a source named "homography" was taken for a range block and its own range skipped."""
    from loftr_kd.config_check import _check_homography_blocks

    mix = {"sources": {"homography": {"kind": "homography", "homography": {"max_zoom": 0.5}}}}
    with pytest.raises(ConfigError, match=r"data.sources.homography.homography.max_zoom=0.5: expected >= 1"):
        _check_homography_blocks("data", mix)
    _check_homography_blocks("data", {"sources": {"homography": {"homography": {"max_zoom": 2.0}}}})


def test_a_gpu_trainer_without_a_gpu_is_one_line_before_any_work(tmp_path):
    """experiment=paper on a CPU machine said it would train on the CPU, then failed in Lightning."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = _train(tmp_path / "run", "trainer=gpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert "trainer.accelerator=gpu, but torch sees no CUDA GPU on this machine: add trainer=cpu" in line


def test_default_and_experiment_configs_pass_the_check():
    configs = [[], ["experiment=paper"], ["experiment=stride8"], ["debug=fast"], ["debug=profiler"]]
    configs += [[f"trainer={t}"] for t in ("cpu", "gpu", "ddp", "ddp_cpu")]
    configs += [["data=blendedmvs", "data.root=/x"], ["data=homography", "data.root=/x"], ["logger=none"]]
    for overrides in configs:
        check_train_config(_compose(*overrides))


def test_a_misspelt_config_group_option_is_one_line(tmp_path):
    """student=fst was Hydra's dozen-line message and exit 1: one line naming the options, the closest first;
    options that exist (a sweep's too), dotted keys and null pass."""
    from loftr_kd.cli import unknown_group_option

    result = _train(tmp_path / "run", "student=fst")
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert "student=fst: no such option of student (did you mean student=fast?); choose one of fast," in line
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    assert unknown_group_option(["student=paper,fst"]).startswith("student=fst:")
    for fine in (["student=paper,fast"], ["data.root=/x", "seed=3"], ["teacher=null"], ["+experiment=paper"]):
        assert unknown_group_option(fine) is None, fine
    # left to Hydra: quoted, bracketed or interpolated values, and options that may live elsewhere
    for other in (
        ["student='fast'"],
        ["logger=[tensorboard,none]"],
        ["student=${oc.env:X}"],
        ["--config-dir", "/x", "student=mine"],
        ["hydra.searchpath=[file:///x]", "student=mine"],
    ):
        assert unknown_group_option(other) is None, other


def test_an_override_of_a_key_the_config_lacks_is_one_line(tmp_path):
    """trainer.max_epoch=3 (no +) was Hydra's multi-line 'Could not override' and exit 1."""
    from loftr_kd.cli import unknown_setting

    result = _train(tmp_path / "run", "trainer.max_epoch=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert (
        "trainer.max_epoch=3: trainer.max_epoch is not a setting of this config (did you mean trainer.max_epochs?)"
        in line
    )
    assert not (tmp_path / "run").exists()
    hint = unknown_setting("train", ["data=homography", "data.root=/x", "data.homography.max_rotation=1"])
    assert "did you mean data.homography.max_rotation_deg?" in hint
    for fine in (["seed=3"], ["+foo=1"], ["-m", "trainer.max_epoch=3"], ["student=paper,fast"]):
        assert unknown_setting("train", fine) is None, fine  # composes, or left to Hydra
    # Hydra's own errors stay Hydra's: a line it cannot parse, a new key inside a mapping's value, a group
    # this config does not use (each was a traceback or a misleading line)
    assert unknown_setting("train", ["seed=[1,2"]) is None
    assert unknown_setting("train", ["trainer={max_epochs: 1, foo: 2}"]) is None
    assert unknown_setting("evaluate", ["student=paper"]) is None
    assert unknown_setting("export", ["deploy=default"]) is None  # a group, not a key that needs a +


def test_a_group_the_commands_config_does_not_use_is_left_to_hydra():
    """evaluate student=fst was answered 'did you mean student=fast?', and student=fast then failed in
    Hydra: the group is not in evaluate's defaults list at all, which Hydra's own message says."""
    from loftr_kd.cli import unknown_group_option

    assert unknown_group_option(["student=fst"], "evaluate") is None
    assert unknown_group_option(["deploy=defalt"], "export") is None  # export takes deploy@_global_
    assert unknown_group_option(["student=fst"], "train").startswith("student=fst: no such option")
    assert unknown_group_option(["+student=fst"], "evaluate").startswith("student=fst: no such option")


def test_bad_config_is_one_line_before_any_work(tmp_path):
    run = tmp_path / "run"
    result = _train(run, "trainer.max_epochs=abc", f"data.root={tmp_path / 'none'}")
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        "loftr-kd-train: error: trainer.max_epochs='abc': expected an integer or null"
    ]
    assert "Traceback" not in result.stderr
    assert not run.exists()  # checked before Hydra creates the run directory
    debug = _train(run, "trainer.max_epochs=abc", env={"LOFTR_KD_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


# ---------------------------------------------------------------------------------------- data
def test_train_never_regenerates_hand_edited_scenes(tmp_path):
    root = tmp_path / "scenes"
    synthetic.generate_dataset(root, scenes=2, views=3, seed=1, height=48, width=64)
    (root / synthetic.INFO_FILE).unlink()  # e.g. a copied or hand-edited scene set
    before = _snapshot(root)
    result = _train(tmp_path / "run", f"data.root={root}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = _error_lines(result.stderr)
    assert f"data.root={root} holds files the synthetic generator did not write" in line
    assert "data=blendedmvs" in line and "Traceback" not in result.stderr
    assert _snapshot(root) == before


def test_mistyped_data_root_is_not_filled_with_scenes(tmp_path):
    typo = tmp_path / "mydata"
    result = _train(tmp_path / "run", f"data.root={typo}")
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert f"data.root={typo} does not exist" in line and "loftr-kd-synth --out" in line
    assert not typo.exists()


def test_bad_data_with_on_bad_data_raise_is_one_line_naming_the_file(tmp_path):
    root = tmp_path / "toy"
    write_toy_dataset(root, scenes=2, views=3, height=48, width=64)
    broken = root / "toy_000" / "cams" / "00000001_cam.txt"
    broken.write_text("extrinsic 1 2 3")
    result = _train(
        tmp_path / "run",
        "data=blendedmvs",
        f"data.root={root}",
        "data.on_bad_data=raise",
        "data.num_workers=0",
    )
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert str(broken) in line and "tokens" in line
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------- resume
def _checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "epoch": 0}, path)
    return path


def test_resume_from_a_run_dir_passes_over_a_truncated_last_ckpt(tmp_path, caplog):
    caplog.set_level("INFO", logger="loftr_kd.train")
    run = tmp_path / "run"
    last = _checkpoint(run / "checkpoints" / "last.ckpt", 8)
    last.write_bytes(last.read_bytes()[:100])  # truncated
    step = _checkpoint(run / "checkpoints" / "step.ckpt", 6)
    assert resolve_resume_checkpoint(str(run)) == str(step)
    said = caplog.text
    assert f"taking {step} (global step 6)" in said and "last.ckpt passed over: unreadable" in said
    with pytest.raises(ResumeError, match=r"last.ckpt: unreadable.*step.ckpt \(global step 6\)"):
        resolve_resume_checkpoint(str(last))


def test_resume_with_no_intact_checkpoint_names_each_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "checkpoints" / "step.ckpt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ResumeError, match=r"last.ckpt: the file is empty.*step.ckpt: unreadable"):
        resolve_resume_checkpoint(str(run))
    with pytest.raises(ResumeError, match="no such checkpoint file"):
        resolve_resume_checkpoint(str(tmp_path / "nothing.ckpt"))


def test_a_run_directory_holding_a_run_is_never_overwritten(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    check_output_dir(run)  # only Hydra's own files: fine, and now claimed by this process
    check_output_dir(run)  # claimed by this process already: fine
    monkeypatch.delenv("LOFTR_KD_RUN_CLAIM")  # as another process sees it
    with pytest.raises(ValueError, match=r"already holds a running train run started .* by pid"):
        check_output_dir(run)
    older = tmp_path / "older"  # written by a version that did not claim its folder
    older.mkdir()
    (older / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"already holds a run \(summary.json\)"):
        check_output_dir(older)


class _BrokenDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        from loftr_kd.data.blendedmvs_io import BlendedMVSFormatError

        raise BlendedMVSFormatError("/data/scene/cams/00000001_cam.txt: camera file has 4 tokens")


def test_an_error_from_a_dataloader_worker_becomes_its_own_one_line():
    from loftr_kd.errors import is_user_error, one_line

    loader = torch.utils.data.DataLoader(_BrokenDataset(), num_workers=1)
    with pytest.raises(ValueError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # what the user saw before: the worker's traceback
    assert is_user_error(info.value)
    assert one_line(info.value) == "/data/scene/cams/00000001_cam.txt: camera file has 4 tokens"


def test_skip_mode_with_every_validation_scene_dropped_is_one_line(tmp_path):
    root = tmp_path / "toy"
    write_toy_dataset(root, scenes=2, views=3, height=48, width=64)  # toy_001 validates
    (root / "toy_001" / "cams" / "pair.txt").write_text("3\n0\n")
    result = _train(
        tmp_path / "run",
        "data=blendedmvs",
        f"data.root={root}",
        "data.on_bad_data=skip",
        "data.num_workers=0",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = _error_lines(result.stderr)
    assert "no validation pairs are left" in line and "toy_001: cams/pair.txt" in line
    assert "IndexError" not in result.stderr and "Traceback" not in result.stderr


def test_unreadable_init_weights_is_one_line_before_any_work(tmp_path):
    empty = tmp_path / "student.pt"
    empty.write_bytes(b"")
    run = tmp_path / "run"
    result = _train(run, f"init_weights={empty}", f"data.root={tmp_path / 'none'}")
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert f"init_weights={empty}" in line and "the file is empty (0 bytes)" in line
    assert "weights_only=False" not in result.stderr and not (run / "run_info.json").exists()


def test_init_weights_of_another_student_is_one_line_naming_its_settings(tmp_path):
    """The shipped refined file as init_weights of the default coarse `paper` student (usage.md's example
    without student=paper_refine): one line before any work, naming the settings the file's student has."""
    from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

    run = tmp_path / "run"
    result = _train(run, f"init_weights={DEFAULT_STUDENT_WEIGHTS}", f"data.root={tmp_path / 'none'}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = _error_lines(result.stderr)
    assert f"init_weights={DEFAULT_STUDENT_WEIGHTS}: its weights do not fit this student" in line
    assert "refine=corr (this student: none)" in line and "student=paper_refine" in line
    assert "Traceback" not in result.stderr and not (run / "run_info.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+data.val_fration=0.2",
            r"data.val_fration is not a setting of PairDataModule \(did you mean data.val_fraction\?\)",
        ),
        ("+data.val_fraction=high", r"data.val_fraction=.high.: expected"),
    ],
)
def test_kind_settings_are_checked_before_the_run_directory(override, message, tmp_path):
    """PairDataModule takes its kind's settings as **source_options: they are still checked up front."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.config import CONFIG_DIR
    from loftr_kd.config_check import ConfigError, check_train_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        good = compose(
            config_name="train", overrides=["data.train_scenes=[a,b]", f"paths.output_dir={tmp_path}"]
        )
    check_train_config(good)  # a list where the source keeps a tuple is fine


def _fit(module, batches: list[dict], tmp_path: Path, **options):
    """One epoch of Lightning's own fit over ``batches``; the trainer, for its metrics."""
    from torch.utils.data import DataLoader

    trainer = quiet_cpu_trainer(tmp_path, **options)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def test_a_non_finite_loss_is_skipped_counted_and_too_many_stop_the_run(tmp_path):
    """A batch whose loss is NaN (here an image with an infinite pixel, fed past the data checks) is skipped:
    no optimizer update, the BatchNorm statistics its forward moved put back, a warning, the count logged;
    the finite batches around it train. As many in a row as max_nonfinite_steps stop the run with one line,
    the weights still the last finite step's."""
    from functools import partial

    from loftr_kd.errors import NonFiniteLossError, user_error_types
    from loftr_kd.lightning_module import DistillationModule
    from loftr_kd.losses import LossConfig
    from loftr_kd.models.student import build_student

    torch.manual_seed(0)
    torch.set_num_threads(1)

    def module(limit: int) -> DistillationModule:
        student = build_student(input_height=96, input_width=128, refine="corr", border_removal=0)
        optimizer = partial(torch.optim.AdamW, lr=1e-3)
        return DistillationModule(student, None, LossConfig(w_gt=1.0), optimizer, max_nonfinite_steps=limit)

    good = shifted_photo_pairs(0, 3)
    bad = {**good[1], "image1": good[1]["image1"].clone()}
    bad["image1"][0, 0, 40, 60] = float("inf")
    model = module(limit=2)

    def state() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.student.state_dict().items()}

    start = state()
    with pytest.warns(UserWarning, match=r"non-finite training loss at epoch 0, batch 1 \(total nan"):
        _fit(model, [good[0], bad, good[2]], tmp_path)
    assert model.nonfinite_steps == 1
    after = state()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert any(not torch.equal(after[k], start[k]) for k in start)  # the finite steps trained

    model = module(limit=2)
    start = state()
    with pytest.raises(NonFiniteLossError, match=r"2 training steps in a row had a non-finite loss"):
        _fit(model, [bad, bad, good[2]], tmp_path)
    for name, value in state().items():  # no update, statistics put back: the weights as they started
        assert torch.equal(value, start[name]), name
    assert isinstance(NonFiniteLossError("x"), user_error_types())  # reported in one line by the CLIs
    with pytest.raises(ValueError, match="max_nonfinite_steps must be at least 1"):
        module(limit=0)

    # Under gradient accumulation the limit counts optimizer steps, not micro-batches: two bad batches of
    # one step are one skipped step (warned once, naming the first), the next step trains.
    model = module(limit=2)
    start = state()
    with pytest.warns(
        UserWarning, match=r"non-finite training loss at epoch 0, batch 0 \(total nan"
    ) as caught:
        _fit(model, [bad, bad, good[0], good[2]], tmp_path, accumulate_grad_batches=2)
    assert model.nonfinite_steps == 1
    assert sum("non-finite training" in str(w.message) for w in caught) == 1
    assert any(not torch.equal(value, start[name]) for name, value in state().items())
    # one bad batch spoils its whole step: bad+bad, then bad+good, are two skipped steps in a row
    model = module(limit=2)
    start = state()
    with pytest.raises(NonFiniteLossError, match=r"2 training steps in a row had a non-finite loss"):
        _fit(model, [bad, bad, bad, good[2]], tmp_path, accumulate_grad_batches=2)
    for name, value in model.student.named_parameters():  # no update (the good batch's statistics are kept)
        assert torch.equal(value, start[name]), name


def test_a_finite_loss_with_non_finite_gradients_is_skipped_too(tmp_path):
    """An absurd loss weight (w_refine 5e37: the loss, ~2.7e38, still fits in float32; its backward pass
    overflows to NaN) under 32-true, where no GradScaler looks at the gradients: each step is skipped (the
    parameters exactly as they started, where AdamW would have written NaN into them), warned about with the
    loss terms, counted; max_nonfinite_steps such steps in a row stop the run with one line."""
    from functools import partial

    from loftr_kd.errors import NonFiniteLossError
    from loftr_kd.lightning_module import DistillationModule
    from loftr_kd.losses import LossConfig
    from loftr_kd.models.student import build_student

    torch.set_num_threads(1)
    for limit in (10, 2):
        torch.manual_seed(0)
        student = build_student(input_height=96, input_width=128, refine="corr", border_removal=0)
        start = {k: v.detach().clone() for k, v in student.named_parameters()}
        module = DistillationModule(
            student,
            None,
            LossConfig(w_refine=5e37),
            partial(torch.optim.AdamW, lr=1e-3),
            max_nonfinite_steps=limit,
        )
        if limit == 10:
            with pytest.warns(
                UserWarning, match=r"non-finite training gradient at epoch 0, batch 2 \(total 2\.\d+e\+38"
            ):
                trainer = _fit(module, shifted_photo_pairs(0, 3), tmp_path)
            assert module.nonfinite_steps == 3
            assert trainer.callback_metrics["train/nonfinite_steps"] == 3
        else:
            with pytest.raises(
                NonFiniteLossError, match=r"2 training steps in a row had a non-finite gradient"
            ):
                _fit(module, shifted_photo_pairs(0, 3), tmp_path)
        for name, value in student.named_parameters():
            assert torch.equal(value, start[name]), name
        # the forward passes were finite: their BatchNorm statistics are kept, as the GradScaler keeps them
        assert all(torch.isfinite(v.float()).all() for v in student.state_dict().values())


def test_histograms_of_values_beyond_tensorboards_bins_are_left_out_not_fatal(tmp_path):
    """TensorBoard's histogram bins end at 1e20, and a tensor with nothing inside them made add_histogram
    raise ("The histogram is empty") and stop the run. Gradients of ~1e36 (w_refine 1e36: finite, so the
    step trains) are left out with one warning per logging step; the parameters' histograms are written."""
    from functools import partial

    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from loftr_kd.lightning_module import DistillationModule, MonitoringConfig
    from loftr_kd.losses import LossConfig
    from loftr_kd.models.student import build_student

    torch.manual_seed(0)
    torch.set_num_threads(1)
    student = build_student(input_height=96, input_width=128, refine="corr", border_removal=0)
    module = DistillationModule(
        student,
        None,
        LossConfig(w_refine=1e36),
        partial(torch.optim.AdamW, lr=1e-3),
        monitoring=MonitoringConfig(histogram_every_n_steps=1, log_match_images=False),
    )
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    with pytest.warns(
        UserWarning, match=r"\d+ histograms left out at step 0: values beyond TensorBoard's bins"
    ):
        _fit(module, shifted_photo_pairs(0, 2), tmp_path, logger=logger)
    assert module.nonfinite_steps == 0  # finite gradients: trained, not skipped
    (events,) = (tmp_path / "tb" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["histograms"])
    assert {f"params/{name}" for name, _ in student.named_parameters()} <= tags
    assert "grads/backbone.conv1.weight" not in tags  # ~1e36: left out


@pytest.mark.parametrize("strategy", [[], ["trainer=ddp_cpu"]], ids=["one-process", "ddp-2-cpu"])
def test_a_learning_rate_that_blows_the_loss_up_stops_the_run_in_one_line(tmp_path, strategy):
    """The usual cause of a NaN loss, end to end through the CLI: after the first step at lr 1e30 every
    loss is NaN; the run stops at max_nonfinite_steps in a row with one line (exit 2), no traceback. Under
    DDP (two CPU processes; Lightning refuses a skipped step there) every rank skips the same steps and
    stops with the same line."""
    root = tmp_path / "toy"
    write_toy_dataset(root, scenes=2, views=3, height=48, width=64)
    result = _train(
        tmp_path / "run",
        "data=blendedmvs",
        f"data.root={root}",
        "data.num_workers=0",
        "optim.optimizer.lr=1e30",
        "max_nonfinite_steps=2",
        *strategy,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = set(_error_lines(result.stderr))  # one line (one per rank under DDP)
    assert "2 training steps in a row had a non-finite loss" in line and "optim.optimizer.lr" in line
    assert "non-finite training loss at epoch 0, batch 1" in result.stderr  # the first one, warned
    assert "Traceback" not in result.stderr


def test_steps_the_16_mixed_grad_scaler_skips_are_counted(tmp_path):
    """Under 16-mixed (Lightning's MixedPrecision and its GradScaler; float16 autocast runs on the CPU too) a
    step whose gradients overflow is skipped by the scaler and counted in train/amp_skipped_steps: every
    step when the scaler's initial scale (2**16, halved on each skip) sends the scaled loss (~17 x 2**13 or
    more) and its float16 gradients beyond float16's range (65504), none at scale 1."""
    from functools import partial

    from pytorch_lightning.plugins.precision import MixedPrecision

    from loftr_kd.lightning_module import DistillationModule
    from loftr_kd.losses import LossConfig
    from loftr_kd.models.student import build_student

    torch.set_num_threads(1)
    counts = []
    for init_scale in (1.0, 2.0**16):
        torch.manual_seed(0)
        student = build_student(input_height=96, input_width=128, refine="corr", border_removal=0)
        module = DistillationModule(student, None, LossConfig(), partial(torch.optim.AdamW, lr=1e-3))
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
        trainer = _fit(module, shifted_photo_pairs(1, 4), tmp_path, plugins=plugins)
        counts.append(module.amp_skipped_steps)
        assert trainer.callback_metrics["train/amp_skipped_steps"] == module.amp_skipped_steps
    assert counts == [0, 4]


def test_the_machines_refusals_are_one_line_that_says_what_happened(tmp_path):
    import errno

    from loftr_kd.errors import is_user_error, one_line

    # A real full disk: Linux's /dev/full refuses every write.
    with pytest.raises(OSError) as full, open("/dev/full", "w") as out:
        out.write("x")
    assert is_user_error(full.value)
    assert "the disk is full" in one_line(full.value)
    # The errno of a file without read permission is that of a folder without write permission:
    # the line must not say "cannot write" of a file that was being read.
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "weights.pt"))
    assert one_line(denied).startswith(f"cannot access {tmp_path / 'weights.pt'}: Permission denied")
    read_only = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run")
    assert one_line(read_only).startswith(
        "cannot write /mnt/ro/run: Read-only file system (the file system is read-only)"
    )


def test_an_empty_training_list_is_named(tmp_path):
    """It said 'scenes need cams/pair.txt' of scenes that all had one."""
    from loftr_kd.data.datamodule import PairDataModule

    root = tmp_path / "toy"
    write_toy_dataset(root, scenes=2, views=3, height=48, width=64)
    (root / "training_list.txt").write_text("\n")
    module = PairDataModule(kind="blendedmvs", root=root, height=48, width=64, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"no training scenes \(.*training_list.txt lists no scene\)"):
        module.setup("fit")
