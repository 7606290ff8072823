"""Any image size, any runtime (issue 12): the position encoding sliced from a maximum grid, dynamic-shape
ONNX export (parity at several sizes from one file, TensorRT profile), aspect-true matching with pairs of
two sizes, degenerate inputs, the torch thread default, and the kornia-LoFTR drop-in."""

from __future__ import annotations

import json

import cv2
import kornia
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.export.onnx import export_onnx
from loftr_kd.export.tensorrt import default_profiles, shape_profile, trtexec_command
from loftr_kd.geometry import CoarseGrid
from loftr_kd.images import ImageError
from loftr_kd.kornia_loftr import StudentLoFTR
from loftr_kd.matcher import DEFAULT_TORCH_THREADS, Matcher, MatcherError, aspect_true_size
from loftr_kd.models.position_encoding import PositionEncodingSine, sine_position_encoding
from loftr_kd.models.student import build_student, save_student
from loftr_kd.paths import WEIGHTS_DIR

REFINED_WEIGHTS = WEIGHTS_DIR / "student_paper_refine.pt"
PAPER_WEIGHTS = WEIGHTS_DIR / "student_paper.pt"
needs_weights = pytest.mark.skipif(
    not (REFINED_WEIGHTS.is_file() and PAPER_WEIGHTS.is_file()), reason="shipped weights not present"
)
TINY = dict(input_height=96, input_width=128, match_threshold=0.0, border_removal=1)


def rocket() -> np.ndarray:
    """A real photo from an installed package (scikit-image), 640x427 grayscale uint8."""
    return cv2.cvtColor(skdata.rocket(), cv2.COLOR_RGB2GRAY)


def _randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics so a random student's matches depend on the image."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_refined(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_student(refine="corr", **TINY))
    return model, save_student(model, tmp_path_factory.mktemp("w") / "tiny_refined.pt")


# ------------------------------------------------------------------------------ model
def test_position_encoding_slice_is_the_encoding_of_the_smaller_grid_bit_for_bit():
    table = PositionEncodingSine(32, 64, 64, temp_bug_fix=False)
    x = torch.zeros(1, 32, 30, 40)
    torch.testing.assert_close(table(x), sine_position_encoding(32, 30, 40, False), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceeds the position encoding's maximum grid 64x64"):
        table(torch.zeros(1, 32, 65, 8))


def test_one_model_serves_every_size_up_to_its_maximum():
    model = build_student(input_height=64, input_width=64, max_height=128, max_width=96).eval()
    with torch.no_grad():
        for h0, w0, h1, w1 in ((64, 64, 64, 64), (128, 48, 32, 96), (96, 96, 128, 64)):
            out = model(torch.rand(1, 1, h0, w0), torch.rand(1, 1, h1, w1))
            assert out.similarity.shape == (1, h0 * w0 // 256, h1 * w1 // 256)
        with pytest.raises(
            ValueError, match=r"image1 of 112x64 pixels is larger than the model's maximum 96x128"
        ):
            model(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 112))
    with pytest.raises(ValueError, match="max_width=40 must be a multiple of coarse_stride=16"):
        build_student(input_height=64, input_width=64, max_width=40)


# ------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def dynamic_refined(tiny_refined, tmp_path_factory):
    model, _ = tiny_refined
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "dynamic.onnx", dynamic=True)


def test_dynamic_onnx_parity_at_three_sizes_and_a_mixed_pair_from_one_file(tiny_refined, dynamic_refined):
    model, _ = tiny_refined
    photo = rocket().astype(np.float32) / 255.0
    pairs = []
    for h, w in ((96, 128), (128, 96), (64, 144)):  # landscape, portrait, wide
        a = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        pairs.append((a, np.roll(a, (3, 5), axis=(0, 1))))
    pairs.append((pairs[0][0], pairs[1][1]))  # image0 96x128, image1 128x96
    parity = checks.check_parity(model, dynamic_refined, pairs)
    assert parity.ok, parity
    assert parity.matches_torch > 20 and parity.points1_max_abs_diff_px is not None


