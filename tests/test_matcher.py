"""Matcher API: letterbox geometry, keypoints in original pixels, backends, clear errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.checkpoints import CheckpointError
from loftr_kd.matcher import (
    Letterbox,
    Matcher,
    MatcherError,
    build_matcher,
    letterbox,
    to_gray_float,
)
from loftr_kd.models.student import build_student, save_student

H_IN, W_IN, STRIDE = 240, 320, 16


def photo(width: int, height: int, name: str = "astronaut") -> np.ndarray:
    image = getattr(skdata, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return cv2.resize(np.ascontiguousarray(image[:, :, 2::-1]), (width, height), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def student_weights(tmp_path_factory) -> Path:
    """A randomly initialised student (threshold 0, so it always returns matches) at 240x320."""
    torch.manual_seed(0)
    model = build_student(input_height=H_IN, input_width=W_IN, match_threshold=0.0)
    return save_student(model, tmp_path_factory.mktemp("weights") / "student.pt")


# ------------------------------------------------------------------------------ preprocessing
def test_to_gray_float_modes():
    bgr = photo(32, 24)
    gray = to_gray_float(bgr)
    assert gray.shape == (24, 32) and gray.dtype == np.float32 and 0 <= gray.min() <= gray.max() <= 1
    np.testing.assert_allclose(to_gray_float(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)), gray, atol=1e-6)
    np.testing.assert_allclose(to_gray_float(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)), gray, atol=1e-6)
    np.testing.assert_allclose(to_gray_float(gray[:, :, None]), gray)
    assert to_gray_float(np.full((4, 4), 65535, np.uint16)).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gray, BGR or BGRA"):
        to_gray_float(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        to_gray_float([[0, 1]])


@pytest.mark.parametrize("size", [(640, 480), (500, 120), (100, 300), (320, 240)])
def test_letterbox_maps_a_bright_spot_where_the_geometry_says(size):
    """The centroid of a blob drawn in the original lands at ``to_model`` of its position."""
    width, height = size
    spot = np.array([width * 0.37, height * 0.61])
    image = np.zeros((height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    image[:] = np.exp(-((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * (0.04 * max(size)) ** 2))
    padded, box = letterbox(image, H_IN, W_IN)
    assert padded.shape == (H_IN, W_IN)
    assert box.content_width == W_IN or box.content_height == H_IN  # fits one side exactly
    assert abs(box.content_width / width - box.content_height / height) < 0.02  # aspect kept
    assert not padded[box.content_height :].any() and not padded[:, box.content_width :].any()
    my, mx = np.mgrid[0:H_IN, 0:W_IN]
    centroid = np.array([(padded * mx).sum(), (padded * my).sum()]) / padded.sum()
    np.testing.assert_allclose(centroid, box.to_model(spot[None])[0], atol=0.35)
    np.testing.assert_allclose(box.to_original(box.to_model(spot[None])), spot[None])


def test_letterbox_content_test_and_too_small():
    box = Letterbox(100, 400, 80, 320, 240, 320)  # a 4:1 image fills the top 80 rows
    inside = box.in_content(np.array([[10.0, 70.0], [10.0, 79.5], [10.0, 80.0], [319.5, 10.0]]))
    assert inside.tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="too small"):
        letterbox(np.zeros((20, 400), np.float32), H_IN, W_IN, min_side=32)


# ------------------------------------------------------------------------------ student backends
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_keypoints_are_cell_centres_in_original_pixels(student_weights, tmp_path, backend):
    """A 640x480 image is halved into the 320x240 input: cell centres map to (c + 0.5) * 32 - 0.5."""
    matcher = Matcher(student_weights, backend=backend, cache_dir=tmp_path)
    image0 = photo(640, 480)
    image1 = np.roll(image0, 32, axis=1)
    result = matcher(image0, image1)
    assert set(result) == {"keypoints0", "keypoints1", "confidence", "coarse_keypoints0", "coarse_keypoints1"}
    assert len(result["keypoints0"]) > 0
    # a coarse-only student: the returned positions are the matched cells' centres
    np.testing.assert_array_equal(result["keypoints1"], result["coarse_keypoints1"])
    np.testing.assert_array_equal(result["keypoints0"], result["coarse_keypoints0"])
    for key in ("keypoints0", "keypoints1"):
        points = result[key]
        assert points.dtype == np.float32 and points.shape == (len(result["confidence"]), 2)
        cells = (points + 0.5) / 32 - 0.5
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-4)
        assert (points >= 0).all() and (points[:, 0] < 640).all() and (points[:, 1] < 480).all()


def test_matches_in_padding_are_dropped(student_weights):
    """A 640x160 image fills only the top 80 model rows: no keypoint may come from the padding."""
    matcher = Matcher(student_weights, backend="torch", num_threads=1)
    wide = photo(640, 160, "coffee")
    result = matcher(wide, wide)
    assert len(result["keypoints0"]) > 0
    assert (result["keypoints0"][:, 1] <= 159.5).all() and (result["keypoints1"][:, 1] <= 159.5).all()


def test_torch_and_onnx_agree_and_cache_is_reused(student_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("LOFTR_KD_CACHE", str(tmp_path / "user_cache"))
    image0, image1 = photo(320, 240, "chelsea"), photo(320, 240, "coffee")
    torch_out = Matcher(student_weights, backend="torch", num_threads=1)(image0, image1)
    first = Matcher(student_weights, backend="onnx", num_threads=1)
    cached = first.onnx_path
    # the user's cache folder, never the folder of their weights
    assert cached.parent == tmp_path / "user_cache" / "onnx" and first.num_threads == 1
    assert not (student_weights.parent / ".onnx_cache").exists()
    mtime = cached.stat().st_mtime_ns
    second = Matcher(student_weights, backend="onnx")
    assert second.onnx_path == cached and cached.stat().st_mtime_ns == mtime
    onnx_out = second(image0, image1)
    np.testing.assert_array_equal(torch_out["keypoints0"], onnx_out["keypoints0"])
    np.testing.assert_array_equal(torch_out["keypoints1"], onnx_out["keypoints1"])
    np.testing.assert_allclose(torch_out["confidence"], onnx_out["confidence"], atol=1e-4)
    # The exported file alone carries its geometry (student_config metadata).
    direct = Matcher(cached, backend="onnx")
    assert (direct.input_height, direct.input_width, direct.stride) == (H_IN, W_IN, STRIDE)
    np.testing.assert_array_equal(direct(image0, image1)["keypoints0"], onnx_out["keypoints0"])


def test_threshold_override(student_weights):
    image0, image1 = photo(320, 240), photo(320, 240, "chelsea")
    loose = Matcher(student_weights, backend="torch", num_threads=1)(image0, image1)
    strict = Matcher(student_weights, backend="torch", threshold=0.999, num_threads=1)(image0, image1)
    assert len(strict["confidence"]) < len(loose["confidence"])
    assert (strict["confidence"] >= 0.999).all()


def test_baked_threshold_cannot_be_lowered(tmp_path):
    weights = save_student(
        build_student(input_height=H_IN, input_width=W_IN, match_threshold=0.3), tmp_path / "s.pt"
    )
    onnx_path = Matcher(weights, backend="onnx").onnx_path
    assert Matcher(onnx_path, backend="onnx", threshold=0.5).threshold == 0.5
    with pytest.raises(MatcherError, match="below 0.3 baked"):
        Matcher(onnx_path, backend="onnx", threshold=0.1)
    with pytest.raises(MatcherError, match="use backend='onnx'"):
        Matcher(onnx_path, backend="torch", num_threads=1)


# ------------------------------------------------------------------------------ errors
def test_missing_default_weights_explains_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr("loftr_kd.paths.DEFAULT_STUDENT_WEIGHTS", tmp_path / "student_paper.pt")
    with pytest.raises(FileNotFoundError, match="make train"):
        Matcher()
    with pytest.raises(FileNotFoundError, match="not found"):
        Matcher(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown backend"):
        Matcher(tmp_path / "nope.pt", backend="tflite")


def test_weights_that_do_not_fit_their_config(student_weights, tmp_path):
    payload = torch.load(student_weights, weights_only=True)
    payload["student_config"]["d_model"] = 64  # the stored tensors are 32-wide
    payload["student_config"]["block_dims"] = [8, 16, 32, 64]
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(MatcherError, match="bad.pt"):
        Matcher(bad, backend="torch", num_threads=1)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Matcher(junk, backend="onnx")


def test_image_too_small(student_weights):
    matcher = Matcher(student_weights, backend="torch", num_threads=1)
    with pytest.raises(ValueError, match="too small"):
        matcher(photo(320, 240), np.zeros((20, 300), np.uint8))


def test_tensorrt_backend_unavailable_is_clear(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(MatcherError, match="TensorRT"):
        Matcher(engine, backend="trt")
    with pytest.raises(MatcherError, match="backend='trt'"):
        Matcher(engine, backend="onnx")


# ------------------------------------------------------------------------------ classical + package
@pytest.mark.parametrize("method", ["orb", "sift"])
def test_opencv_matcher_recovers_a_translation(method):
    image0 = photo(320, 240)
    image1 = np.roll(image0, (7, 12), axis=(0, 1))
    result = build_matcher(method)(image0, cv2.cvtColor(image1, cv2.COLOR_BGR2GRAY))
    shift = np.median(result["keypoints1"] - result["keypoints0"], axis=0)
    np.testing.assert_allclose(shift, [12, 7], atol=0.5)
    assert len(result["confidence"]) > 50


def test_package_import_stays_light():
    code = "import sys, loftr_kd; assert 'torch' not in sys.modules and 'cv2' not in sys.modules; print(loftr_kd.Matcher.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Matcher"


@pytest.mark.skipif(
    not __import__("loftr_kd.paths", fromlist=["x"]).DEFAULT_STUDENT_WEIGHTS.is_file(),
    reason="no shipped student",
)
def test_shipped_student_matches_a_translated_photo():
    image0 = photo(640, 480)
    image1 = np.roll(image0, (32, 64), axis=(0, 1))
    result = Matcher(backend="onnx")(image0, image1)
    error = np.linalg.norm(result["keypoints1"] - result["keypoints0"] - [64, 32], axis=1)
    assert len(error) > 20 and np.mean(error < 24) > 0.5


@pytest.mark.gpu
def test_tensorrt_backend_matches_onnx(student_weights, tmp_path):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from loftr_kd.export.tensorrt import build_engine

    onnx_matcher = Matcher(student_weights, backend="onnx", cache_dir=tmp_path)
    profile = {"min": [H_IN, W_IN], "opt": [H_IN, W_IN], "max": [2 * H_IN, 2 * W_IN]}  # the cache is dynamic
    engine = build_engine(
        onnx_matcher.onnx_path, tmp_path / "student.engine", fp16=False, shape_profile=profile
    )
    trt_matcher = Matcher(engine, backend="trt")
    assert (trt_matcher.input_height, trt_matcher.input_width, trt_matcher.stride) == (H_IN, W_IN, STRIDE)
    image0, image1 = photo(640, 480), photo(640, 480, "chelsea")
    expected, got = onnx_matcher(image0, image1), trt_matcher(image0, image1)
    np.testing.assert_array_equal(expected["keypoints0"], got["keypoints0"])
    np.testing.assert_allclose(expected["confidence"], got["confidence"], atol=1e-3)


def test_float_image_in_0_255_matches_like_the_same_image_in_0_1(student_weights):
    matcher = Matcher(student_weights, backend="torch", num_threads=1)
    image0, image1 = photo(320, 240), np.roll(photo(320, 240), 16, axis=1)
    unit0, unit1 = image0.astype(np.float32) / 255.0, image1.astype(np.float32) / 255.0
    reference = matcher(unit0, unit1)
    assert len(reference["confidence"]) > 0
    result = matcher(unit0 * 255.0, unit1 * 255.0)  # once clipped to white: no matches
    np.testing.assert_allclose(result["keypoints0"], reference["keypoints0"])
    np.testing.assert_allclose(result["keypoints1"], reference["keypoints1"])
    # int32 / float64 colour arrays (once a raw cv2.error) give the uint8 model input to rounding.
    for dtype in (np.float64, np.int32):
        np.testing.assert_allclose(
            matcher.prepare(image0.astype(dtype))[0], matcher.prepare(image0)[0], atol=1 / 255
        )


def test_one_nan_pixel_is_an_error_not_zero_matches(student_weights):
    matcher = Matcher(student_weights, backend="torch", num_threads=1)
    image = photo(320, 240).astype(np.float32) / 255.0
    image[10, 10, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        matcher(image, photo(320, 240))
    with pytest.raises(ValueError, match="too elongated"):
        matcher(photo(3000, 40), photo(320, 240))


def test_empty_or_garbage_checkpoint_is_named_without_unsafe_advice(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pt: the file is empty \(0 bytes\)"):
        Matcher(empty, backend="torch")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02garbage")
    with pytest.raises(
        CheckpointError, match="garbage.pt: truncated, corrupt or not a torch checkpoint"
    ) as info:
        Matcher(garbage, backend="torch")
    assert "weights_only=False" not in str(info.value)


@pytest.mark.slow
def test_corrupt_onnx_cache_is_named_never_reused_nor_deleted(student_weights, tmp_path):
    cache = tmp_path / "cache"
    Matcher(student_weights, backend="onnx", cache_dir=cache, num_threads=1)
    (cached,) = cache.glob("*.onnx")
    cached.write_bytes(cached.read_bytes()[:1000])  # e.g. a disk full while copying the cache
    corrupt = cached.read_bytes()
    with pytest.raises(MatcherError, match=rf"cached ONNX export {cached} .* is corrupt.*delete it"):
        Matcher(student_weights, backend="onnx", cache_dir=cache, num_threads=1)
    assert cached.read_bytes() == corrupt
    cached.unlink()  # as the message says
    Matcher(student_weights, backend="onnx", cache_dir=cache, num_threads=1)


def test_a_directory_given_as_weights_is_named_as_such(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a weights file"):
        Matcher(tmp_path, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_refining_student_returns_sub_pixel_positions_in_original_pixels(tmp_path, backend):
    """Refined image1 positions leave the cell centres; image0 stays on them; use_refinement=False undoes it."""
    import torch

    from loftr_kd.models.student import build_student, save_student

    torch.manual_seed(0)
    model = build_student(input_height=240, input_width=320, refine="corr", match_threshold=0.05)
    weights = save_student(model, tmp_path / "refined.pt")
    image0 = photo(640, 480)
    image1 = np.roll(image0, 32, axis=1)
    result = Matcher(weights, backend=backend, cache_dir=tmp_path)(image0, image1)
    assert len(result["keypoints0"]) > 0
    cells0 = (result["keypoints0"] + 0.5) / 32 - 0.5
    np.testing.assert_allclose(cells0, np.round(cells0), atol=1e-4)
    shift = np.abs(result["keypoints1"] - result["coarse_keypoints1"])
    assert shift.max() > 0.5 and shift.max() <= 2 * model.config.refine_window.reach + 1e-3  # x2: 320 -> 640
    coarse = Matcher(weights, backend=backend, cache_dir=tmp_path, use_refinement=False)(image0, image1)
    np.testing.assert_array_equal(coarse["keypoints1"], coarse["coarse_keypoints1"])


def test_one_backend_vocabulary_both_spellings():
    """The Matcher and the benchmark accept each other's backend names (loftr_kd.runtime)."""
    from loftr_kd.cli.bench import BenchSettings
    from loftr_kd.runtime import bench_backend, matcher_backend

    assert [matcher_backend(b) for b in ("onnxruntime", "tensorrt-fp16", "torch", "onnx")] == [
        "onnx",
        "trt",
        "torch",
        "onnx",
    ]
    assert BenchSettings(backends=("onnx", "trt-fp32")).backends == ("onnxruntime", "tensorrt-fp32")
    assert bench_backend("onnxruntime-int8") == "onnxruntime-int8"
    with pytest.raises(ValueError, match="also spelt"):
        Matcher(backend="tflite")


