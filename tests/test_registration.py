"""Guided matching (loftr_kd.registration): coordinate bookkeeping of rotations, zooms and the rewarp
against exact warps, the search's choice, a hard pair registered better than one pass, clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from loftr_kd.evaluation import corner_error, warp_points
from loftr_kd.matcher import Matcher, MatcherError, OpenCVMatcher, build_matcher
from loftr_kd.paths import WEIGHTS_DIR
from loftr_kd.registration import (
    GuidedMatcher,
    GuidedSettings,
    VerdictRule,
    implausible_shape,
    judge,
    register,
    rotation_about_centre,
    rotation_map,
    with_guidance,
)

SHIPPED_ONNX = WEIGHTS_DIR / "student_paper_refine.onnx"


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    """The shipped default student (dynamic ONNX), the model the guided mode is measured with."""
    return Matcher(SHIPPED_ONNX, backend="onnx", threads=2)


def gray_photo(width: int, height: int) -> np.ndarray:
    """scikit-image's camera man, resized: a real photograph with texture everywhere."""
    return cv2.resize(skdata.camera(), (width, height), interpolation=cv2.INTER_AREA)


def errors(result: dict, truth) -> np.ndarray:
    """Distance of each match's image1 point from where the exact warp puts its image0 point."""
    k0 = np.asarray(result["keypoints0"], np.float64)
    return np.linalg.norm(truth(k0) - np.asarray(result["keypoints1"], np.float64), axis=1)


