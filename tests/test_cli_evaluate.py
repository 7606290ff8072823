"""loftr-kd-evaluate: composes, compares several methods in one run, writes JSON/Markdown/PNG."""

from __future__ import annotations

import hashlib
import json

import cv2
import pytest
import torch
from hydra import compose, initialize_config_dir

from loftr_kd.cli.evaluate import evaluate, main
from loftr_kd.config import CONFIG_DIR
from loftr_kd.models.student import build_student, save_student
from test_evaluation import HEIGHT, WIDTH, make_hpatches, make_pose_pairs, photo


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_hpatches(root / "hpatches", names=("astronaut",), per_sequence=2)
    (root / "pose").mkdir()
    pair_list, _ = make_pose_pairs(root / "pose", num_pairs=2)
    (root / "photos").mkdir()
    for name in ("coffee", "chelsea"):
        cv2.imwrite(str(root / "photos" / f"{name}.png"), photo(name))
    torch.manual_seed(0)
    weights = save_student(build_student(input_height=HEIGHT, input_width=WIDTH), root / "student.pt")
    return root, pair_list, weights


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("homography.max_pairs=0", r"homography.max_pairs=0: expected a number of pairs >= 1"),
        (
            "homography.thresholds=[-1]",
            r"homography.thresholds=\[-1\]: expected a non-empty list of numbers > 0",
        ),
        ("pose.thresholds=[]", r"pose.thresholds=\[\]: expected a non-empty list"),
        ("pose.ransac_threshold_px=nan", r"pose.ransac_threshold_px=nan: expected a number > 0"),
    ],
)
def test_counts_and_thresholds_are_checked_before_any_work(tmp_path, override, message):
    """max_pairs=0 wrote an empty report and thresholds=[-1] an AUC of 0, both with exit 0."""
    with pytest.raises(ValueError, match=message):
        evaluate(compose_cfg(["homography.root=/nowhere", override]), out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_folder_holding_results_is_never_overwritten(tmp_path):
    (tmp_path / "results.json").write_text('{"mine": 1}')
    with pytest.raises(ValueError, match=r"already holds evaluation results \(results.json\)"):
        evaluate(compose_cfg(["homography.root=/nowhere"]), out_dir=tmp_path)
    assert (tmp_path / "results.json").read_text() == '{"mine": 1}'


def test_evaluate_compares_methods_and_writes_reports(data, tmp_path, monkeypatch):
    root, pair_list, weights = data
    monkeypatch.setattr("loftr_kd.paths.DEFAULT_STUDENT_WEIGHTS", tmp_path / "absent.pt")
    cfg = compose_cfg(
        [
            f"homography.root={root / 'hpatches'}",
            "homography.short_side=null",
            f"pose.pairs={pair_list}",
            f"coarse.root={root / 'photos'}",
            "coarse.kind=homography",
            "coarse.max_pairs=4",
            "~methods.sift",
            "+methods.mine.backend=torch",
            f"+methods.mine.weights={weights}",
            "threads=1",
        ]
    )
    threads_before = cv2.getNumThreads()
    seen = []
    original = cv2.ORB_create
    monkeypatch.setattr(
        cv2, "ORB_create", lambda *a, **k: (seen.append(cv2.getNumThreads()), original(*a, **k))[1]
    )
    results = evaluate(cfg, out_dir=tmp_path / "run")
    assert seen and set(seen) == {1}  # OpenCV's own pool (ORB, MAGSAC) follows threads=1 during the run
    assert set(results["methods"]) == {"orb", "mine"}
    # the missing shipped student (its .onnx, the onnx backend's default) is skipped, in both modes, not fatal
    assert "absent.onnx" in results["skipped"]["student"]
    assert "absent.onnx" in results["skipped"]["student_one_pass"]
    orb = results["methods"]["orb"]
    assert orb["homography"]["auc"][10.0] > 0.5 and orb["homography"]["num_pairs"] == 2
    assert orb["pose"]["num_pairs"] == 2 and 0 <= orb["pose"]["epipolar_precision"] <= 1
    mine = results["methods"]["mine"]["coarse"]
    assert mine["num_pairs"] == 4 and 0 <= mine["precision"] <= 1 and 0 <= mine["recall"] <= 1
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["methods"]) == {"orb", "mine"}
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "| orb |" in markdown and "| mine |" in markdown and "Skipped: student" in markdown
    # what the figures were computed with: a weights path alone names whatever the file holds today
    run = saved["run"]
    assert run["weights"]["mine"] == {
        "path": str(weights),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert run["machine"]["threads"] == 1 and run["machine"]["versions"]["opencv"] == cv2.__version__
    assert run["protocol"]["homography"]["estimator"] == "magsac" and "git_commit" in run
    assert "Protocol: long side 640 px; homography magsac at 3 px" in markdown and "Machine: " in markdown
    assert cv2.getNumThreads() == threads_before  # threads=1 held during the run only (a library call)
    for name in ("homography_auc.png", "pose_auc.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000


def test_without_a_benchmark_it_builds_and_evaluates_the_heldout_pairs(tmp_path):
    """``loftr-kd-evaluate`` with no argument: the held-out photo pairs, built once where heldout.root says (the
    pairs of ``loftr-kd-homographies --photo-set heldout``), then reused."""
    root = tmp_path / "data" / "photo_homographies_heldout"
    overrides = [f"heldout.root={root}", "heldout.pairs=2", "~methods.student", "~methods.student_one_pass"]
    results = evaluate(compose_cfg([*overrides, "~methods.sift"]), out_dir=tmp_path / "run1")
    assert results["methods"]["orb"]["homography"]["num_pairs"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["h_0000", "h_0001"]
    stamp = (root / "h_0001" / "H_1_2").stat().st_mtime_ns
    evaluate(compose_cfg([*overrides, "~methods.orb"]), out_dir=tmp_path / "run2")
    assert (root / "h_0001" / "H_1_2").stat().st_mtime_ns == stamp  # built once
    # recorded as loftr-kd-homographies' own pairs: the README's command rebuilds them in place, the same
    before = (root / "h_0001" / "H_1_2").read_bytes()
    from loftr_kd.cli.homography import main as homographies

    argv = ["--photo-set", "heldout", "--out", str(root), "--pairs", "2", "--seed", "2026"]
    assert homographies(argv) == 0
    assert (root / "h_0001" / "H_1_2").read_bytes() == before
    # a pair lost from the middle: 1 pair evaluated silently as "the 2 held-out pairs" before
    (root / "h_0000" / "2.png").rename(tmp_path / "lost.png")
    with pytest.raises(
        ValueError, match=r"holds something other than the 2 held-out photo pairs \(no .*h_0000/2.png\)"
    ):
        evaluate(compose_cfg([*overrides, "~methods.orb"]), out_dir=tmp_path / "run6")
    (tmp_path / "lost.png").rename(root / "h_0000" / "2.png")
    # fewer pairs asked than the folder holds: not the 2 evaluated silently, but the command that rebuilds them
    fewer = [f"heldout.root={root}", "heldout.pairs=1", "~methods.student", "~methods.student_one_pass"]
    with pytest.raises(
        ValueError, match=r"holds more than the 1 held-out photo pairs \(h_0001\).*--pairs 1 --seed 2026"
    ):
        evaluate(compose_cfg(fewer), out_dir=tmp_path / "run3")
    with pytest.raises(ValueError, match=r"heldout.pairs=None: expected an integer >= 1"):
        evaluate(
            compose_cfg([f"heldout.root={tmp_path / 'new'}", "heldout.pairs=null"]), out_dir=tmp_path / "run5"
        )
    with pytest.raises(ValueError, match=r"heldout.pairs=-3: expected an integer >= 1"):
        evaluate(
            compose_cfg([f"heldout.root={tmp_path / 'new'}", "heldout.pairs=-3"]), out_dir=tmp_path / "run4"
        )
    assert not (tmp_path / "new").exists()


def test_a_heldout_root_holding_other_files_is_an_error_and_untouched(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds something other than .* nothing in it was touched"):
        evaluate(compose_cfg([f"heldout.root={tmp_path}", "heldout.pairs=2"]), out_dir=tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_the_student_is_guided_and_its_one_pass_is_shown_beside_it():
    """evaluate, loftr-kd-match and the docs agree: "the student" registers guided; its one pass is a row too."""
    methods = compose_cfg([]).methods
    assert methods.student.guided is True and methods.student_one_pass.guided is False
    assert methods.student.weights is None and methods.student_one_pass.weights is None


def test_main_runs_as_a_hydra_app(data, tmp_path):
    root, _, _ = data
    run_dir = tmp_path / "hydra_run"
    main(
        [
            f"homography.root={root / 'hpatches'}",
            "~methods.student",
            "~methods.student_one_pass",
            "~methods.sift",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert (run_dir / "results.md").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_coarse_benchmark_on_synthetic_blendedmvs_scenes(tmp_path):
    """Depth + pose ground truth from the synthetic scenes in the BlendedMVS layout; SIFT as the matcher."""
    from loftr_kd.data.synthetic import generate_dataset

    generate_dataset(out_dir=tmp_path / "synth", scenes=2, views=3, seed=0, height=240, width=320)
    cfg = compose_cfg(
        [
            f"coarse.root={tmp_path / 'synth'}",
            "coarse.max_pairs=4",
            "~methods.student",
            "~methods.student_one_pass",
            "~methods.orb",
        ]
    )
    results = evaluate(cfg, out_dir=tmp_path / "run")
    sift = results["methods"]["sift"]["coarse"]
    assert sift["num_pairs"] == 4 and sift["num_matches"] > 10
    assert sift["precision"] > 0.3 and 0 < sift["recall"] <= 1
    assert "## Matches against exact ground truth" in (tmp_path / "run" / "results.md").read_text()


def test_pose_pairs_of_every_scene_of_a_set_made_for_testing(tmp_path):
    """``pose.scene_names=all``: a set of scenes never trained on (another seed) is all test scenes."""
    from loftr_kd.data.synthetic import generate_dataset
    from loftr_kd.evaluation import pose_pairs_from_scenes

    generate_dataset(out_dir=tmp_path / "synth", scenes=3, views=3, seed=5, height=144, width=192)
    overrides = [
        f"pose.scenes={tmp_path / 'synth'}",
        "~methods.student",
        "~methods.student_one_pass",
        "~methods.sift",
    ]
    validation_only = evaluate(compose_cfg(overrides), out_dir=tmp_path / "val")
    every = evaluate(compose_cfg([*overrides, "pose.scene_names=all"]), out_dir=tmp_path / "all")
    assert validation_only["methods"]["orb"]["pose"]["num_pairs"] == len(
        pose_pairs_from_scenes(tmp_path / "synth")
    )
    assert every["methods"]["orb"]["pose"]["num_pairs"] == 3 * 6  # 3 scenes x 6 ordered pairs of 3 views
    with pytest.raises(ValueError, match="pose.scene_names must be null, 'all' or a list"):
        evaluate(compose_cfg([*overrides, "pose.scene_names=every"]), out_dir=tmp_path / "bad")


def test_guided_student_is_a_method_setting_and_reports_the_epe_of_correct_matches(data, tmp_path):
    """``guided`` in a method's spec wraps the student (loftr_kd.registration); every homography row gets
    the end-point error of its correct matches, ORB's too."""
    from loftr_kd.paths import WEIGHTS_DIR

    root, _, _ = data
    shipped = WEIGHTS_DIR / "student_paper_refine.onnx"
    cfg = compose_cfg(
        [
            f"homography.root={root / 'hpatches'}",
            "~methods.sift",
            "~methods.student",
            "~methods.student_one_pass",
            "+methods.guided.backend=onnx",
            f"+methods.guided.weights={shipped}",
            "+methods.guided.guided={rotations:[0,45],scales:[1],stop_inliers:1000}",
            "threads=1",
        ]
    )
    results = evaluate(cfg, out_dir=tmp_path / "run")
    assert "GuidedMatcher(" in results["methods"]["guided"]["matcher"]
    assert "rotations=[0.0, 45.0]" in results["methods"]["guided"]["matcher"]
    for name in ("orb", "guided"):
        h = results["methods"][name]["homography"]
        epe = h["epe_correct"]
        assert epe["threshold_px"] == 5.0 and epe["count"] > 0 and 0 <= epe["median"] <= epe["p90"] <= 5.0
        assert h["time_ms_mean"] > 0
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "EPE <5px median / p90" in markdown and "| guided |" in markdown


def test_a_run_that_fails_before_writing_anything_leaves_no_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "x"
    with pytest.raises(SystemExit) as exit_info:
        main([f"homography.root={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}"])
    assert exit_info.value.code == 2 and "nowhere" in capsys.readouterr().err
    assert not run_dir.exists()


def test_every_student_matches_at_the_configured_long_side_unless_it_sets_its_own(data):
    """A checkpoint's own size is its training size (here 320): evaluate's `size` (640) puts every dynamic
    student at the long side the references use; a method's own `size` wins; `size=null` keeps each one's."""
    from loftr_kd.cli.evaluate import build_methods

    _, _, weights = data
    student = [
        f"+methods.ckpt.weights={weights}",
        "+methods.ckpt.backend=torch",
        "+methods.ckpt.guided=false",
    ]
    only = ["~methods.student", "~methods.student_one_pass", "~methods.orb", "~methods.sift"]
    methods, _ = build_methods(compose_cfg([*only, *student]))
    assert max(HEIGHT, WIDTH) != 640 and methods["ckpt"].size == 640
    methods, _ = build_methods(compose_cfg([*only, *student, "+methods.ckpt.size=480"]))
    assert methods["ckpt"].size == 480
    methods, _ = build_methods(compose_cfg([*only, *student, "size=null"]))
    assert methods["ckpt"].size == max(HEIGHT, WIDTH)