@pytest.mark.skipif(
    not __import__("loftr_kd.paths", fromlist=["x"]).DEFAULT_STUDENT_WEIGHTS.is_file(),
    reason="no shipped student in weights/",
)
def test_the_default_student_is_the_refined_one():
    """weights/MODEL_CARD.md: the default returns sub-pixel (refined) positions."""
    matcher = Matcher(backend="torch")
    assert matcher.config["refine"] != "none" and matcher.weights.name == "student_paper_refine.pt"


def test_a_uniform_image_is_matched_with_a_warning_naming_it(student_weights):
    """A black (or covered, or failed) frame has nothing to match: a warning names it (the shipped student
    finds no match there; a barely trained one may find a few, which the warning says are not real)."""
    matcher = Matcher(student_weights, backend="torch", num_threads=1)
    with pytest.warns(UserWarning, match=r"image1 is uniform \(every pixel 0 on the 0-1 scale\)"):
        matcher(photo(320, 240), np.zeros((240, 320), np.uint8))
    with pytest.warns(UserWarning, match=r"image0 is uniform \(every pixel 1 on the 0-1 scale\)"):
        matcher(np.full((240, 320, 3), 255, np.uint8), photo(320, 240))
    with warnings.catch_warnings(record=True) as record:  # called directly, or through a call: the
        warnings.simplefilter("always")  # warning points at the caller's line, here
        matcher.prepare(np.zeros((240, 320), np.uint8), "frame")
        matcher(photo(320, 240), np.zeros((240, 320), np.uint8))
    uniform = [w for w in record if " is uniform " in str(w.message)]
    assert [str(w.message).split(" is uniform ")[0] for w in uniform] == ["frame", "image1"]
    assert [Path(w.filename).name for w in uniform] == [Path(__file__).name] * 2
    shipped = Matcher(backend="onnx", threads=1)
    with pytest.warns(UserWarning, match="image1 is uniform"):
        assert len(shipped(photo(640, 480), np.full((480, 640), 128, np.uint8))["keypoints0"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a textured pair says nothing
        assert len(matcher(photo(320, 240), photo(320, 240))["keypoints0"]) > 0


def test_corner_queries_without_refinement_return_both_cell_centres():
    """The shipped default puts image0's point at a corner pixel of its cell; ``use_refinement=False`` must
    give the pair of matched cell centres, not that pixel beside image1's cell centre."""
    image0 = photo(640, 480)
    image1 = np.roll(image0, 24, axis=1)
    refined = Matcher(backend="onnx", threads=1)(image0, image1)
    coarse = Matcher(backend="onnx", threads=1, use_refinement=False)(image0, image1)
    assert len(coarse["keypoints0"]) > 100
    np.testing.assert_array_equal(coarse["keypoints0"], coarse["coarse_keypoints0"])
    np.testing.assert_array_equal(coarse["keypoints1"], coarse["coarse_keypoints1"])
    cells = (coarse["keypoints0"] + 0.5) / 16 - 0.5  # 640x480 is the input: cell centres of the 16-px grid
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-4)
    # refined, image0's points leave the centres (corner queries) but stay inside their cells
    moved = np.abs(refined["keypoints0"] - refined["coarse_keypoints0"])
    assert (moved > 0.5).any(axis=1).mean() > 0.5 and moved.max() <= 8
    # the same matches either way; a 24-px shift is found from the cell centres up to the cells' quantisation
    np.testing.assert_array_equal(refined["coarse_keypoints0"], coarse["coarse_keypoints0"])
    np.testing.assert_allclose(np.median(coarse["keypoints1"][:, 0] - coarse["keypoints0"][:, 0]), 24, atol=8)


def test_threshold_and_device_are_checked_before_any_work():
    """A threshold outside [0, 1) matched nothing on the onnx backend without a word (and blamed the weights
    on the torch one); a misspelt device was a torch traceback or silently the CPU."""
    import onnxruntime as ort

    for threshold in (2, -0.1, float("nan"), 1.0):
        with pytest.raises(
            ValueError, match=rf"threshold={threshold}: expected a match confidence in \[0, 1\)"
        ):
            Matcher(threshold=threshold)
    with pytest.raises(MatcherError, match=r"backend 'trt' needs a TensorRT engine, and none ships"):
        Matcher(backend="trt")
    with pytest.raises(ValueError, match=r"device='banana': expected 'cpu', 'cuda' or 'cuda:N'"):
        Matcher(device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(MatcherError, match=r"device='cuda': this torch .* sees no CUDA GPU"):
            Matcher(backend="torch", device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.warns(UserWarning, match="this onnxruntime has no CUDA provider"):
            assert Matcher(device="cuda").runner.providers == ["CPUExecutionProvider"]