# ------------------------------------------------------------------------------------ settings
def test_settings_order_hypotheses_nearest_first_and_reject_nonsense():
    hyps = GuidedSettings(rotations=(45, 0, -45), scales=(2, 1, 0.5)).hypotheses()
    assert hyps[0] == (0.0, 1.0) and hyps[1:3] == [(0.0, 0.5), (0.0, 2.0)] and len(hyps) == 9
    assert {abs(r) for r, _ in hyps[3:]} == {45.0}
    for bad, match in [
        ({"scales": (0.0,)}, "positive zoom"),
        ({"rotations": ()}, "at least one rotation"),
        ({"min_inliers": 3}, "at least 4"),
        ({"stop_inliers": 5, "min_inliers": 6}, "stop_inliers"),
        ({"rotations": (float("nan"),)}, "finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            GuidedSettings(**bad)
    assert GuidedSettings.from_value(None) is None and GuidedSettings.from_value(False) is None
    assert GuidedSettings.from_value(True) == GuidedSettings()
    assert GuidedSettings.from_value({"rotations": [0]}).rotations == (0.0,)
    with pytest.raises(ValueError, match="unknown guided-matching setting.*rotation'"):
        GuidedSettings.from_value({"rotation": [0]})


def test_rotation_presets_and_the_waves_a_search_batches():
    assert GuidedSettings(rotations="full").rotations == (0.0, -45.0, 45.0, -90.0, 90.0, -135.0, 135.0, 180.0)
    assert GuidedSettings(rotations="default") == GuidedSettings()
    with pytest.raises(ValueError, match="rotations='all' is not a preset; choose one of default, full"):
        GuidedSettings(rotations="all")
    waves = GuidedSettings().waves()
    assert waves[0] == [(0.0, 1.0)] and waves[1] == [(0.0, 0.5), (0.0, 2.0)] and len(waves) == 3
    assert sorted(waves[2]) == sorted((r, s) for r in (-45.0, 45.0) for s in (0.5, 1.0, 2.0))
    assert [h for wave in waves for h in wave] == GuidedSettings().hypotheses()  # the same order
    turns = GuidedSettings(rotations=(0, 270, 180, 90), scales=(1,)).waves()
    assert turns == [[(0.0, 1.0)], [(270.0, 1.0), (90.0, 1.0)], [(180.0, 1.0)]]  # 270 is -90: one wave


def test_quarter_turns_are_exact_and_turn_the_canvas():
    """rotation_map of a multiple of 90 degrees is np.rot90's pixel map (canvas W x H -> H x W)."""
    w, h = 7, 4
    image = np.arange(w * h, dtype=np.float32).reshape(h, w)
    for degrees, k in ((90, 1), (180, 2), (270, 3), (-90, 3), (450, 1)):
        matrix, size = rotation_map(degrees, w, h)
        turned = np.rot90(image, k)
        assert size == (turned.shape[1], turned.shape[0])
        ys, xs = np.mgrid[0:h, 0:w]
        points = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        moved = np.rint(warp_points(points, matrix)).astype(int)
        np.testing.assert_array_equal(turned[moved[:, 1], moved[:, 0]], image.ravel())
    matrix, size = rotation_map(45, w, h)
    assert size == (w, h) and np.allclose(matrix, rotation_about_centre(45, w, h))


def test_rotation_about_centre_is_numpys_quarter_turn():
    """np.rot90 turns an image a quarter counter-clockwise: the same map as rotation_about_centre(90)."""
    n = 7
    image = np.zeros((n, n), np.uint8)
    image[1, 5] = 255  # x=5, y=1
    turned = np.rot90(image)
    y, x = np.argwhere(turned == 255)[0]
    np.testing.assert_allclose(warp_points(np.array([[5.0, 1.0]]), rotation_about_centre(90, n, n)), [[x, y]])


# ------------------------------------------------------------------------ exact bookkeeping
def test_rotation_hypothesis_maps_matches_back_into_the_turned_image(matcher):
    """image1 is image0 turned a quarter (exact, np.rot90): the -90 hypothesis turns it back, so the
    student matches two identical images, and the matches must land where the quarter turn puts them."""
    n = 480
    image0 = gray_photo(n, n)
    image1 = np.ascontiguousarray(np.rot90(image0))
    turn = rotation_about_centre(90, n, n)
    guided = GuidedMatcher(
        matcher,
        GuidedSettings(rotations=(0, -90), scales=(1,), search_size=None, stop_inliers=10**6, rewarp=False),
    )
    result = guided(image0, image1)
    rotation, scale, inliers, final_pass = result["hypothesis"]
    assert (rotation, scale, final_pass) == (-90.0, 1.0, 1.0)
    assert inliers >= 100 and len(result["keypoints0"]) >= 100
    err = errors(result, lambda k: warp_points(k, turn))
    assert np.median(err) < 1.0, np.median(err)
    assert corner_error(result["prior_homography"], turn, n, n) < 1.0


def test_zoom_hypothesis_matches_the_zoomed_image_at_half_resolution(matcher):
    """image1 is the centre of image0 enlarged 2x (exact resize): the zoom-2 hypothesis shows image1 at half
    the resolution, and its matches must map to 2 * (x - offset) in image1's own pixels."""
    image0 = gray_photo(640, 480)
    image1 = cv2.resize(image0[120:360, 160:480], (640, 480), interpolation=cv2.INTER_LINEAR)

    def truth(k):  # cv2.resize by 2: x' = (x + 0.5) * 2 - 0.5, pixel centres at integers
        return (k - np.array([160.0, 120.0]) + 0.5) * 2.0 - 0.5

    guided = GuidedMatcher(
        matcher,
        GuidedSettings(rotations=(0,), scales=(1, 2), search_size=640, stop_inliers=10**6, rewarp=False),
    )
    result = guided(image0, image1)
    assert tuple(result["hypothesis"][:2]) == (0.0, 2.0)
    k0 = result["keypoints0"]
    in_crop = (k0[:, 0] >= 160) & (k0[:, 0] <= 479) & (k0[:, 1] >= 120) & (k0[:, 1] <= 359)
    err = errors(result, truth)[in_crop]  # outside the crop image0 has no counterpart in image1
    # image1 pixels are half image0's: 3 px here is 1.5 px of image0; a missed 2x would be 100s of px off
    assert len(err) >= 50 and np.median(err) < 3.0, (len(err), np.median(err))
    zoom = np.array([[2.0, 0, -320 + 0.5], [0, 2.0, -240 + 0.5], [0, 0, 1]])  # truth() as a matrix
    assert corner_error(result["prior_homography"], zoom, 640, 480) < 6.0


def test_rewarp_maps_matches_back_through_the_prior(matcher):
    """With the exact prior (a sub-pixel shift), the rewarped image1 is image0 again; the matches, mapped
    back through the prior, must sit on the shift."""
    image0 = gray_photo(640, 480).astype(np.float32) / 255
    shift = np.array([[1.0, 0.0, 12.3], [0.0, 1.0, -7.6], [0.0, 0.0, 1.0]])  # image0 -> image1
    image1 = cv2.warpAffine(image0, shift[:2], (640, 480), flags=cv2.INTER_LINEAR)
    guided = GuidedMatcher(matcher)
    result = guided.rewarp(image0, image1, shift)
    err = errors(result, lambda k: warp_points(k, shift))
    # the student's own accuracy on a twice-resampled image; ignoring the prior would be ~14 px off
    assert len(err) >= 100 and np.median(err) < 1.5, (len(err), np.median(err))
    k1 = result["keypoints1"]
    assert k1[:, 0].min() >= 0 and k1[:, 1].min() >= 0 and k1[:, 0].max() <= 639 and k1[:, 1].max() <= 479


# ------------------------------------------------------------------------------- the point of it
def test_a_rotated_zoomed_pair_registers_better_guided_than_in_one_pass(matcher):
    """50 degrees and 1.7x zoom, beyond what the upright student matches in one pass: the guided default
    finds the hypothesis near the truth and registers to a few pixels."""
    w, h = 640, 480
    image0 = gray_photo(w, h)
    centre = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1.0]])
    angle = np.deg2rad(50)
    turn_zoom = np.diag([1.7, 1.7, 1.0]) @ np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
    )
    truth = np.linalg.inv(centre) @ turn_zoom @ centre  # image0 -> image1, about the centre
    image1 = cv2.warpPerspective(image0, truth, (w, h), flags=cv2.INTER_LINEAR)

    from loftr_kd.evaluation import estimate_homography

    def error_of(result):
        homography, _ = estimate_homography(result["keypoints0"], result["keypoints1"])
        return corner_error(homography, truth, w, h)

    one_pass = error_of(matcher(image0, image1))
    result = GuidedMatcher(matcher)(image0, image1)
    guided = error_of(result)
    assert guided < 3.0 and guided < one_pass, (guided, one_pass)
    _, _, _, final_pass = result["hypothesis"]
    # a hypothesis whose homography holds the 50-degree turn (the 45-degree one, or with corner queries
    # the upright pass itself, already near the truth), then the rewarp through it
    prior = result["prior_homography"]
    assert abs(np.degrees(np.arctan2(prior[1, 0], prior[0, 0])) - 50) < 5 and final_pass == 2.0


