"""The Python API with input a user gets wrong: a clear error or warning, never a silent empty result."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.geometry import estimate_homography
from loftr_kd.kornia_loftr import StudentLoFTR
from loftr_kd.matcher import Matcher
from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS
from loftr_kd.registration import GuidedMatcher, register
from loftr_kd.resizing import aspect_true_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# image1 is image0 moved 12 px right and 7 px down: every match's true position is known.
SHIFT = np.array([12.0, 7.0])


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    photo = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)
    image0 = cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA)
    move = np.float32([[1, 0, SHIFT[0]], [0, 1, SHIFT[1]]])
    return image0, cv2.warpAffine(image0, move, (320, 240), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(threads=1, size=320)


def _correct(result: dict[str, np.ndarray], shift: np.ndarray = SHIFT) -> float:
    """Share of the matches within 3 px of the known shift."""
    error = np.linalg.norm(result["keypoints1"] - result["keypoints0"] - shift, axis=1)
    return float(np.mean(error < 3)) if len(error) else 0.0


def test_float_images_a_hair_past_one_are_read_as_zero_to_one(matcher, pair):
    image0, image1 = (image.astype(np.float32) / 255 for image in pair)
    plain = matcher(image0, image1)
    noisy = image0.copy()
    noisy[0, 0] = 1.0005  # a resampled [0, 1] image: rounding noise, not a 0-255 image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = matcher(noisy, image1)
    assert len(result["keypoints0"]) >= 0.9 * len(plain["keypoints0"]) > 50
    assert _correct(result) > 0.8


@pytest.mark.parametrize("kind", ["float brightened past 1", "uint16 of 8-bit values"])
def test_an_image_that_comes_out_nearly_black_is_said(matcher, pair, kind):
    image0, image1 = pair
    if kind == "uint16 of 8-bit values":
        image0, image1 = image0.astype(np.uint16), image1.astype(np.uint16)
    else:
        image0, image1 = image0 / 255 * 1.2, image1 / 255 * 1.2
    with pytest.warns(UserWarning, match=r"image0 is nearly black: its brightest pixel is .* rescaled"):
        matcher(image0, image1)


def test_a_strip_of_exactly_two_and_a_half_cells_is_enlarged_not_emptied(matcher, pair):
    # A short side of 40 px at stride 16 is 2.5 cells: round() ties to even, so it used to become 2 cells,
    # which border removal empties (0 matches, no word).
    assert aspect_true_size(40, 640, 640, 16, min_cells=3) == (48, 768, True)
    assert aspect_true_size(41, 640, 640, 16, min_cells=3) == (48, 640, False)
    strip0 = np.ascontiguousarray(np.tile(pair[0][100:140], (1, 2)))  # 640x40
    strip1 = np.roll(strip0, 12, axis=1)
    with pytest.warns(UserWarning, match="too elongated"):
        result = Matcher(threads=1)(strip0, strip1)
    assert len(result["keypoints0"]) > 0 and _correct(result, np.array([12.0, 0.0])) > 0.5


def test_non_array_images_say_what_to_do(matcher, pair):
    with pytest.raises(
        TypeError, match=r"image0: expected a numpy image .* got None \(cv2.imread returns None"
    ):
        matcher(None, pair[1])
    with pytest.raises(TypeError, match=r"image1: .* got the path 'b.png'; read it first"):
        matcher(pair[0], "b.png")
    with pytest.raises(TypeError, match=r"image0: .* got a torch Tensor; pass tensor.cpu\(\).numpy\(\)"):
        matcher(torch.zeros(240, 320), pair[1])


def test_batch_calls_name_a_wrong_container(matcher, pair):
    with pytest.raises(TypeError, match=r"encode_batch takes a sequence of images .* got one 2-D array"):
        matcher.encode_batch(pair[0])
    features = matcher.encode_batch(list(pair))
    with pytest.raises(TypeError, match=r"pairs\[0\] is ImageFeatures, not a pair"):
        matcher.match_batch(features)
    with pytest.raises(TypeError, match="guided matching takes images, not encoded features"):
        GuidedMatcher(matcher)(features[0], pair[1])
    with pytest.raises(ValueError, match="size=320.5: expected a whole number"):
        matcher(pair[0], pair[1], size0=320.5)


def test_register_refuses_matches_it_cannot_read(matcher, pair):
    result = matcher(*pair)
    k0, k1 = result["keypoints0"], result["keypoints1"]
    registration = register(k0, k1, pair[0].shape[:2])
    assert registration.reliable
    np.testing.assert_allclose(registration.homography[:2, 2], SHIFT, atol=1.0)
    with pytest.raises(ValueError, match=f"same matches: {len(k0)} against {len(k0) - 5} points"):
        register(k0, k1[:-5], pair[0].shape[:2])
    with pytest.raises(
        ValueError, match=r"keypoints0 must be an \(N, 2\) array .* \(transposed\? pass points.T\)"
    ):
        register(k0.T, k1.T, pair[0].shape[:2])
    with pytest.raises(ValueError, match=r"shape0=\(240, 320, 3\): expected image0's \(height, width\)"):
        register(k0, k1, (240, 320, 3))
    with pytest.raises(ValueError, match="threshold=-1: the inlier threshold must be a positive number"):
        estimate_homography(k0, k1, threshold=-1)


@pytest.fixture(scope="module")
def tensors(pair) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(image).float()[None, None] / 255 for image in pair)


def test_the_kornia_drop_in_checks_its_size_and_says_an_enlarged_strip():
    for size in (0, -5, 10, 320.5, float("nan"), True, 100_000):
        with pytest.raises(ValueError, match="expected a whole number of pixels for the long side, from 32"):
            StudentLoFTR(size=size)
    strip = torch.rand(1, 1, 40, 640)
    with pytest.warns(UserWarning, match=r"image0 of 640x40 pixels is too elongated .* matched at 768x48"):
        StudentLoFTR()({"image0": strip, "image1": strip})


def test_the_kornia_drop_in_stays_in_eval_mode(tensors):
    drop_in = StudentLoFTR()
    assert not drop_in.training and not drop_in.model.training
    before = {name: buffer.clone() for name, buffer in drop_in.model.named_buffers()}
    torch.nn.Sequential(drop_in).train()  # a parent switched to training
    assert not drop_in.training and not drop_in.model.training
    drop_in({"image0": tensors[0], "image1": tensors[1]})
    for name, buffer in drop_in.model.named_buffers():
        torch.testing.assert_close(buffer, before[name], msg=f"{name} changed")


def test_the_kornia_drop_in_names_a_wrong_input(pair, tensors):
    drop_in = StudentLoFTR()
    with pytest.raises(TypeError, match="takes a dict .* got tuple"):
        drop_in(tensors)
    with pytest.raises(TypeError, match=r"image0 must be a torch.Tensor \(B, 1, H, W\), got ndarray"):
        drop_in({"image0": pair[0], "image1": tensors[1]})
    with pytest.raises(ValueError, match="StudentLoFTR runs a torch checkpoint .* loftr_kd.Matcher"):
        StudentLoFTR(DEFAULT_STUDENT_WEIGHTS.with_suffix(".onnx"))
