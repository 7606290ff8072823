"""loftr-kd-match: outputs, homography against a known warp, registration, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.cli.match import checkerboard, main, warp_onto
from loftr_kd.evaluation import corner_error
from loftr_kd.files import OUTPUT_MANIFEST
from loftr_kd.models.student import build_student, save_student

W, H = 320, 240
H_TRUE = np.array([[0.95, 0.08, 12.0], [-0.06, 1.02, -8.0], [2e-5, -1e-5, 1.0]])  # image0 -> image1


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    image0 = cv2.resize(skdata.astronaut()[:, :, ::-1], (W, H), interpolation=cv2.INTER_AREA)
    image1 = cv2.warpPerspective(image0, H_TRUE, (W, H))
    cv2.imwrite(str(root / "a.png"), image0)
    cv2.imwrite(str(root / "b.jpg"), cv2.cvtColor(image1, cv2.COLOR_BGR2GRAY))  # another size class: gray
    return root / "a.png", root / "b.jpg"


def test_sift_recovers_the_known_homography_and_registers(pair, tmp_path):
    out, json_path = tmp_path / "out", tmp_path / "m.json"
    assert (
        main([str(pair[0]), str(pair[1]), "--backend", "sift", "--out", str(out), "--json", str(json_path)])
        == 0
    )
    record = json.loads(json_path.read_text())
    assert set(record) >= {"keypoints0", "keypoints1", "confidence", "inliers", "homography"}
    n = len(record["keypoints0"])
    assert n > 50 and len(record["keypoints1"]) == len(record["confidence"]) == len(record["inliers"]) == n
    assert corner_error(np.array(record["homography"]), H_TRUE, W, H) < 1.5
    for name in ("matches.png", "registered_overlay.png", "registered_checkerboard.png", "homography.txt"):
        assert (out / name).is_file(), name
    # Registered image1 agrees with image0 where it is defined.
    image0 = cv2.imread(str(pair[0]), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    warped = warp_onto(image0, cv2.imread(str(pair[1]), cv2.IMREAD_GRAYSCALE), np.array(record["homography"]))
    valid = warp_onto(image0, np.full((H, W), 255, np.uint8), np.array(record["homography"])) == 255
    assert np.abs(warped[valid] - image0[valid]).mean() < 12
    canvas = cv2.imread(str(out / "matches.png"))
    assert canvas.shape == (H, 2 * W, 3)


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8)
    board = checkerboard(a, b, tile=32)
    assert board[0, 0, 0] == 0 and board[0, 40, 0] == 200 and board[40, 0, 0] == 200 and board[40, 40, 0] == 0


def test_student_backend_writes_json(pair, tmp_path):
    torch.manual_seed(0)
    weights = save_student(
        build_student(input_height=H, input_width=W, match_threshold=0.0), tmp_path / "s.pt"
    )
    json_path = tmp_path / "m.json"
    argv = [str(pair[0]), str(pair[1]), "--backend", "torch", "--weights", str(weights), "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json", str(json_path), "--ransac", "ransac"]) == 0
    record = json.loads(json_path.read_text())
    assert len(record["keypoints0"]) > 0 and record["ransac"]["method"] == "ransac"
    points = np.array(record["keypoints0"])
    cells = (points + 0.5) / 16 - 0.5  # the images are at the model size: keypoints are cell centres
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-3)
    assert "guided" in record  # the student registers guided by default (loftr_kd.registration)
    one_pass = tmp_path / "one.json"
    assert main([*argv, "--no-guided", "--out", str(tmp_path / "o1"), "--json", str(one_pass)]) == 0
    record = json.loads(one_pass.read_text())
    assert "guided" not in record and "GuidedMatcher" not in record["matcher"]


def test_clear_errors(pair, tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"garbage")
    assert main([str(junk), str(pair[1]), "--backend", "orb", "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), str(pair[1]), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    monkeypatch.setattr("loftr_kd.paths.DEFAULT_STUDENT_WEIGHTS", tmp_path / "student_paper.pt")
    assert main([str(pair[0]), str(pair[1]), "--out", str(tmp_path / "o")]) == 2
    assert "make train" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((12, 12), np.uint8))
    weights = save_student(build_student(input_height=H, input_width=W), tmp_path / "s.pt")
    assert (
        main(
            [
                str(pair[0]),
                str(tiny),
                "--backend",
                "torch",
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "too small" in capsys.readouterr().err
    payload = torch.load(weights, weights_only=True)
    payload["state_dict"] = {k: v for k, v in list(payload["state_dict"].items())[2:]}
    torch.save(payload, tmp_path / "broken.pt")
    argv = [str(pair[0]), str(pair[1]), "--backend", "torch", "--weights", str(tmp_path / "broken.pt")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "missing keys" in capsys.readouterr().err


def _sift(image0, image1, out, *extra):
    return main([str(image0), str(image1), "--backend", "sift", "--out", str(out), *extra])


def test_truncated_jpeg_is_an_error_not_a_grey_match(pair, tmp_path, capsys):
    cut = tmp_path / "cut.jpg"
    data = pair[1].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert _sift(pair[0], cut, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "cut.jpg: JPEG truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_directory_given_as_image_is_named_as_such(pair, tmp_path, capsys):
    assert _sift(tmp_path, pair[1], tmp_path / "o") == 2
    assert "is a directory" in capsys.readouterr().err


def test_int32_and_float64_tiffs_recover_the_known_homography(pair, tmp_path):
    image0 = cv2.imread(str(pair[0]))
    for name, array in (("i32.tif", image0.astype(np.int32)), ("f64.tif", image0 / 255.0)):
        assert cv2.imwrite(str(tmp_path / name), array)
        assert _sift(tmp_path / name, pair[1], tmp_path / name.replace(".", "_")) == 0
        homography = np.loadtxt(tmp_path / name.replace(".", "_") / "homography.txt")
        assert corner_error(homography, H_TRUE, W, H) < 1.5  # the known warp


def test_nan_pixel_is_an_error_naming_the_file(pair, tmp_path, capsys):
    image = cv2.imread(str(pair[0])).astype(np.float32) / 255.0
    image[5, 5] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tif"), image)
    assert _sift(tmp_path / "nan.tif", pair[1], tmp_path / "o") == 2
    assert "nan.tif: 1 pixel(s) are NaN or infinite" in capsys.readouterr().err


def test_elongated_image_is_a_clear_error(pair, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), cv2.resize(cv2.imread(str(pair[0])), (3000, 40)))
    weights = save_student(build_student(input_height=H, input_width=W), tmp_path / "s.pt")
    argv = [str(strip), str(pair[1]), "--backend", "torch", "--weights", str(weights)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "strip.png of 3000x40 pixels is too elongated" in capsys.readouterr().err


def test_reused_out_never_keeps_a_stale_homography(pair, tmp_path, capsys):
    out = tmp_path / "o"
    assert _sift(pair[0], pair[1], out) == 0
    assert (out / "homography.txt").is_file() and (out / "registered_overlay.png").is_file()
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((H, W), 128, np.uint8))  # no features: no homography
    assert _sift(flat, pair[1], out) == 0
    assert "replaced the outputs of a previous" in capsys.readouterr().out
    assert json.loads((out / "matches.json").read_text())["homography"] is None
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MANIFEST, "matches.json", "matches.png"]


def test_out_holding_a_users_file_of_an_output_name_is_refused_and_left_byte_identical(
    pair, tmp_path, capsys
):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "matches.png").write_bytes(b"my own picture")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _sift(pair[0], pair[1], out) == 2
    err = capsys.readouterr().err
    assert "matches.png already exists and was not written by loftr-kd" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_debug_flag_shows_the_traceback_instead_of_one_line(tmp_path, monkeypatch):
    missing = tmp_path / "missing.png"
    monkeypatch.setenv("LOFTR_KD_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="not found"):
        main([str(missing), str(missing), "--backend", "orb", "--out", str(tmp_path / "o")])


def test_json_over_an_input_image_is_refused(pair, tmp_path, capsys):
    before = pair[0].read_bytes()
    assert _sift(pair[0], pair[1], tmp_path / "o", "--json", str(pair[0])) == 2
    assert "would overwrite an input file" in capsys.readouterr().err
    assert pair[0].read_bytes() == before


def test_guided_registers_a_turned_pair_and_reports_its_prior(tmp_path, capsys):
    """55 degrees and 1.5x zoom: --guided finds a prior, rewarps and registers to a few px; the JSON says
    which hypothesis gave the prior and holds it. ORB has no guided mode: a one-line error."""
    from loftr_kd.paths import WEIGHTS_DIR

    w, h = 640, 480
    image0 = cv2.resize(skdata.camera(), (w, h), interpolation=cv2.INTER_AREA)
    truth = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 55.0, 1.5)  # image0 -> image1
    truth = np.vstack([truth, [0, 0, 1]])
    cv2.imwrite(str(tmp_path / "a.png"), image0)
    cv2.imwrite(str(tmp_path / "b.png"), cv2.warpPerspective(image0, truth, (w, h)))
    json_path = tmp_path / "m.json"
    weights = WEIGHTS_DIR / "student_paper_refine.onnx"
    argv = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--weights", str(weights), "--threads", "2"]
    assert main([*argv, "--guided", "--out", str(tmp_path / "o"), "--json", str(json_path)]) == 0
    record = json.loads(json_path.read_text())
    assert corner_error(np.array(record["homography"]), truth, w, h) < 3.0
    guided = record["guided"]
    assert guided["rotation_deg"] in (0.0, 45.0, -45.0) and guided["zoom"] in (1.0, 0.5, 2.0)
    assert guided["rewarped"] and guided["search_inliers"] >= 6
    assert corner_error(np.array(guided["prior_homography"]), truth, w, h) < 50.0
    assert main([*argv[:2], "--backend", "orb", "--guided", "--out", str(tmp_path / "p")]) == 2
    assert "guided matching is for the student" in capsys.readouterr().err


def test_the_verdict_is_in_the_json_on_the_console_and_in_the_picture(pair, tmp_path, capsys):
    """A right registration says reliable (JSON, console); inliers are drawn green, other matches red."""
    out = tmp_path / "o"
    assert main([str(pair[0]), str(pair[1]), "--backend", "sift", "--out", str(out)]) == 0
    record = json.loads((out / "matches.json").read_text())
    assert record["reliable"] is True and record["verdict"].startswith("reliable: ")
    assert record["num_inliers"] == sum(record["inliers"]) and record["num_matches"] == len(record["inliers"])
    assert record["inlier_ratio"] == round(record["num_inliers"] / record["num_matches"], 4)
    assert "sift: reliable: " in capsys.readouterr().out
    canvas = cv2.imread(str(out / "matches.png"))
    green = np.all(canvas == (0, 220, 0), axis=-1).sum()
    red = np.all(canvas == (0, 0, 255), axis=-1).sum()
    assert green > 100 and (red > 0) == (record["num_inliers"] < record["num_matches"])


def test_an_unrelated_pair_is_reported_unreliable_with_its_reason(tmp_path, capsys):
    """Two different photographs: RANSAC still fits some homography, and the verdict says not to trust it."""
    for name, image in (("a.png", skdata.camera()), ("b.png", skdata.moon())):
        cv2.imwrite(str(tmp_path / name), image)
    out = tmp_path / "o"
    assert (
        main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--backend", "orb", "--out", str(out)]) == 0
    )
    record = json.loads((out / "matches.json").read_text())
    assert record["reliable"] is False and record["verdict"].startswith("unreliable: ")
    assert "orb: unreliable: " in capsys.readouterr().out


def test_default_out_folder_names_the_pair_with_its_folder(monkeypatch, tmp_path):
    """HPatches-layout pairs (h_0103/1.png, h_0103/2.png) each get their own folder under the current one."""
    from loftr_kd.cli.match import default_out

    monkeypatch.chdir(tmp_path)
    root = Path("data/photo_homographies_heldout")
    assert default_out(root / "h_0103/1.png", root / "h_0103/2.png") == tmp_path / "outputs/match/h_0103_1_2"
    assert default_out(root / "h_0104/1.png", root / "h_0104/2.png") != default_out(
        root / "h_0103/1.png", root / "h_0103/2.png"
    )
    assert default_out(Path("x/a.jpg"), Path("y/b.jpg")) == tmp_path / "outputs/match/x_a_y_b"


def test_a_static_export_registers_in_one_pass_with_a_warning(pair, tmp_path, capsys):
    """What every training run exports (static 640x480 by default) works with the default command."""
    from loftr_kd.export.onnx import export_onnx

    static = export_onnx(build_student(input_height=H, input_width=W), tmp_path / "static.onnx")
    json_path = tmp_path / "m.json"
    with pytest.warns(UserWarning, match="--no-guided"):
        code = main([str(pair[0]), str(pair[1]), "--weights", str(static), "--out", str(tmp_path / "o")])
    assert code == 0
    record = json.loads((tmp_path / "o" / "matches.json").read_text())
    assert "guided" not in record and "GuidedMatcher" not in record["matcher"]
    assert not json_path.exists()
    capsys.readouterr()
    argv = [str(pair[0]), str(pair[1]), "--weights", str(static), "--out", str(tmp_path / "p")]
    assert main([*argv, "--rotations", "full"]) == 2
    assert "--rotations needs guided registration" in capsys.readouterr().err


def test_rotations_option_takes_a_preset_or_degrees(tmp_path, capsys):
    """--rotations 0,180 registers an upside-down copy (the default's +-45 degrees cannot); a bad value, or
    --rotations with --no-guided, is a one-line error."""
    from loftr_kd.cli.match import build_parser
    from loftr_kd.paths import WEIGHTS_DIR

    parser = build_parser()
    assert parser.parse_args(["a", "b", "--rotations", "full"]).rotations == "full"
    assert parser.parse_args(["a", "b", "--rotations", "0,90,-90"]).rotations == (0.0, 90.0, -90.0)
    w, h = 640, 480
    image0 = cv2.resize(skdata.camera(), (w, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "a.png"), image0)
    cv2.imwrite(str(tmp_path / "b.png"), np.ascontiguousarray(image0[::-1, ::-1]))  # upside down
    weights = WEIGHTS_DIR / "student_paper_refine.onnx"
    argv = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--weights", str(weights), "--threads", "2"]
    json_path = tmp_path / "m.json"
    assert main([*argv, "--rotations", "0,180", "--out", str(tmp_path / "o"), "--json", str(json_path)]) == 0
    record = json.loads(json_path.read_text())
    truth = np.array([[-1.0, 0, w - 1], [0, -1.0, h - 1], [0, 0, 1]])
    assert (
        record["guided"]["rotation_deg"] == 180.0
        and corner_error(np.array(record["homography"]), truth, w, h) < 2
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--rotations", "upside"])
    assert (
        exit_info.value.code == 2
        and "neither a preset (default, full) nor degrees" in capsys.readouterr().err
    )
    assert main([*argv, "--rotations", "full", "--no-guided", "--out", str(tmp_path / "p")]) == 2
    assert "drop --no-guided" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ransac-threshold", "nan", "argument --ransac-threshold: nan is not a finite number > 0"),
        ("--ransac-threshold", "-3", "argument --ransac-threshold: -3 is not a finite number > 0"),
        ("--tile", "0", "argument --tile: 0 is not >= 1"),
        ("--size", "x", "argument --size: 'x' is not an integer"),
    ],
)
def test_numeric_options_are_checked_by_argparse(tmp_path, capsys, option, value, message):
    """--ransac-threshold nan gave '0 inliers' with exit 0, --tile 0 a division by zero warning."""
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), option, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_argparse_errors_are_one_line_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--tile", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("loftr-kd-match: error: argument --tile: 0 is not >= 1 (loftr-kd-match --help")


def test_json_under_a_file_is_refused_before_any_work(pair, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "o"
    assert _sift(pair[0], pair[1], out, "--json", str(tmp_path / "notes.txt" / "r.json")) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "notes.txt is a file, not a folder" in err
    assert not out.exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_outputs_written_before_a_failure_stay_loftr_kds_own(pair, tmp_path, capsys, monkeypatch):
    """A full disk at the --json write: the outputs already written are recorded, so the rerun replaces them
    (it used to refuse them as 'not written by loftr-kd')."""
    import errno

    import loftr_kd.files

    real_write_text = loftr_kd.files.write_text
    json_path = tmp_path / "r.json"

    def full_disk_at_the_json(path, text):
        if Path(path) == json_path:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_text(path, text)

    monkeypatch.setattr(loftr_kd.files, "write_text", full_disk_at_the_json)
    out = tmp_path / "o"
    assert _sift(pair[0], pair[1], out, "--json", str(json_path)) == 2
    assert "the disk is full" in capsys.readouterr().err
    monkeypatch.setattr(loftr_kd.files, "write_text", real_write_text)
    assert _sift(pair[0], pair[1], out, "--json", str(json_path)) == 0
    assert json.loads(json_path.read_text())["homography"] is not None
