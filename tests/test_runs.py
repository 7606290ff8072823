"""Run management: a folder holds one run (a multirun's jobs too), a resumed run keeps its earlier best,
and a search trial run again outside its sweep trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from loftr_kd.config import CONFIG_DIR, register_resolvers
from loftr_kd.rundir import RunDirError, claim_run_dir, mark_run, read_claim
from loftr_kd.train import train

register_resolvers()

HEIGHT, WIDTH = 128, 192


def _tiny(scenes: Path, weights_dir: Path) -> list[str]:
    return [
        "debug=fast",
        "teacher=none",
        f"data.root={scenes}",
        f"data.height={HEIGHT}",
        f"data.width={WIDTH}",
        "fit_validation.enabled=false",
        "validate_before_training=false",
        "deploy.enabled=false",
        "monitoring.log_match_images=false",
        f"paths.weights_dir={weights_dir}",
    ]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOFTR_KD_DEBUG": "0", "HYDRA_FULL_ERROR": "0"}
    env.pop("LOFTR_KD_RUN_CLAIM", None)
    return subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


# ------------------------------------------------------------------------------------------ one run a folder
def test_a_folder_claimed_here_is_taken_again_only_while_its_run_runs(tmp_path: Path) -> None:
    """The Hydra callback claims a single run's folder and train() claims it again (same process): fine. Once
    that run ended, the same process (the next job of a multirun) is refused like any other."""
    run = tmp_path / "run"
    claim_run_dir(run, "train")
    claim_run_dir(run, "train")  # the callback's claim, taken again by train()
    mark_run(run, "finished")
    with pytest.raises(RunDirError, match=rf"run folder {run} already holds a finished train run"):
        claim_run_dir(run, "train")
    assert read_claim(run)["state"] == "finished"


def test_a_multirun_whose_jobs_share_a_folder_refuses_the_second_job(scenes: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _cli(
        "-m",
        "seed=1,2",
        *_tiny(scenes, tmp_path / "no_weights"),
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=same",
    )
    folder = sweep / "same"
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert errors == [
        f"loftr-kd-train: error: run folder {folder} already holds a finished train run; a run never "
        f"overwrites one and nothing in it was touched: give a new hydra.run.dir (or leave it to the "
        f"default), or resume that run into a new folder with ckpt_path={folder}"
    ]
    # job 0's run is whole: its claim, summary, checkpoints and config (Hydra had written job 1's over it)
    assert read_claim(folder)["state"] == "finished"
    summary = json.loads((folder / "summary.json").read_text())
    assert Path(summary["best_checkpoint"]).is_file()
    assert (folder / ".hydra" / "overrides.yaml").read_text().count("seed=1") == 1
    assert "seed=2" not in (folder / ".hydra" / "overrides.yaml").read_text()
    assert "seed: 1\n" in (folder / ".hydra" / "config.yaml").read_text()
    assert "seed: 1\n" in (folder / "config_resolved.yaml").read_text()
    assert len(list((folder / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # job 1 logged nothing


# ------------------------------------------------------------------------------------------ resume keeps best
def _cfg(run_dir: Path, scenes: Path, *extra: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[*_tiny(scenes, run_dir / "no_weights"), *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def test_a_run_resumed_into_a_new_folder_keeps_the_earlier_best(scenes: Path, tmp_path: Path) -> None:
    """The monitored value is the epoch, lowest best: the true best over all epochs is epoch 0, which only
    the first run trained. Lightning alone made the resumed run's first epoch the best."""
    lowest_epoch = ["optimized_metric=epoch", "callbacks.best_checkpoint.mode=min"]
    first, resumed, again = tmp_path / "first", tmp_path / "resumed", tmp_path / "again"
    train(_cfg(first, scenes, *lowest_epoch, "trainer.max_epochs=1"))
    earlier_best = first / "checkpoints" / "best-epoch000.ckpt"
    assert json.loads((first / "summary.json").read_text())["best_checkpoint"] == str(earlier_best)

    last = first / "checkpoints" / "last.ckpt"
    score = train(_cfg(resumed, scenes, *lowest_epoch, "trainer.max_epochs=3", f"ckpt_path={last}"))
    summary = json.loads((resumed / "summary.json").read_text())
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert score == summary["optimized_metric"]["best"] == 0.0
    assert summary["best_checkpoint"] == str(earlier_best) and earlier_best.is_file()
    assert not list((resumed / "checkpoints").glob("best-*.ckpt"))  # no epoch here was better

    # The earlier best file is gone: nothing to carry, the best is this run's own (epoch 1, its lowest).
    earlier_best.unlink()
    train(_cfg(again, scenes, *lowest_epoch, "trainer.max_epochs=3", f"ckpt_path={last}"))
    summary = json.loads((again / "summary.json").read_text())
    assert summary["optimized_metric"]["best"] == 1.0
    assert summary["best_checkpoint"] == str(again / "checkpoints" / "best-epoch001.ckpt")


# ------------------------------------------------------------------------------------------ a trial on its own
def test_a_search_trial_run_again_outside_its_sweep_trains(scenes: Path, tmp_path: Path) -> None:
    """In the sweep the trial is over its (impossible) budget and pruned; `make rerun` of it trains, with its
    latency measured and recorded."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    student = (
        "{student.backbone:resnet_fpn,student.coarse_stride:16,student.width:8,student.d_model:32,"
        "student.nhead:2,student.attention_layers:1}"
    )
    done = _cli(
        "-m",
        "hparams_search=student_latency",
        *_tiny(scenes, tmp_path / "no_weights"),
        "trainer.max_epochs=1",
        "search.height=96",
        "search.width=128",
        "search.repeats=3",
        "search.warmup=1",
        "search.budget_ms=0.0001",
        "search.budget_reference=null",
        "search.presets=[]",
        f"search.enqueue=[{student}]",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trial = sweep / "0"
    assert json.loads((trial / "search_trial.json").read_text())["status"] == "pruned"
    assert not (trial / "summary.json").exists()

    rerun = tmp_path / "rerun"
    done = _cli(  # the Makefile's rerun
        "--config-path",
        str(trial / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir={rerun}",
        "+hydra.callbacks.check_config._target_=loftr_kd.config_check.CheckTrainConfig",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((rerun / "search_trial.json").read_text())
    assert record["status"] == "trained" and record["latency"]["over_budget"]
    assert record["reason"].endswith("trained: search.prune=false") and record["latency"]["median_ms"] > 0
    summary = json.loads((rerun / "summary.json").read_text())
    assert Path(summary["best_checkpoint"]).is_file()
    assert read_claim(rerun)["state"] == "finished"
    assert "the latency gate reports and never prunes" in (rerun / "train.log").read_text()
