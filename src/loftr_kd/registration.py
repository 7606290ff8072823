"""Homography-guided matching: register two views of a planar scene (or a distant one) through a prior.

The student's coarse transformer is upright and was trained without LoFTR on a CPU: it matches well when
the two views differ by less than ~30 degrees and 2x zoom, and poorly beyond (``docs/guided.md`` has the
measurements). For registration, where one homography relates the views, :class:`GuidedMatcher` turns
every pair into an easy one in two passes:

1. **Search.** image0 is matched against *hypotheses* of image1: turned by each of ``rotations`` (quarter
   turns exactly, onto the turned canvas; other angles about the centre on the same canvas) and shown at
   each relative ``scales`` (``2``: image1 is assumed zoomed in 2x, so it is matched at half the resolution
   of image0; ``0.5``: the other way round), at long side ``search_size``. The hypothesis whose matches give
   the most homography inliers (MAGSAC) yields a *prior* homography. Hypotheses are taken nearest-first (no
   rotation, no zoom first) and the search stops once one reaches ``stop_inliers``.

   Where the matcher can encode (:attr:`~loftr_kd.matcher.Matcher.can_encode`: a checkpoint, or an export
   with its encoder and matcher graphs) image0 is encoded once per size, each turned image1 once per
   size, and the hypotheses are matched in *waves* of batched calls of the matcher half: the first
   hypothesis alone (most pairs stop there), then each rotation magnitude's hypotheses together (0° at
   the other zooms, then ±45°, ...). The stop rule reads the waves' results in the same order, so the
   search picks what the one-at-a-time search picks (up to float rounding of batched calls); a file
   without a split export is searched one whole-pair call per hypothesis.
2. **Rewarp.** image1 is warped into image0's frame by the prior and matched again at the matcher's full
   size: the pair is now close to identity, where the student and its refinement are most accurate. The
   matches are mapped back into image1 through the prior; they are kept when they give at least as many
   inliers as the search did (otherwise the search's matches are returned).

The output is a match list in the pixels of the images as given, like :class:`~loftr_kd.matcher.Matcher`'s,
so any robust estimator downstream (``loftr-kd-match``, ``loftr-kd-evaluate``) treats it like any other
matcher's, plus the prior homography and the chosen hypothesis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from loftr_kd.geometry import estimate_homography, warp_points
from loftr_kd.images import to_gray_float
from loftr_kd.matcher import Matcher, MatcherError, OpenCVMatcher

__all__ = [
    "ROTATION_PRESETS",
    "GuidedMatcher",
    "GuidedSettings",
    "rotation_about_centre",
    "rotation_map",
    "with_guidance",
]

# extra keys of a guided result (besides the Matcher's keypoints0/keypoints1/confidence/coarse_keypoints1)
PRIOR_KEY = "prior_homography"  # (3, 3) float64, image0 -> image1 pixels; NaN where no prior was found
HYPOTHESIS_KEY = "hypothesis"  # (4,) rotation_deg, scale, search inliers, final pass (1 search, 2 rewarp)
# Named rotation lists (``rotations="full"``, ``loftr-kd-match --rotations full``): the measured default, and
# every 45 degrees around the circle (upside-down and sideways photos; the student handles +-22.5 degrees).
ROTATION_PRESETS = {
    "default": (0.0, -45.0, 45.0),
    "full": (0.0, -45.0, 45.0, -90.0, 90.0, -135.0, 135.0, 180.0),
}


@dataclass(frozen=True)
class GuidedSettings:
    """Settings of :class:`GuidedMatcher` (defaults chosen on validation pairs of the training photos,
    ``docs/guided.md``).

    Attributes:
        rotations: rotations of image1 (degrees, counter-clockwise) tried in the search, any list (quarter
            turns are exact), or a preset name of :data:`ROTATION_PRESETS` (``"full"``: every 45 degrees).
        scales: zoom of image1 relative to image0 tried in the search (``2``: image1 shows the scene 2x
            larger, so it is matched at half the resolution of image0).
        search_size: long side (pixels) the search matches at; ``None``: the matcher's own size.
        stop_inliers: the search stops at the first hypothesis with this many inliers.
        min_inliers: a prior needs this many inliers to be used for the rewarp pass.
        rewarp: run the rewarp pass (``False``: the search's best matches are the result).
        ransac: robust estimator of the search's homographies (``magsac`` or ``ransac``).
        ransac_threshold: its inlier threshold in pixels of the images as given.
    """

    rotations: tuple[float, ...] | str = ROTATION_PRESETS["default"]
    scales: tuple[float, ...] = (1.0, 0.5, 2.0)
    search_size: int | None = 480
    stop_inliers: int = 20
    min_inliers: int = 6
    rewarp: bool = True
    ransac: str = "magsac"
    ransac_threshold: float = 3.0

    def __post_init__(self) -> None:
        rotations = self.rotations
        if isinstance(rotations, str):
            if rotations not in ROTATION_PRESETS:
                raise ValueError(
                    f"rotations={rotations!r} is not a preset; choose one of {', '.join(ROTATION_PRESETS)} "
                    f"or give a list of degrees"
                )
            rotations = ROTATION_PRESETS[rotations]
        object.__setattr__(self, "rotations", tuple(dict.fromkeys(float(r) for r in rotations)))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.rotations or not self.scales:
            raise ValueError("guided matching needs at least one rotation and one scale (e.g. rotations=[0])")
        if not all(math.isfinite(r) for r in self.rotations):
            raise ValueError(f"rotations must be finite degrees, got {list(self.rotations)}")
        if not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError(
                f"scales must be positive zoom factors (2 = image1 zoomed in 2x), got {list(self.scales)}"
            )
        if self.min_inliers < 4:
            raise ValueError(
                f"min_inliers must be at least 4 (a homography's minimal sample), got {self.min_inliers}"
            )
        if self.stop_inliers < self.min_inliers:
            raise ValueError(
                f"stop_inliers ({self.stop_inliers}) must be at least min_inliers ({self.min_inliers})"
            )
        if self.ransac_threshold <= 0:
            raise ValueError(f"ransac_threshold must be positive pixels, got {self.ransac_threshold}")

    @classmethod
    def from_value(cls, value: Any) -> GuidedSettings | None:
        """``None``/``False`` -> no guidance; ``True`` -> defaults; a mapping -> those fields; settings as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown guided-matching setting(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"guided must be true/false or a mapping of settings, got {value!r}")

    def hypotheses(self) -> list[tuple[float, float]]:
        """``(rotation_deg, scale)`` pairs, nearest to the identity first (rotation, then zoom)."""
        pairs = {(r, s) for r in self.rotations for s in self.scales}
        return sorted(pairs, key=lambda rs: (abs(_turn(rs[0])), abs(math.log(rs[1])), _turn(rs[0]), rs[1]))

    def waves(self) -> list[list[tuple[float, float]]]:
        """:meth:`hypotheses` in the batches a search matches together: the first alone, then each rotation
        magnitude's (the search stops between waves, so a pair that needs few pays for few)."""
        hypotheses = self.hypotheses()
        waves = [hypotheses[:1]]
        for rotation, scale in hypotheses[1:]:
            if len(waves) > 1 and abs(_turn(waves[-1][-1][0])) == abs(_turn(rotation)):
                waves[-1].append((rotation, scale))
            else:
                waves.append([(rotation, scale)])
        return waves


def _turn(degrees: float) -> float:
    """An angle in (-180, 180] (360 turns image1 as 0 does)."""
    turned = math.remainder(float(degrees), 360.0)
    return 180.0 if turned == -180.0 else turned


def rotation_about_centre(degrees: float, width: int, height: int) -> np.ndarray:
    """``(3, 3)`` map of pixels of a ``width x height`` image rotated counter-clockwise (as displayed) about
    its centre, canvas unchanged: original pixel -> rotated pixel (pixel centres at integers)."""
    affine = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), float(degrees), 1.0)
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def rotation_map(degrees: float, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """How the search turns a ``width x height`` image by ``degrees`` (counter-clockwise as displayed).

    A quarter turn (a multiple of 90 degrees) is exact and turns the canvas with the image, as
    ``np.rot90`` does (a portrait photo of a landscape scene becomes landscape, nothing cropped); any other
    angle turns the image about its centre on the same canvas (:func:`rotation_about_centre`).

    Returns:
        ``(3x3 map original pixel -> turned pixel, (turned width, turned height))``.
    """
    turned = _turn(degrees)
    if turned % 90.0:
        return rotation_about_centre(turned, width, height), (width, height)
    matrix, size = np.eye(3), (width, height)
    for _ in range(int(turned // 90.0) % 4):  # each quarter: (x, y) -> (y, W - 1 - x), canvas W x H -> H x W
        matrix = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, size[0] - 1.0], [0.0, 0.0, 1.0]]) @ matrix
        size = (size[1], size[0])
    return matrix, size