def test_the_batched_search_picks_what_one_call_per_hypothesis_picks(matcher, tmp_path):
    """The shipped file with its split export (image0 encoded once, waves of batched calls) against the same
    whole graph alone (one whole-pair call per hypothesis, the search before the split): the same
    hypothesis, the same rewarp decision, the matches to float rounding."""
    import shutil

    alone = tmp_path / SHIPPED_ONNX.name
    shutil.copyfile(SHIPPED_ONNX, alone)
    sequential = Matcher(alone, backend="onnx", threads=2)
    assert matcher.can_encode and not sequential.can_encode
    w, h = 640, 480
    image0 = gray_photo(w, h)
    truth = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), -50.0, 1.3), [0, 0, 1]])
    image1 = cv2.warpPerspective(image0, truth, (w, h), flags=cv2.INTER_LINEAR)
    settings = GuidedSettings(stop_inliers=10**6)  # every hypothesis, every wave
    batched = GuidedMatcher(matcher, settings)(image0, image1)
    one_by_one = GuidedMatcher(sequential, settings)(image0, image1)
    np.testing.assert_array_equal(batched["hypothesis"][[0, 1, 3]], one_by_one["hypothesis"][[0, 1, 3]])
    assert abs(batched["hypothesis"][2] - one_by_one["hypothesis"][2]) <= 2  # search inliers (RANSAC)
    assert abs(len(batched["keypoints0"]) - len(one_by_one["keypoints0"])) <= 2
    assert corner_error(batched["prior_homography"], one_by_one["prior_homography"], w, h) < 1.0


def test_the_full_preset_registers_an_upside_down_photo(matcher):
    """An upside-down copy (exact half turn) is beyond the default's +-45 degrees: there the search finds no
    right hypothesis and the result does not register it (a few chance inliers, a corner error of pixels to
    hundreds); ``rotations="full"`` gets within 45 degrees of it and registers it."""
    from loftr_kd.evaluation import estimate_homography

    w, h = 640, 480
    image0 = gray_photo(w, h)
    image1 = np.ascontiguousarray(np.rot90(image0, 2))
    truth, _ = rotation_map(180, w, h)

    def error_of(result):
        homography, _ = estimate_homography(result["keypoints0"], result["keypoints1"])
        return corner_error(homography, truth, w, h) if homography is not None else np.inf

    full = GuidedMatcher(matcher, GuidedSettings(rotations="full"))(image0, image1)
    assert abs(full["hypothesis"][0]) >= 135.0 and full["hypothesis"][3] == 2.0
    assert error_of(full) < 2.0
    assert error_of(GuidedMatcher(matcher)(image0, image1)) > 5.0  # 11 px with the border of one cell


# ---------------------------------------------------------------------------------------- errors
def test_guided_wraps_students_only_and_needs_any_size_for_zoom(matcher, tmp_path):
    with pytest.raises(TypeError, match="student Matcher"):
        GuidedMatcher(OpenCVMatcher("orb"))
    with pytest.raises(ValueError, match="guided matching is for the student"):
        with_guidance(build_matcher("orb"), True)
    assert isinstance(with_guidance(matcher, {"rotations": [0]}), GuidedMatcher)
    assert with_guidance(matcher, False) is matcher and with_guidance(matcher, None) is matcher
    with pytest.raises(ValueError, match="size 8 must be between"):
        GuidedMatcher(matcher, GuidedSettings(search_size=8))

    from loftr_kd.export.onnx import export_onnx
    from loftr_kd.models.student import build_student

    static = Matcher(export_onnx(build_student(input_height=96, input_width=128), tmp_path / "s.onnx"))
    with pytest.raises(MatcherError, match="static input of 128x96.*dynamic=true"):
        GuidedMatcher(static)
    GuidedMatcher(static, GuidedSettings(scales=(1,), search_size=None))  # rotations and rewarp work there


