"""Latency-aware student search: knobs, latency gate, trial records, a real 3-trial sweep, SLURM config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from loftr_kd.config import CONFIG_DIR, preset_values, register_resolvers
from loftr_kd.config_check import ConfigError, check_train_config
from loftr_kd.models.student import StudentConfig, build_student, count_parameters
from loftr_kd.search import (
    RECORD_NAME,
    SearchSettings,
    SearchTrialFailed,
    begin_trial,
    measure_latency,
    pareto_front,
    preset_knobs,
    search_student_values,
)
from loftr_kd.train import train

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
register_resolvers()

HEIGHT, WIDTH = 128, 192
# A student far slower than `fast` (stride 8, 4x the cells; wide): over a 1.5 x fast budget at any size.
BIG = (
    "{student.backbone:resnet_fpn,student.coarse_stride:8,student.width:32,student.d_model:64,"
    "student.nhead:4,student.attention_layers:3}"
)


def _cfg(run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="train",
            overrides=[
                "hparams_search=student_latency",
                "debug=fast",
                f"data.height={HEIGHT}",
                f"data.width={WIDTH}",
                f"paths.weights_dir={run_dir / 'no_weights'}",
                "search.height=96",
                "search.width=128",
                "search.repeats=3",
                "search.warmup=1",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


# ------------------------------------------------------------------------------------------ the space
def test_knobs_reproduce_the_presets() -> None:
    """The presets are points of the search space: fast exactly, paper without its two quirks."""
    fast = StudentConfig.from_dict({**search_student_values(**preset_knobs("fast")), "refine_head": "conv"})
    assert fast == StudentConfig.from_dict(preset_values("fast"))
    paper = StudentConfig.from_dict(search_student_values(**preset_knobs("paper")))
    published = {**preset_values("paper"), "pe_temp_bug_fix": True, "keep_unused_fpn": False}
    assert paper == StudentConfig.from_dict(published)
    # conf/student/paper.yaml: the published student minus its 33,920 dead FPN parameters.
    assert count_parameters(build_student(**search_student_values(**preset_knobs("paper")))) == 124_920


def test_knobs_to_stage_sizes() -> None:
    values = search_student_values(backbone="resnet_fpn", coarse_stride=16, width=8, d_model=48, nhead=4)
    assert values["block_dims"] == (8, 16, 32, 48) and values["initial_dim"] == 8
    assert values["block_depths"] is None  # resnet_fpn: LoFTR's fixed two blocks per stage
    values = search_student_values(
        backbone="fast", coarse_stride=8, width=16, depth=2, last_depth=3, d_model=64, attention_layers=3
    )
    assert values["block_dims"] == (16, 64) and values["block_depths"] == (2, 3)
    assert values["layer_names"] == ("self", "cross") * 3 and values["d_ffn"] == 64
    capped = search_student_values(backbone="fast", coarse_stride=16, width=64, d_model=32)
    assert capped["block_dims"] == (32, 32, 32) and capped["initial_dim"] == 32
    build_student(**capped)  # a valid student


def test_pareto_front() -> None:
    # (latency, quality): 1 is dominated by 0 (slower, worse); 3 by 2; equal points both stay.
    points = [(10.0, 0.5), (12.0, 0.4), (20.0, 0.8), (25.0, 0.7), (5.0, 0.1), (20.0, 0.8)]
    assert pareto_front(points) == [4, 0, 2, 5]


# ------------------------------------------------------------------------------------------ latency
def test_latency_is_measured_and_decides() -> None:
    config = StudentConfig.from_dict({**preset_values("fast"), "input_height": 96, "input_width": 128})
    tiny = measure_latency(
        config,
        SearchSettings(budget_ms=1e-4, budget_reference=None, repeats=3, warmup=1, height=96, width=128),
    )
    assert tiny["median_ms"] > 0 and tiny["over_budget"] and tiny["budget_ms"] == 1e-4
    roomy = measure_latency(
        config,
        SearchSettings(budget_ms=1e5, budget_reference=None, repeats=3, warmup=1, height=96, width=128),
    )
    assert not roomy["over_budget"]
    relative = measure_latency(
        config,
        SearchSettings(
            budget_reference="fast", budget_factor=1e-3, repeats=3, warmup=1, height=96, width=128
        ),
    )
    assert relative["reference"] == "fast" and relative["reference_median_ms"] > 0
    assert relative["budget_ms"] == pytest.approx(1e-3 * relative["reference_median_ms"])
    assert relative["ratio"] == pytest.approx(relative["median_ms"] / relative["reference_median_ms"])
    assert relative["over_budget"]  # 1000x faster than itself: never


def test_over_budget_trial_is_pruned_before_any_data_is_read(tmp_path: Path) -> None:
    """The data root does not exist: a trial that loaded data or trained would fail."""
    run = tmp_path / "run"
    cfg = _cfg(
        run,
        f"data.root={tmp_path / 'missing'}",
        "student.width=8",  # not a preset (presets are trained for comparison, whatever their latency)
        "search.budget_ms=0.0001",
        "search.budget_reference=null",
    )
    value = train(cfg)
    record = json.loads((run / RECORD_NAME).read_text())
    assert record["status"] == "pruned" and "over budget before training" in record["reason"]
    assert value == record["objective"] < 0  # below any feasible F1
    assert record["latency"]["median_ms"] > 0 and record["preset"] is None
    assert not (run / "checkpoints").exists() and not (run / "summary.json").exists()


def test_invalid_architecture_is_a_failed_trial_with_its_reason(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(run, f"data.root={tmp_path / 'missing'}", "student.nhead=3")
    with pytest.raises(SearchTrialFailed, match=r"d_model \(32\) must be divisible by nhead \(3\)"):
        train(cfg)
    record = json.loads((run / RECORD_NAME).read_text())
    assert record["status"] == "failed" and "divisible by nhead" in record["reason"]
    # Not a ValueError: the entry point would turn that into exit status 2 and end the whole sweep.
    assert not issubclass(SearchTrialFailed, ValueError)


def test_bad_search_settings_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search.objective='best': expected one of constrained, pareto"):
        check_train_config(_cfg(tmp_path, "search.objective=best"))
    with pytest.raises(ConfigError, match=r"did you mean search.budget_ms"):
        check_train_config(_cfg(tmp_path, "+search.budget_mss=3"))
    with pytest.raises(ConfigError, match=r"search.repeats=0: expected an integer >= 1"):
        check_train_config(_cfg(tmp_path, "search.repeats=0"))


def test_ddp_ranks_follow_rank_zeros_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks > 0 do not time anything: they wait for rank 0's record, so all ranks decide alike."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg(run, f"data.root={tmp_path / 'missing'}")
    record = {"status": "pruned", "objective": -0.25, "reason": "over budget before training: ..."}

    def rank_zero_writes_later() -> None:
        time.sleep(1.0)
        (run / RECORD_NAME).write_text(json.dumps(record))

    monkeypatch.setenv("LOCAL_RANK", "1")
    writer = threading.Thread(target=rank_zero_writes_later)
    writer.start()
    trial = begin_trial(cfg, run)
    writer.join()
    assert trial.done == -0.25 and not trial.rank_zero


# ------------------------------------------------------------------------------------------ a sweep
def _run_sweep(sweep_dir: Path, scenes: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A real sweep through the command line, on tiny settings (one epoch of 8 pairs per trained trial)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "loftr_kd.cli.train",
            "-m",
            "debug=fast",
            f"data.root={scenes}",
            f"data.height={HEIGHT}",
            f"data.width={WIDTH}",
            "data.val_pairs=2",
            "trainer.max_epochs=1",
            "deploy.enabled=false",
            "monitoring.histogram_every_n_steps=0",
            f"paths.weights_dir={sweep_dir.parent / 'no_weights'}",
            "search.height=240",
            "search.width=320",
            "search.repeats=5",
            "search.warmup=1",
            "search.budget_factor=1.5",
            "search.presets=[fast]",
            f"hydra.sweep.dir={sweep_dir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sweep(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 trials: the fast preset (trained), a far slower student (pruned), d_model % nhead != 0 (failed)."""
    sweep_dir = tmp_path_factory.mktemp("search") / "sweep"
    _run_sweep(
        sweep_dir,
        scenes,
        "hparams_search=student_latency",
        f"search.enqueue=[{BIG},{{student.nhead:3,student.d_model:32}}]",
        "student.nhead=choice(1,2,3,4)",  # a command-line search space, as the sweeper allows
        "hydra.sweeper.n_trials=3",
    )
    return sweep_dir