def test_dynamic_file_metadata_shapes_and_op_allow_list(dynamic_refined, tiny_refined, tmp_path):
    meta = checks.read_metadata(dynamic_refined)
    assert meta["dynamic_axes"] == "batch,height,width" and meta["size_multiple"] == "16"
    assert (meta["max_height"], meta["max_width"]) == ("2048", "2048")
    shapes = checks.io_shapes(dynamic_refined)
    assert shapes["inputs"]["image0"]["shape"] == ["batch", 1, "height0", "width0"]
    assert shapes["inputs"]["image1"]["shape"] == ["batch", 1, "height1", "width1"]
    assert shapes["outputs"]["points1"]["shape"] == ["batch", "cells0", 2]
    assert shapes["outputs"]["match_ids"]["shape"] == ["batch", "cells0"]
    static = export_onnx(tiny_refined[0], tmp_path / "static.onnx")
    assert checks.io_shapes(static)["outputs"]["points1"]["shape"] == [1, 48, 2]
    assert checks.read_metadata(static)["dynamic_axes"] == ""
    for path in (static, dynamic_refined):
        op_check = checks.check_tensorrt_ops(path)
        assert op_check.ok, op_check.violations


def test_tensorrt_profile_comes_from_config_and_is_checked(dynamic_refined):
    with pytest.raises(ValueError, match="dynamic height and width: give the TensorRT optimisation profile"):
        default_profiles(dynamic_refined)
    (profile,) = default_profiles(
        dynamic_refined, settings={"min": [64, 64], "opt": [96, 128], "max": [512, 512], "max_batch": 2}
    )
    assert profile["image0"] == ((1, 1, 64, 64), (1, 1, 96, 128), (2, 1, 512, 512)) == profile["image1"]
    command = trtexec_command(dynamic_refined, "m.engine", fp16=True, workspace_mb=64, profiles=[profile])
    assert "--minShapes=image0:1x1x64x64,image1:1x1x64x64" in command
    assert "--maxShapes=image0:2x1x512x512" in command
    with pytest.raises(ValueError, match="max size 500x512 .* multiples of the coarse stride 16"):
        shape_profile(dynamic_refined, (64, 64), (96, 128), (500, 512))
    with pytest.raises(ValueError, match="exceeds the graph's maximum 2048x2048"):
        shape_profile(dynamic_refined, (64, 64), (96, 128), (4096, 512))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        shape_profile(dynamic_refined, (128, 64), (96, 128), (512, 512))


# ------------------------------------------------------------------------------ Matcher: aspect-true
@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(480, 640, (480, 640)), (640, 480, (640, 480)), (560, 640, (560, 640)), (427, 640, (432, 640))],
)
def test_aspect_true_size_keeps_the_aspect_without_padding(height, width, expected):
    assert aspect_true_size(height, width, 640, 16)[:2] == expected


def test_portrait_and_640x560_images_are_not_letterboxed(tiny_refined):
    _, weights = tiny_refined
    matcher = Matcher(weights, backend="torch", size=640)
    for height, width in ((640, 480), (560, 640)):
        model_input, box = matcher.prepare(np.random.default_rng(0).random((height, width), np.float32))
        assert model_input.shape == (height, width) and (box.content_height, box.content_width) == (
            height,
            width,
        )


@needs_weights
@pytest.mark.parametrize("size", [640, 480])
def test_same_scene_at_other_sizes_and_aspects_matches_the_same_physical_places(size):
    """image1 is image0 resized (a known homography: per-axis scale); the two images differ in size and
    aspect, and every match must land where that homography puts its image0 keypoint."""
    image0 = rocket()
    height, width = image0.shape
    # Confident matches only (the shipped threshold, 0.05, is tuned for RANSAC, which tolerates outliers):
    # this checks where sizes and aspects put the matches, not the threshold.
    matcher = Matcher(REFINED_WEIGHTS, backend="torch", size=size, threshold=0.2)
    for new_w, new_h in ((480, 320), (560, 427), (400, 427)):
        image1 = cv2.resize(image0, (new_w, new_h), interpolation=cv2.INTER_AREA)
        result = matcher(image0, image1)
        scale = np.array([new_w / width, new_h / height])
        truth = (result["keypoints0"] + 0.5) * scale - 0.5  # pixel-centre convention of cv2.resize
        error = np.linalg.norm(result["keypoints1"] - truth, axis=1)
        assert len(error) >= 8, (new_w, new_h)
        assert np.median(error) < 2.5 and np.mean(error < 8) >= 0.8, (new_w, new_h, np.median(error))
        for points, (h, w) in (
            (result["keypoints0"], (height, width)),
            (result["keypoints1"], (new_h, new_w)),
        ):
            assert (points >= 0).all() and (points[:, 0] <= w - 1).all() and (points[:, 1] <= h - 1).all()