def _turned(gray: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``gray`` turned as :func:`rotation_map` says, and the map of its pixels back to ``gray``'s."""
    h, w = gray.shape[:2]
    matrix, size = rotation_map(degrees, w, h)
    if not _turn(degrees) % 90.0:
        shown = np.ascontiguousarray(np.rot90(gray, int(_turn(degrees) // 90.0) % 4))
    else:
        shown = cv2.warpAffine(gray, matrix[:2], size, flags=cv2.INTER_LINEAR)
    return shown, np.linalg.inv(matrix)


def _mapped(result: dict[str, np.ndarray], to_image1: np.ndarray, width1: int, height1: int) -> dict:
    """A match result whose image1 points are moved by ``to_image1`` (3x3) and kept inside image1."""
    out = dict(result)
    k1 = warp_points(np.asarray(result["keypoints1"], np.float64).reshape(-1, 2), to_image1)
    inside = (k1[:, 0] >= 0) & (k1[:, 0] <= width1 - 1) & (k1[:, 1] >= 0) & (k1[:, 1] <= height1 - 1)
    inside &= np.all(np.isfinite(k1), axis=1)
    out["keypoints1"] = k1[inside].astype(np.float32)
    for key in ("keypoints0", "confidence"):
        out[key] = np.asarray(result[key])[inside]
    if "coarse_keypoints1" in result:
        coarse = np.asarray(result["coarse_keypoints1"], np.float64).reshape(-1, 2)
        out["coarse_keypoints1"] = warp_points(coarse, to_image1)[inside].astype(np.float32)
    return out


class GuidedMatcher:
    """A :class:`~loftr_kd.matcher.Matcher` that registers through a rotation/zoom search and a rewarp
    (module docstring). Call it like the Matcher: ``guided(image0, image1)`` returns the Matcher's keys
    plus ``prior_homography`` (3, 3) and ``hypothesis`` (rotation_deg, scale, search inliers, final pass).

    Args:
        matcher: the student matcher. Scales other than 1 and a ``search_size`` of its own need a model
            that takes any size (dynamic ONNX or a checkpoint).
        settings: :class:`GuidedSettings` (default: the measured defaults).
    """

    def __init__(self, matcher: Matcher, settings: GuidedSettings | None = None) -> None:
        if not isinstance(matcher, Matcher):
            raise TypeError(f"guided matching wraps a student Matcher, not {type(matcher).__name__}")
        self.matcher = matcher
        self.settings = settings or GuidedSettings()
        size = self.settings.search_size
        if not matcher.dynamic and (
            any(s != 1.0 for s in self.settings.scales) or size not in (None, matcher.size)
        ):
            raise MatcherError(
                f"{matcher.weights.name} has a static input of {matcher.input_width}x{matcher.input_height}: the "
                "guided search's zoom hypotheses and search size need a model that takes any size (export with "
                "`loftr-kd-export dynamic=true`), or use guided scales=[1] search_size=null"
            )
        self.search_size = matcher.size if size is None else matcher._check_size(size)

    # the Matcher's geometry, for callers that ask a matcher for it (evaluation, loftr-kd-match)
    @property
    def stride(self) -> int:
        return self.matcher.stride

    @property
    def name(self) -> str:
        return f"{self.matcher.name}-guided"

    def input_shape(self, height: int, width: int, name: str = "image") -> tuple[int, int]:
        """The wrapped matcher's model input for an image (raises its errors for unusable images)."""
        return self.matcher.input_shape(height, width, name)

    def _sizes(self, scale: float) -> tuple[int, int]:
        """Long sides of image0 and image1 for a zoom hypothesis (the zoomed-in image is shown smaller)."""
        if scale >= 1.0:
            return self.search_size, max(1, round(self.search_size / scale))
        return max(1, round(self.search_size * scale)), self.search_size

    def search(self, gray0: np.ndarray, gray1: np.ndarray) -> tuple[np.ndarray | None, int, dict, tuple]:
        """The best hypothesis: ``(prior H or None, inliers, its matches in original pixels, (rot, scale))``."""
        s = self.settings
        best: tuple[np.ndarray | None, int, dict | None, tuple] = (None, -1, None, (0.0, 1.0))
        results = self._hypothesis_results(gray0, gray1)
        while best[1] < s.stop_inliers:  # the next hypothesis (its wave is matched when first asked for)
            item = next(results, None)
            if item is None:
                break
            (rotation, scale), result = item
            prior, inliers = estimate_homography(
                result["keypoints0"], result["keypoints1"], method=s.ransac, threshold=s.ransac_threshold
            )
            count = int(inliers.sum()) if prior is not None else 0
            if count > best[1]:
                best = (prior, count, result, (rotation, scale))
        return best[0], max(best[1], 0), best[2], best[3]

    def _hypothesis_results(self, gray0: np.ndarray, gray1: np.ndarray) -> Iterator[tuple[tuple, dict]]:
        """``((rotation, scale), matches in image1's own pixels)`` per hypothesis, in order; a wave is
        matched (batched) when its first hypothesis is asked for."""
        h1, w1 = gray1.shape[:2]
        turned = {}  # rotation -> (image1 turned, map back to image1)
        encoded = {"image0": {}, "image1": {}}  # this pair's encodings: by size, by (rotation, size)
        for wave in self.settings.waves():
            for rotation, _ in wave:
                if rotation not in turned:
                    turned[rotation] = _turned(gray1, rotation) if rotation else (gray1, None)
            if self.matcher.can_encode:
                results = self._match_wave(gray0, turned, wave, encoded)
            else:  # no split export: one whole-pair call per hypothesis
                results = (
                    self.matcher(gray0, turned[rotation][0], size0=size0, size1=size1)
                    for (rotation, scale) in wave
                    for size0, size1 in [self._sizes(scale)]
                )
            for (rotation, scale), result in zip(wave, results):
                back = turned[rotation][1]
                yield (rotation, scale), result if back is None else _mapped(result, back, w1, h1)

    def _match_wave(
        self, gray0: np.ndarray, turned: dict, wave: list[tuple[float, float]], cache: dict
    ) -> list[dict]:
        """A wave's hypotheses in batched calls; each image is encoded once per size (``cache``, kept for
        the later waves)."""
        sizes = {(rotation, scale): self._sizes(scale) for rotation, scale in wave}
        for size0 in {size0 for size0, _ in sizes.values()} - set(cache["image0"]):
            cache["image0"][size0] = self.matcher.encode(gray0, size=size0, name="image0")
        wanted: dict[int, list[float]] = {}  # size1 -> rotations of image1 to encode at it
        for (rotation, _), (_, size1) in sizes.items():
            if (rotation, size1) not in cache["image1"] and rotation not in wanted.get(size1, []):
                wanted.setdefault(size1, []).append(rotation)
        for size1, rotations in wanted.items():
            images = [turned[rotation][0] for rotation in rotations]
            for rotation, features in zip(
                rotations, self.matcher.encode_batch(images, size=size1, name="image1")
            ):
                cache["image1"][(rotation, size1)] = features
        pairs = [
            (cache["image0"][size0], cache["image1"][(rotation, size1)])
            for (rotation, _), (size0, size1) in sizes.items()
        ]
        return self.matcher.match_batch(pairs)

    def rewarp(self, gray0: np.ndarray, gray1: np.ndarray, prior: np.ndarray) -> dict[str, np.ndarray]:
        """Matches of image0 against image1 warped into its frame by ``prior``, in image1's own pixels."""
        h0, w0 = gray0.shape[:2]
        h1, w1 = gray1.shape[:2]
        warped = cv2.warpPerspective(gray1, prior, (w0, h0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        return _mapped(self.matcher(gray0, warped), prior, w1, h1)

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        s = self.settings
        gray0, gray1 = to_gray_float(image0, "image0"), to_gray_float(image1, "image1")
        prior, count, result, (rotation, scale) = self.search(gray0, gray1)
        final_pass = 1
        if s.rewarp and prior is not None and count >= s.min_inliers:
            second = self.rewarp(gray0, gray1, prior)
            _, inliers = estimate_homography(
                second["keypoints0"], second["keypoints1"], method=s.ransac, threshold=s.ransac_threshold
            )
            if int(inliers.sum()) >= count:
                result, final_pass = second, 2
        out = {k: np.asarray(v) for k, v in result.items()}
        out[PRIOR_KEY] = prior if prior is not None else np.full((3, 3), np.nan)
        out[HYPOTHESIS_KEY] = np.array([rotation, scale, count, final_pass], np.float64)
        return out

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"GuidedMatcher({self.matcher!r}, rotations={list(s.rotations)}, scales={list(s.scales)}, "
            f"search_size={self.search_size}, stop_inliers={s.stop_inliers}, rewarp={s.rewarp})"
        )


def with_guidance(matcher: Matcher | OpenCVMatcher, guided: Any) -> Matcher | OpenCVMatcher | GuidedMatcher:
    """``matcher`` wrapped in a :class:`GuidedMatcher` when ``guided`` asks for it (``True`` or a mapping of
    :class:`GuidedSettings` fields), else unchanged (``None``/``False``).

    Raises:
        ValueError: guidance asked for a classical matcher (ORB/SIFT have no guided mode).
    """
    settings = GuidedSettings.from_value(guided)
    if settings is None:
        return matcher
    if isinstance(matcher, OpenCVMatcher):
        raise ValueError(f"guided matching is for the student; {matcher.method} has no guided mode")
    return GuidedMatcher(matcher, settings)