@pytest.mark.slow
def test_three_trial_search_writes_table_and_plot(sweep: Path) -> None:
    report = json.loads((sweep / "search_report.json").read_text())
    trials = report["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2]
    assert [t["status"] for t in trials] == ["trained", "pruned", "failed"]

    trained, pruned, failed = trials
    assert trained["preset"] == "fast" and isinstance(trained["quality"], float)
    assert trained["optuna_state"] == "COMPLETE" and trained["optuna_values"] == [trained["quality"]]
    assert (Path(trained["run_dir"]) / "checkpoints").is_dir()

    # Pruned on its measured latency, before it trained: no checkpoint, no summary.
    assert pruned["ratio"] > 1.5 and "over budget before training" in pruned["reason"]
    assert not (Path(pruned["run_dir"]) / "checkpoints").exists()
    assert not (Path(pruned["run_dir"]) / "summary.json").exists()
    assert pruned["optuna_state"] == "COMPLETE" and pruned["optuna_values"][0] < 0  # the penalty

    assert "divisible by nhead" in failed["reason"] and failed["optuna_state"] == "FAIL"
    assert report["pareto_front"] == [0]

    table = (sweep / "search_report.md").read_text()
    assert table.count("\n| ") == 5  # header, rule and one row per trial
    assert "1 trained, 1 pruned before training (over budget), 1 failed" in table
    image = cv2.imread(str(sweep / "search_report.png"))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    assert "best_params" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.slow
def test_pareto_study_reports_both_objectives(scenes: Path, tmp_path: Path) -> None:
    """hparams_search=student_pareto: Optuna's own front holds (quality, latency) of the trained trial."""
    import yaml

    sweep_dir = tmp_path / "pareto"
    _run_sweep(
        sweep_dir,
        scenes,
        "hparams_search=student_pareto",
        f"search.enqueue=[{BIG}]",
        "hydra.sweeper.n_trials=2",
    )
    report = json.loads((sweep_dir / "search_report.json").read_text())
    trials = report["trials"]
    assert [t["status"] for t in trials] == ["trained", "pruned"]
    trained, pruned = trials
    # Optuna's latency is the ratio to the interleaved reference (the report's ×ref), not the raw median
    # that moves with the machine's load; the report's latency ms is that ratio times one sweep-wide median.
    assert trained["optuna_values"] == [trained["quality"], pytest.approx(trained["ratio"])]
    assert trained["latency_ms"] == pytest.approx(trained["ratio"] * report["meta"]["reference_ms"])
    # a pruned trial: its penalty (below any F1), not a trained-looking 0.0
    assert pruned["optuna_values"] == [
        pytest.approx(-(pruned["ratio"] / 1.5 - 1)),
        pytest.approx(pruned["ratio"]),
    ]
    assert pruned["optuna_values"][0] < 0
    solutions = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["solutions"]
    assert [s["values"] for s in solutions] == [trained["optuna_values"]]
    assert "latency as the ratio to fast" in (sweep_dir / "search_report.md").read_text()


def _enqueue(params: dict) -> str:
    """``search.enqueue`` entry on the command line: ``{key:value,...}``."""
    return "{" + ",".join(f"{k}:{v}" for k, v in params.items()) + "}"


# The `paper` preset's architecture with other loss weights: not a preset trial.
ARCHITECTURE_KNOBS = ("backbone", "coarse_stride", "width", "depth", "last_depth", "d_model", "nhead")
PAPER_OTHER_LOSS = {
    **{f"student.{k}": preset_knobs("paper")[k] for k in (*ARCHITECTURE_KNOBS, "attention_layers", "refine")},
    "loss.w_kd": 0.5,
    "loss.w_refine": 2.0,
}


def test_sqlite_study_sweeps_and_continues(scenes: Path, tmp_path: Path) -> None:
    """A database storage (the `sweep` extra pins SQLAlchemy < 2 for optuna 2.x): the presets are enqueued
    there too, only the enqueued preset trial trains over the budget, and a second sweep with the same
    storage continues the study without repeating what it holds; each report maps its own jobs."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = (
        "hparams_search=student_latency",
        f"hydra.sweeper.storage={storage}",
        "search.presets=[paper]",
    )
    first = _run_sweep(
        tmp_path / "first",
        scenes,
        *common,
        f"search.enqueue=[{_enqueue(PAPER_OTHER_LOSS)}]",
        "hydra.sweeper.n_trials=2",
    )
    trials = json.loads((tmp_path / "first" / "search_report.json").read_text())["trials"]
    assert [(t["preset"], t["status"]) for t in trials] == [("paper", "trained"), ("paper", "pruned")]
    preset, other = trials
    assert preset["ratio"] > 1.5 and "trained for comparison" in preset["reason"]  # over budget, a preset
    assert "over budget before training" in other["reason"] and other["w_kd"] == 0.5
    assert [t["optuna_state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert other["optuna_values"][0] < 0 and preset["optuna_values"][0] < 0  # both get the penalty

    second = _run_sweep(
        tmp_path / "second",
        scenes,
        *common,
        f"search.enqueue=[{_enqueue(PAPER_OTHER_LOSS)},{BIG}]",
        "hydra.sweeper.n_trials=1",
    )
    log = second.stdout + second.stderr
    assert "already holds 2 trials (2 complete)" in log, log[-3000:]
    assert "preset paper is not enqueued again: the study holds it (trial 0, complete)" in log
    assert "is not enqueued again: the study holds it (trial 1, complete)" in log
    (only,) = json.loads((tmp_path / "second" / "search_report.json").read_text())["trials"]
    assert only["trial"] == 0 and only["status"] == "pruned" and only["preset"] is None  # BIG
    # the study's trial 2, not its trial 0 (the first sweep's paper preset)
    assert only["optuna_state"] == "COMPLETE"
    assert only["optuna_values"] == [pytest.approx(-(only["ratio"] / 1.5 - 1))]

    study = optuna.load_study(study_name="loftr_kd_student_search", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[0].params["search.preset_trial"] is True  # the mark the preset trial ran with
    assert "search.preset_trial" not in study.trials[1].params
    assert "search.preset_trial=True" in (tmp_path / "first" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert first.returncode == 0


def test_a_preset_architecture_alone_is_not_exempt_from_the_budget(tmp_path: Path) -> None:
    """Only a trial the sweep enqueued as a preset (search.preset_trial) trains over the budget; a sampled
    trial with the same architecture is pruned like any other."""
    from loftr_kd.search import build_search_student

    paper = preset_knobs("paper")
    job = {"num": 5, "overrides": [], "student_choice": "search"}
    decided = {}
    for marked in (False, True):
        run = tmp_path / f"marked{marked}"
        cfg = _cfg(
            run,
            "search.presets=[paper]",
            "search.budget_ms=0.0001",
            "search.budget_reference=null",
            f"search.preset_trial={marked}",
        )
        trial = begin_trial(cfg, run, lambda: build_search_student(**paper), job)
        record = json.loads((run / RECORD_NAME).read_text())
        assert record["preset"] == "paper" and record["latency"]["over_budget"]
        decided[marked] = (record["status"], trial.done is None)
    assert decided == {False: ("pruned", False), True: ("training", True)}


def test_profiler_sessions_do_not_spin_like_the_search(tmp_path: Path) -> None:
    """loftr-kd-profile times its sessions interleaved, as the search does: onnxruntime spinning off."""
    import onnx
    from onnx import helper

    from loftr_kd.bench.profiling import interleaved_session

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    options = interleaved_session(path, 1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1


def test_report_command_rewrites_the_report(sweep: Path, tmp_path: Path) -> None:
    (sweep / "search_report.md").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.search_report", str(sweep)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "| 1 | pruned |" in (sweep / "search_report.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.search_report", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no search_trial.json below it" in bad.stderr
    # records that hold no trial ({} or not JSON): one line, no report of "None" (was exit 0)
    for job, text in (("0", "{}"), ("1", "not json")):
        (tmp_path / "empty" / job).mkdir(parents=True)
        (tmp_path / "empty" / job / "search_trial.json").write_text(text)
    empty = subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.search_report", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
    )
    assert (
        empty.returncode == 2
        and "none of its 2 search_trial.json files is a readable trial record" in empty.stderr
    )
    assert not (tmp_path / "empty" / "search_report.md").exists()
    # a report edited by hand was replaced without a word: refused now, --force replaces it
    command = [sys.executable, "-m", "loftr_kd.cli.search_report", str(sweep)]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0  # its own: replaced
    (sweep / "search_report.md").write_text("my notes")
    edited = subprocess.run(command, capture_output=True, text=True)
    assert (
        edited.returncode == 2 and "search_report.md already exists and was not written by" in edited.stderr
    )
    assert (sweep / "search_report.md").read_text() == "my notes"
    assert subprocess.run([*command, "--force"], capture_output=True, text=True).returncode == 0
    assert "| 1 | pruned |" in (sweep / "search_report.md").read_text()


# ------------------------------------------------------------------------------------------ cluster
def test_slurm_launcher_takes_the_job_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cluster=slurm: the sbatch script the real submitit launcher writes asks for the configured nodes,
    GPUs, tasks and time, and Lightning's trainer is set to the same devices and nodes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit.slurm.slurm as submitit_slurm
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="train",
            overrides=[
                "hparams_search=student_latency",
                "cluster=slurm",
                "cluster.nodes=2",
                "cluster.gpus_per_node=4",
                "cluster.time_min=90",
                "cluster.partition=gpu",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
            ],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (4, 2, "ddp")
    HydraConfig.instance().set_config(cfg)

    # No cluster here: submitit only needs to find `srun`, and the `sbatch` call is where we stop.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    class Submitted(Exception):
        pass

    def no_sbatch(self, path):
        raise Submitted(path)

    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "_make_submission_command", no_sbatch)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=train, config=cfg)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    script = Path(str(submitted.value.args[0])).read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",  # one task per GPU: Lightning's SLURM DDP
        "#SBATCH --time=90",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
    ):
        assert line in script, script
