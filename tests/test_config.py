"""Every top-level config composes, and its objects instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from loftr_kd.config import CONFIG_DIR, register_resolvers

register_resolvers()


def _compose(overrides: list[str], tmp_path: Path, config_name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=paper"],
        ["experiment=stride8"],
        ["teacher=none"],
        ["teacher=student", "teacher.weights=weights/student_paper.pt"],
        ["teacher=xfeat"],
        ["teacher=lightglue", "teacher.features=aliked"],
        ["experiment=distil_published"],
        ["experiment=distil_published", "teacher=none"],
        ["debug=fast"],
        ["trainer=ddp"],
        ["trainer=ddp_cpu"],
        ["data=blendedmvs", "data.root=/nonexistent"],
        ["data=homography", "data.root=/nonexistent"],
        ["data=homography", "data.root=/nonexistent", "+data.val_homography.max_rotation_deg=60"],
        ["hparams_search=optuna"],
        ["hparams_search=student_latency"],
        ["hparams_search=student_pareto"],
        ["hparams_search=student_latency_cpu"],
        ["hparams_search=student_latency", "cluster=slurm"],
    ],
)
def test_train_config_composes(overrides: list[str], tmp_path: Path) -> None:
    cfg = _compose(overrides, tmp_path)
    # Every interpolation outside Hydra's own node resolves (no missing mandatory values left).
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert cfg.seed == 42
    assert cfg.student.input_height == cfg.data.height


def test_student_and_teacher_instantiate(tmp_path: Path) -> None:
    cfg = _compose(["data.height=64", "data.width=96"], tmp_path)
    student = instantiate(cfg.student)
    assert student.config.input_height == 64 and student.config.input_width == 96
    cfg_none = _compose(["teacher=none"], tmp_path)
    assert not cfg_none.get("teacher")


def test_paper_experiment_settings(tmp_path: Path) -> None:
    cfg = _compose(["experiment=paper"], tmp_path)
    assert (cfg.data.height, cfg.data.width) == (480, 640)
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 32
    assert cfg.trainer.precision == "16-mixed"
    assert cfg.trainer.max_epochs == 35 and cfg.data.pairs_per_epoch == 5000
    assert (cfg.loss.w_gt, cfg.loss.w_kd, cfg.loss.temperature, cfg.loss.kd_scale) == (0.3, 0.7, 5.0, 10.0)
    optimizer = instantiate(cfg.optim.optimizer)
    assert optimizer.func.__name__ == "AdamW"
    assert cfg.optim.scheduler.step_size == 15


def test_runs_go_under_outputs(tmp_path: Path) -> None:
    cfg = _compose([], tmp_path)
    assert Path(cfg.paths.log_dir).name == "outputs"
    assert cfg.hydra.run.dir.startswith(cfg.paths.log_dir)


@pytest.mark.parametrize(
    ("overrides", "tolerance"),
    [([], 0.1), (["supervision.depth_tolerance=0.2"], 0.2), (["loss.depth_tolerance=0.05"], 0.05)],
)
def test_depth_tolerance_is_a_supervision_setting_with_its_old_name_kept(overrides, tolerance, tmp_path):
    from loftr_kd.losses import LossConfig
    from loftr_kd.supervision import SupervisionConfig
    from loftr_kd.train import build_loss_and_supervision

    loss, supervision = build_loss_and_supervision(_compose(overrides, tmp_path))
    assert isinstance(loss, LossConfig) and isinstance(supervision, SupervisionConfig)
    assert supervision.depth_tolerance == tolerance
    with pytest.raises(ValueError, match="depth_tolerance"):
        SupervisionConfig(depth_tolerance=-1.0)


def test_student_search_configs(tmp_path: Path) -> None:
    """The search student's defaults are the fast preset; the Pareto variant is a two-objective study."""
    import dataclasses

    from loftr_kd.search import SearchSettings

    cfg = _compose(["hparams_search=student_latency"], tmp_path)
    fast = instantiate(_compose(["student=fast"], tmp_path).student).config
    # (its refinement head, used only when the search turns refinement on, is fast_refine's separable one)
    assert instantiate(cfg.student).config == dataclasses.replace(fast, refine_head="separable")
    assert SearchSettings.from_config(OmegaConf.to_container(cfg.search)).budget_reference == "fast"
    assert cfg.hydra.sweeper.max_failure_rate == 1.0 and cfg.hydra.sweeper.sampler.seed == cfg.seed
    pareto = _compose(["hparams_search=student_pareto"], tmp_path)
    assert list(pareto.hydra.sweeper.direction) == ["maximize", "minimize"]
    assert pareto.search.objective == "pareto" and pareto.hydra.sweeper.params == cfg.hydra.sweeper.params