def test_a_static_export_falls_back_to_one_pass_with_a_warning_naming_no_guided(tmp_path):
    """What every training run exports (static shapes) given the default guided request: one pass, said once."""
    from loftr_kd.export.onnx import export_onnx
    from loftr_kd.models.student import build_student

    static = Matcher(export_onnx(build_student(input_height=96, input_width=128), tmp_path / "s.onnx"))
    with pytest.warns(UserWarning, match=r"static input of 128x96.*one pass.*--no-guided"):
        assert with_guidance(static, True) is static
    # settings that fit a static input are honoured; ones that do not are an error naming what exists
    assert isinstance(with_guidance(static, {"scales": [1], "search_size": None}), GuidedMatcher)
    with pytest.raises(MatcherError, match=r"GuidedSettings scales=\[1\], search_size=None"):
        with_guidance(static, {"scales": [1, 2]})


# ------------------------------------------------------------------------------------ the verdict
def homography_of(rotation_deg: float, zoom: float, width: int = 640, height: int = 480) -> np.ndarray:
    """A rotation and zoom about the image centre (image0 -> image1 pixels)."""
    return (
        rotation_about_centre(rotation_deg, width, height)
        @ np.diag([zoom, zoom, 1.0])
        @ np.array(
            [[1, 0, -(width - 1) / 2 * (1 - 1 / zoom)], [0, 1, -(height - 1) / 2 * (1 - 1 / zoom)], [0, 0, 1]]
        )
    )


def test_the_verdict_rests_on_inliers_their_share_their_spread_and_a_plausible_shape():
    """Exact matches spread over the image are reliable; each failed criterion is named in the reason."""
    rng = np.random.default_rng(0)
    truth = homography_of(20.0, 1.3)
    spread = rng.uniform([0, 0], [639, 479], (60, 2))
    result = register(spread, warp_points(spread, truth), (480, 640))
    assert result.reliable and result.num_inliers == 60 and result.inlier_ratio == 1.0
    assert result.reason.startswith("reliable: 60 inliers of 60 matches (100%)") and result.coverage > 0.5
    assert result.record()["reliable"] is True and result.record()["num_inliers"] == 60

    few = register(spread[:10], warp_points(spread[:10], truth), (480, 640))  # 10 inliers
    assert not few.reliable and "fewer than 15 inliers" in few.reason
    noise = rng.uniform([0, 0], [639, 479], (280, 2))  # 60 right matches drowned in 280 random ones
    drowned = register(
        np.vstack([spread, noise]),
        np.vstack([warp_points(spread, truth), rng.permutation(noise)]),
        (480, 640),
    )
    assert not drowned.reliable and "under 20% of the matches" in drowned.reason
    corner = rng.uniform([0, 0], [100, 80], (60, 2))  # all in a corner of image0: 2.6% of it
    clustered = register(corner, warp_points(corner, truth), (480, 640))
    assert not clustered.reliable and "over less than 10% of image0" in clustered.reason
    mirror = np.diag([-1.0, 1.0, 1.0]) @ np.array([[1, 0, -639], [0, 1, 0], [0, 0, 1.0]])
    assert implausible_shape(mirror, (480, 640), 8.0) == "it folds or mirrors image0"
    assert "zooms image0 by 0.1x" in implausible_shape(homography_of(0.0, 0.1), (480, 640), 8.0)
    horizon = np.array([[1, 0, 0], [0, 1, 0], [-1 / 320, 0, 1.0]])  # w = 0 at x = 320
    assert "horizon" in implausible_shape(horizon, (480, 640), 8.0)
    assert implausible_shape(truth, (480, 640), 8.0) is None
    nothing = register(spread[:3], spread[:3], (480, 640))
    assert not nothing.reliable and nothing.homography is None and "no homography" in nothing.reason
    with pytest.raises(ValueError, match="min_coverage"):
        VerdictRule(min_coverage=2.0)


def test_the_issues_examples_are_unreliable():
    """30 of 303 matches (14.6 px off) and 8 of 43 (293 px off) were reported as "homography estimated"."""
    for inliers, matches in ((30, 303), (8, 43)):
        reliable, reason = judge(matches, inliers, 0.5, None, True)
        assert not reliable and reason.startswith(f"unreliable: {inliers} inliers of {matches} matches")