def test_dynamic_onnx_file_matches_like_torch_on_a_pair_of_two_sizes(tiny_refined, dynamic_refined):
    _, weights = tiny_refined
    photo = rocket()
    image0, image1 = photo, cv2.resize(photo, (300, 400), interpolation=cv2.INTER_AREA)
    from_torch = Matcher(weights, backend="torch", size=320)(image0, image1)
    onnx_matcher = Matcher(dynamic_refined, backend="onnx", size=320)
    assert onnx_matcher.dynamic and "aspect-true" in repr(onnx_matcher)
    from_onnx = onnx_matcher(image0, image1)
    assert len(from_torch["keypoints0"]) > 10
    np.testing.assert_array_equal(from_torch["keypoints0"], from_onnx["keypoints0"])
    close = np.abs(from_torch["keypoints1"] - from_onnx["keypoints1"]).max(-1) < 0.05
    assert close.mean() >= 0.95


def test_static_file_letterboxes_and_refuses_another_size(tiny_refined, tmp_path):
    model, _ = tiny_refined
    static = export_onnx(model, tmp_path / "static.onnx")
    matcher = Matcher(static, backend="onnx")
    assert not matcher.dynamic and "letterboxed" in repr(matcher)
    model_input, box = matcher.prepare(np.ones((200, 100), np.float32))
    assert model_input.shape == (96, 128) and (box.content_height, box.content_width) == (96, 48)
    with pytest.raises(MatcherError, match="static input of 128x96.*dynamic=true"):
        Matcher(static, backend="onnx", size=256)


# ------------------------------------------------------------------------------ degenerate inputs
def test_degenerate_inputs_are_errors_or_explicit_warnings(tiny_refined):
    _, weights = tiny_refined
    matcher = Matcher(weights, backend="torch", size=128)
    photo = rocket()
    with pytest.raises(ImageError, match="image1: image is empty"):
        matcher(photo, np.zeros((0, 50), np.uint8))
    nan = photo.astype(np.float32) / 255
    nan[10, 10] = np.nan
    with pytest.raises(ImageError, match="image0: 1 pixel.*NaN"):
        matcher(nan, photo)
    with pytest.raises(ImageError, match="image1 of 300x20 pixels is too small.*32 px"):
        matcher(photo, photo[:20, :300])
    strip = cv2.resize(photo, (2000, 100), interpolation=cv2.INTER_AREA)
    with pytest.warns(UserWarning, match=r"image0 of 2000x100 pixels is too elongated.*matched at 960x48"):
        result = matcher(strip, photo)
    assert len(result["keypoints0"]) > 0  # never a silent empty result
    with pytest.raises(ImageError, match="too elongated.*exceed the model's maximum 2048x2048"):
        matcher(cv2.resize(photo, (3000, 40)), photo)


# ------------------------------------------------------------------------------ threads
def test_torch_threads_default_to_one_and_leave_the_callers_setting_alone(tiny_refined):
    _, weights = tiny_refined
    torch.set_num_threads(2)
    matcher = Matcher(weights, backend="torch")
    assert matcher.num_threads == DEFAULT_TORCH_THREADS == 1
    matcher(rocket(), rocket())
    assert torch.get_num_threads() == 2
    assert Matcher(weights, backend="torch", threads=2).num_threads == 2
    with pytest.raises(ValueError, match="disagree"):
        Matcher(weights, backend="torch", threads=2, num_threads=1)


# ------------------------------------------------------------------------------ kornia drop-in
def _kornia_batch() -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """Two real pairs (640x480 photos, each with a known homography) as a kornia-style batch."""
    pairs = real_image_pairs(480, 640, 2, seed=5)
    data = {
        "image0": torch.stack([torch.from_numpy(a)[None] for a, _, _ in pairs]),
        "image1": torch.stack([torch.from_numpy(b)[None] for _, b, _ in pairs]),
    }
    return data, [h for _, _, h in pairs]