def test_wide_homographies_experiment_is_stage3_but_the_training_range(tmp_path: Path) -> None:
    """``experiment=stage3_wide_homographies`` is the default's stage 3 with wider training homographies;
    its validation pairs keep the range the other stage-3 runs validate on."""
    overrides = ["init_weights=stage2.pt"]
    base = _compose(["experiment=student_default_stage3", *overrides], tmp_path)
    wide = _compose(["experiment=stage3_wide_homographies", *overrides], tmp_path)
    photos = wide.data.sources.photos
    assert photos.homography.max_rotation_deg == 90.0 and photos.val_homography.max_rotation_deg == 60.0
    with open_dict(wide):
        del photos["homography"], photos["val_homography"]
        wide.task_name = base.task_name
    drop = [k for k in base if k != "hydra"]
    assert OmegaConf.masked_copy(wide, drop) == OmegaConf.masked_copy(base, drop)


def test_homography_data_config_takes_a_validation_range(tmp_path: Path) -> None:
    """``data=homography`` passes ``val_homography`` through to the validation pairs only."""
    import cv2
    import numpy as np

    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        cv2.imwrite(str(images / f"p{k}.png"), (rng.random((60, 80)) * 255).astype(np.uint8))
    cfg = _compose(
        [
            "data=homography",
            f"data.root={images}",
            "data.num_workers=0",
            "data.val_pairs=2",
            "data.homography.max_rotation_deg=90",
            "+data.val_homography.max_rotation_deg=20",
        ],
        tmp_path,
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule.train_dataset.max_rotation_deg == 90.0
    assert datamodule.val_dataset.max_rotation_deg == 20.0 and datamodule.val_dataset.max_zoom == 3.0


def test_the_best_checkpoint_of_a_lower_is_better_metric_is_its_lowest(tmp_path):
    """optimized_metric=val/loss picked (and exported) the epoch of the highest loss: mode was max for all."""
    from loftr_kd.config import metric_mode

    for name in ("val/loss", "val/student/epe_median_px", "val/student/mae", "val/kd_loss"):
        assert metric_mode(name) == "min", name
    for name in ("val/student/f1", "val/student/precision@3px", "val/student/auc@5", "val/student/recall"):
        assert metric_mode(name) == "max", name
    for metric, mode in (("val/loss", "min"), ("val/student/f1", "max")):
        cfg = _compose([f"optimized_metric={metric}"], tmp_path)
        assert cfg.callbacks.best_checkpoint.mode == mode


def test_every_data_and_experiment_config_passes_the_pre_run_check(tmp_path):
    """A stricter type rule once refused data=unlabeled's labels_dir (a Path | None given as a string)."""
    from loftr_kd.config_check import ConfigError, check_train_config

    data_options = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
    assert {"unlabeled", "homography", "synthetic"} <= set(data_options)
    for option in data_options:
        root = [] if option == "mixed" else ["data.root=/x"]  # a mix names its sources' roots
        check_train_config(_compose([f"data={option}", *root], tmp_path))
    check_train_config(_compose(["data=unlabeled", "data.root=/x", "+data.val_root=/y"], tmp_path))
    for option in sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")):
        try:
            check_train_config(_compose([f"experiment={option}"], tmp_path))
        except ConfigError as error:  # a recipe, not a training experiment: refused on purpose, and said so
            assert "loftr-kd-recipe" in str(error), (option, error)
