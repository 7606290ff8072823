"""Multi-stage recipes (loftr_kd.recipe, loftr-kd-recipe): steps run in order, finished steps are
skipped, an interrupted training stage resumes, the last step ships a .pt and a checked ONNX file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from loftr_kd.cli.recipe import main as recipe_main
from loftr_kd.models.student import load_student
from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS
from loftr_kd.recipe import Recipe, RecipeError, Step, steps_from_config

HEIGHT, WIDTH = 128, 192


def _train(*extra: str) -> list[str]:
    return [
        "debug=fast",
        "data.root={out_dir}/scenes",
        f"data.height={HEIGHT}",
        f"data.width={WIDTH}",
        "validate_before_training=false",
        "deploy.enabled=false",
        "paths.weights_dir={out_dir}/no_weights",
        "monitoring.log_match_images=false",
        *extra,
    ]


def _steps() -> list[dict]:
    return [
        {
            "name": "scenes",
            "command": [
                "loftr-kd-synth",
                "--out",
                "{out_dir}/scenes",
                "--scenes",
                "2",
                "--views",
                "4",
                "--height",
                "144",
                "--width",
                "192",
                "--seed",
                "3",
            ],
            "creates": "{out_dir}/scenes/synthetic_info.json",
        },
        {"name": "stage1", "train": _train()},
        {"name": "stage2", "train": _train("init_weights={stage1.best_checkpoint}", "trainer.max_epochs=1")},
        {
            "name": "ship",
            "ship": {
                "from": "stage2",
                "name": "tiny",
                "height": HEIGHT,
                "width": WIDTH,
                "match_threshold": 0.1,
                "border_removal": 1,
                "export": ["parity_pairs=1", "tensorrt.enabled=false"],
            },
        },
    ]


def test_steps_are_checked() -> None:
    with pytest.raises(RecipeError, match="exactly one of"):
        Step.from_mapping({"name": "a", "command": ["x"], "train": ["y"], "creates": "z"})
    with pytest.raises(RecipeError, match="creates"):
        Step.from_mapping({"name": "a", "command": ["x"]})
    with pytest.raises(RecipeError, match="unknown keys"):
        Step.from_mapping({"name": "a", "train": ["y"], "typo": 1})
    with pytest.raises(RecipeError, match="unique"):
        Recipe(steps_from_config([{"name": "a", "train": ["y"]}, {"name": "a", "train": ["z"]}]), "/tmp/x")
    with pytest.raises(RecipeError, match="has not finished"):
        Recipe(steps_from_config(_steps()), "/nonexistent/recipe").best_checkpoint("stage1")


@pytest.mark.slow
def test_recipe_runs_resumes_an_interrupted_stage_and_ships(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    steps = steps_from_config(_steps())
    # An interrupted first attempt of stage 1 (one of its two epochs done): checkpoints, no summary.
    interrupted = steps_from_config(
        _steps()[:1] + [{"name": "stage1", "train": _train("trainer.max_epochs=1")}]
    )
    Recipe(interrupted, out).run()
    first = out / "stage1-1"
    (first / "summary.json").unlink()
    recipe = Recipe(steps, out, ship_to=tmp_path / "weights")
    assert [status for _, status in recipe.plan()] == ["done", "resume", "run", "run"]

    state = recipe.run()
    assert (out / "stage1-2" / "summary.json").is_file()
    resumed = json.loads((out / "stage1-2" / "run_info.json").read_text())["command"]
    assert f"ckpt_path={first}" in resumed
    final = torch.load(out / "stage1-2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 1  # the resumed run ended where the uninterrupted one would (2 epochs)
    assert recipe.finished_run("stage1") == out / "stage1-2"
    assert (
        "init_weights=" + str(recipe.best_checkpoint("stage1"))
        in json.loads((out / "stage2-1" / "run_info.json").read_text())["command"]
    )

    for name in ("scenes", "stage1", "stage2", "ship"):
        entry = state["steps"][name]
        assert entry["status"] == "done" and entry["wall_s"] > 0 and entry["hardware"]["cpu_cores"] >= 1
    assert json.loads((out / "recipe.json").read_text()) == state

    student = load_student(out / "tiny.pt")
    assert (student.config.input_height, student.config.input_width) == (HEIGHT, WIDTH)
    assert (student.config.match_threshold, student.config.border_removal) == (0.1, 1)  # set at shipping
    for path in (out / "tiny.pt", out / "tiny.onnx"):
        assert (tmp_path / "weights" / path.name).read_bytes() == path.read_bytes()
    session = ort.InferenceSession(str(out / "tiny.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 1, HEIGHT, WIDTH), dtype=np.float32)
    outputs = session.run(None, {i.name: image for i in session.get_inputs()})
    assert outputs[0].shape[0] == 1

    # Shipping to another folder later is still to do; it ships the same files.
    late = Recipe(steps, out, ship_to=tmp_path / "weights2")
    assert [s for _, s in late.plan()][-1] == "run"
    late.run()
    assert (tmp_path / "weights2" / "tiny.onnx").read_bytes() == (out / "tiny.onnx").read_bytes()

    # Everything done: a rerun changes nothing.
    mtime = (out / "tiny.pt").stat().st_mtime_ns
    state = json.loads((out / "recipe.json").read_text())
    again = Recipe(steps, out).run()
    assert [s for _, s in Recipe(steps, out).plan()] == ["done"] * 4
    assert (out / "tiny.pt").stat().st_mtime_ns == mtime
    assert again["steps"] == state["steps"]


def test_a_failing_step_names_itself_and_its_log(tmp_path: Path) -> None:
    steps = steps_from_config([{"name": "bad", "train": ["no_such_key=1"]}])
    with pytest.raises(RecipeError, match=r"step bad failed .*bad\.log"):
        Recipe(steps, tmp_path).run()
    assert json.loads((tmp_path / "recipe.json").read_text())["steps"]["bad"]["status"] == "interrupted"


def test_cli_plans_the_shipped_default(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    recipe_main(
        [
            "experiment=student_default",
            "plan_only=true",
            f"paths.log_dir={tmp_path}",
            f"paths.data_dir={tmp_path}/data",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "synthetic_scenes",
        "training_photos",
        "training_photos_more",
        "heldout_photos",
        "heldout_pairs",
        "validation_pairs",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "ship",
    ]
    assert all(line.split()[-1] == "run" for line in lines)
    with pytest.raises(SystemExit) as exit_info:
        recipe_main([f"paths.log_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "experiment=<name>" in capsys.readouterr().err
    assert os.environ.get("LOFTR_KD_DEBUG", "0") in ("", "0")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("until=nosuchstep", r"no step named 'nosuchstep' \(steps: synthetic_scenes, "),
        ("recipe.steps=abc", r"recipe.steps='abc': expected a list of steps"),
        ("recipe.steps=3", r"recipe.steps=3: expected a list of steps"),  # was a TypeError traceback
        ("recipe.out_dir={file}", r"the run folder .*afile is a file, not a folder"),
    ],
)
def test_bad_recipe_settings_are_one_line_even_when_only_planning(
    capsys, tmp_path, override, message
) -> None:
    """until= was not checked by plan_only; steps=abc and a file as the recipe's folder were tracebacks."""
    import re

    (tmp_path / "afile").write_text("mine")
    argv = ["experiment=student_default", "plan_only=true", f"paths.log_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        recipe_main([*argv, override.format(file=tmp_path / "afile")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_recipe_is_not_a_training_experiment() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.config import CONFIG_DIR, register_resolvers
    from loftr_kd.config_check import ConfigError, check_train_config

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=["experiment=student_default"])
        stage2 = compose(
            config_name="train", overrides=["experiment=student_default_stage2", "init_weights=x"]
        )
        stage3 = compose(
            config_name="train", overrides=["experiment=student_default_stage3", "init_weights=x"]
        )
    with pytest.raises(ConfigError, match="loftr-kd-recipe experiment=student_default"):
        check_train_config(cfg)
    check_train_config(stage2)
    assert stage2.data.root.endswith("data/photos_train_wide")
    check_train_config(stage3)  # the shipped size, scenes and photos, BatchNorm statistics held
    assert (stage3.data.height, stage3.data.width, stage3.freeze_batchnorm) == (480, 640, True)
    assert stage3.trainer.max_epochs == 4  # the shipped default is the validation pick of 4 epochs
    # 43 photos (train-more), validated on the 30 photos' pairs every earlier stage-3 run was scored on
    assert stage3.data.sources.photos.root.endswith("data/photos_train_more")
    assert stage3.data.sources.photos.val_root.endswith("data/photos_train_wide")
    steps = {step["name"]: step for step in cfg.recipe.steps}
    assert list(steps["training_photos_more"]["command"][1:3]) == ["--set", "train-more"]
    assert {k: v for k, v in stage3.data.weights.items() if v > 0} == {"synthetic": 0.5, "photos": 0.5}
    # picked by the robust-fit validation (loftr_kd.validation), which the best checkpoint follows
    assert stage3.optimized_metric == "val/student/auc@5"
    assert stage3.callbacks.best_checkpoint.monitor == "val/student/auc@5"
    # the shipped file is stage 3's second seed (docs/distillation.md)
    assert "seed=43" in list(steps["stage3"]["train"])
    # stage 4: the whole student once more, its refinement supervised at corner queries (docs/refinement.md)
    assert steps["ship"]["ship"]["from"] == "stage4"
    assert steps["stage4"]["train"][:2] == [
        "experiment=stage3_corner",
        "init_weights={stage3.best_checkpoint}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        stage4 = compose(config_name="train", overrides=["experiment=stage3_corner", "init_weights=x"])
    check_train_config(stage4)
    assert (stage4.student.refine_query, stage4.data.height, stage4.freeze_batchnorm) == ("corner", 480, True)
    assert stage4.data.sources.photos.val_root == stage3.data.sources.photos.val_root
    # shipped with corner queries (docs/refinement.md), as the shipped file says
    assert steps["ship"]["ship"]["refine_query"] == "corner"
    assert load_student(DEFAULT_STUDENT_WEIGHTS).config.refine_query == "corner"
    # and with a match border of one cell (docs/refinement.md, "The match border")
    assert steps["ship"]["ship"]["border_removal"] == 1
    assert load_student(DEFAULT_STUDENT_WEIGHTS).config.border_removal == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "how", "status"), [(15, "SIGTERM", 143), (2, "Ctrl-C", 130)], ids=["sigterm", "ctrl-c"]
)
def test_a_stop_reaches_the_training_step_which_saves_and_the_next_run_resumes(
    tmp_path: Path, signum: int, how: str, status: int
) -> None:
    """SIGTERM or Ctrl-C to loftr-kd-recipe is passed on to the training, which stops as on its own (SIGTERM:
    interrupted.ckpt at the exact step) and marks its run interrupted; then the recipe stops in one line."""
    import sys

    import yaml

    from conftest import signal_when
    from loftr_kd.rundir import read_claim
    from loftr_kd.train import resolve_resume_checkpoint

    out = tmp_path / "recipe"
    specs = [
        {
            "name": "scenes",
            "command": _steps()[0]["command"],
            "creates": "{out_dir}/scenes/synthetic_info.json",
        },
        {"name": "stage1", "train": _train("data.pairs_per_epoch=400")},
    ]
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    recipe = {"recipe": {"name": "tiny_stop", "out_dir": str(out), "steps": specs}}
    (conf / "tiny_stop.yaml").write_text("# @package _global_\n" + yaml.safe_dump(recipe))
    first = out / "stage1-1"
    step_ckpt = first / "checkpoints" / "step.ckpt"
    command = [
        sys.executable,
        "-m",
        "loftr_kd.cli.recipe",
        "experiment=tiny_stop",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
    ]
    returncode, stderr = signal_when(command, step_ckpt.exists, signum, timeout=300)
    assert returncode == status, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"loftr-kd-recipe: stopped by {how}"
    assert not _processes_naming(f"hydra.run.dir={first}"), "the training process outlived the recipe"

    claim = read_claim(first)  # the training ran its own stop: its run is interrupted, not "running"
    assert claim["state"] == "interrupted", claim
    log = (out / "stage1.log").read_text()
    assert f"Stopped by {how} at global step" in log
    resume_from = resolve_resume_checkpoint(str(first))
    if how == "SIGTERM":  # a checkpoint at the exact step it stopped, newer than the periodic step.ckpt
        assert Path(resume_from) == first / "checkpoints" / "interrupted.ckpt"
        saved = torch.load(resume_from, map_location="cpu", weights_only=True)["global_step"]
        assert saved >= torch.load(step_ckpt, map_location="cpu", weights_only=True)["global_step"]
        assert f"Stopped by SIGTERM at global step {saved}: resumable checkpoint" in log

    state = json.loads((out / "recipe.json").read_text())["steps"]["stage1"]
    assert state["status"] == "interrupted" and state["wall_s"] > 0
    assert not (first / "summary.json").exists()
    recipe_steps = steps_from_config(specs)
    assert [s for _, s in Recipe(recipe_steps, out).plan()] == ["done", "resume"]
    assert f"ckpt_path={first}" in Recipe(recipe_steps, out)._train_argv(recipe_steps[1])


def _processes_naming(marker: str) -> list[str]:
    """Process ids whose command line holds ``marker``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            pass  # the process ended while we looked
    return found


def test_a_training_experiment_given_as_a_recipe_is_one_line(capsys):
    """--help lists every experiment; choosing a training one failed in Hydra's composition (exit 1, a
    multi-line error about the defaults list)."""
    from loftr_kd.cli.recipe import main, recipe_names

    assert "student_default" in recipe_names() and "paper" not in recipe_names()
    with pytest.raises(SystemExit) as info:
        main(["experiment=paper", "plan_only=true"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("loftr-kd-recipe: error: experiment=paper is a training experiment")
    assert "recipes: student_default" in line