@pytest.mark.slow
@needs_weights
def test_kornia_style_call_on_a_batch_of_two_feeds_kornias_own_tools():
    data, homographies = _kornia_batch()
    student = StudentLoFTR(REFINED_WEIGHTS)
    out = student(data)
    # kornia's own LoFTR (architecture only) on the same call: the same keys, dtypes and ranks
    reference = kornia.feature.LoFTR(pretrained=None).eval()
    with torch.no_grad():
        expected = reference({k: v[:, :, :128, :128] for k, v in data.items()})
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key].dtype == value.dtype and out[key].dim() == value.dim(), key
    assert set(out["batch_indexes"].tolist()) == {0, 1}
    for b, homography in enumerate(homographies):
        mine = out["batch_indexes"] == b
        # kornia documents: subtract 0.5 from LoFTR's keypoints for its frame (integer pixel centres)
        points0, points1 = out["keypoints0"][mine] - 0.5, out["keypoints1"][mine] - 0.5
        truth = kornia.geometry.transform_points(torch.from_numpy(homography)[None], points0[None])[0]
        error = (truth - points1).norm(dim=-1)
        assert mine.sum() > 50 and error.median() < 3.0, (b, error.median())
        model, inliers = kornia.geometry.ransac.RANSAC("homography", inl_th=3.0)(points0, points1)
        assert inliers.sum() > 20
        corners = torch.tensor([[[0.0, 0.0], [639.0, 0.0], [639.0, 479.0], [0.0, 479.0]]])
        corner_error = (
            kornia.geometry.transform_points(model[None], corners)
            - kornia.geometry.transform_points(torch.from_numpy(homography)[None], corners)
        ).norm(dim=-1)
        assert corner_error.max() < 10.0, corner_error
        # the LAF route of kornia's visualisation helpers (kornia_moons' draw_LAF_matches)
        lafs = kornia.feature.laf_from_center_scale_ori(points0[None], torch.ones(1, len(points0), 1, 1))
        assert lafs.shape == (1, len(points0), 2, 3)
        # batching changes nothing: pair b alone gives the same matches
        alone = student({k: v[b : b + 1] for k, v in data.items()})
        torch.testing.assert_close(alone["keypoints1"], out["keypoints1"][mine], atol=1e-3, rtol=0)


def test_kornia_drop_in_other_sizes_frames_and_bad_input(tiny_refined):
    model, _ = tiny_refined
    image = (
        torch.from_numpy(cv2.resize(rocket(), (150, 100), interpolation=cv2.INTER_AREA))[None, None] / 255.0
    )
    student = StudentLoFTR(model=model)
    out = student({"image0": image, "image1": image.flip(-1)})  # 150x100: not a multiple of 16
    assert len(out["keypoints0"]) > 0
    assert (out["keypoints0"] >= 0.5).all() and (out["keypoints0"][:, 0] <= 149.5).all()
    plain = StudentLoFTR(model=model, keypoint_frame="kornia")({"image0": image, "image1": image.flip(-1)})
    torch.testing.assert_close(plain["keypoints0"] + 0.5, out["keypoints0"])
    with pytest.raises(ValueError, match=r"does not support \['mask0'\]"):
        student({"image0": image, "image1": image, "mask0": torch.ones(1, 100, 150)})
    with pytest.raises(ValueError, match="image1 has NaN"):
        student({"image0": image, "image1": torch.full_like(image, float("nan"))})
    with pytest.raises(ValueError, match="grayscale"):
        student({"image0": image.expand(1, 3, -1, -1), "image1": image})
    with pytest.raises(ImageError, match="image0 of 150x20 pixels is too small"):
        student({"image0": image[:, :, :20], "image1": image})


def test_grid_of_a_traced_size_stays_a_tensor():
    """While tracing, the grid derives from the traced size (what makes the dynamic export dynamic)."""
    grid = CoarseGrid.for_image(torch.tensor(96), torch.tensor(128), 16)
    assert isinstance(grid.height, torch.Tensor) and int(grid.height) == 6 and int(grid.width) == 8
    assert json.dumps(CoarseGrid.for_image(96, 128, 16).shape) == "[6, 8]"
