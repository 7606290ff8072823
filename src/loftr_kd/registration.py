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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from loftr_kd.errors import user_stacklevel
from loftr_kd.features import ImageFeatures
from loftr_kd.geometry import estimate_homography, warp_points
from loftr_kd.images import to_gray_float
from loftr_kd.matcher import Matcher, MatcherError, OpenCVMatcher

__all__ = [
    "ROTATION_PRESETS",
    "GuidedMatcher",
    "GuidedSettings",
    "Registration",
    "VerdictRule",
    "implausible_shape",
    "inlier_coverage",
    "judge",
    "register",
    "rotation_about_centre",
    "rotation_map",
    "with_guidance",
]

# extra keys of a guided result (besides the Matcher's keypoints0/keypoints1/confidence/coarse_keypoints0/1)
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
    for key in ("keypoints0", "confidence", "coarse_keypoints0"):  # image0's points do not move
        if key in result:
            out[key] = np.asarray(result[key])[inside]
    if "coarse_keypoints1" in result:
        coarse = np.asarray(result["coarse_keypoints1"], np.float64).reshape(-1, 2)
        out["coarse_keypoints1"] = warp_points(coarse, to_image1)[inside].astype(np.float32)
    return out


class GuidedMatcher:
    """A :class:`~loftr_kd.matcher.Matcher` that registers through a rotation/zoom search and a rewarp
    (module docstring). Call it like the Matcher: ``guided(image0, image1)`` returns the Matcher's keys
    plus ``prior_homography`` (3, 3) and ``hypothesis`` (rotation_deg, scale, search inliers, final pass).
    It takes images only, not :class:`~loftr_kd.features.ImageFeatures`: the search re-encodes the images
    rotated and zoomed.

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
        if not _fits(matcher, self.settings):
            raise MatcherError(
                f"{matcher.weights.name} has a static input of {matcher.input_width}x{matcher.input_height}: the "
                "guided search's zoom hypotheses and search size need a model that takes any size (export it with "
                "`loftr-kd-export dynamic=true`, or give its checkpoint), or search rotations only "
                "(GuidedSettings scales=[1], search_size=None)"
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
        for name, image in (("image0", image0), ("image1", image1)):
            if isinstance(image, ImageFeatures):
                raise TypeError(
                    f"{name}: guided matching takes images, not encoded features (its search encodes each "
                    "image rotated and zoomed); pass the image, or match features with the Matcher itself"
                )
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
    if guided is True and not _fits(matcher, settings):
        # The default request on a static export (what every training run writes): one pass, said once.
        warnings.warn(
            f"{matcher.weights.name} has a static input of {matcher.input_width}x{matcher.input_height}, and guided "
            "registration needs a model that takes any size: matching in one pass instead (--no-guided, "
            "guided=false, says so without this warning). For guided registration give the checkpoint "
            "(.ckpt/.pt) or an export with `loftr-kd-export dynamic=true`",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return matcher
    return GuidedMatcher(matcher, settings)


def _fits(matcher: Matcher, settings: GuidedSettings) -> bool:
    """The matcher can run the search: it takes any size, or the search needs only its one static size."""
    size = settings.search_size
    return matcher.dynamic or (all(s == 1.0 for s in settings.scales) and size in (None, matcher.size))


# ---------------------------------------------------------------------------------------------------------
# The verdict: is a registration to be trusted? RANSAC returns a homography for almost any match set, so the
# estimate alone says nothing; its support and its shape do.


@dataclass(frozen=True)
class VerdictRule:
    """When a homography estimated from matches is *reliable*: enough inliers, enough of the matches, spread
    over enough of image0, and a plausible shape.

    Chosen on the 120 held-out photo pairs (guided and one-pass student, ORB and SIFT: 480 registrations) to
    separate corner errors under 5 px from large ones, and checked on 120 other pairs of the same photos
    (docs/guided.md, "When a registration is reliable").

    Attributes:
        min_inliers: inliers a reliable homography needs.
        min_inlier_ratio: share of the matches that must be inliers (0-1).
        min_coverage: share of image0 the inliers must span (their convex hull's area over the image's).
        max_zoom: image0 mapped into image1 must keep its corners' order (no fold, no mirror, not across the
            horizon) and change its area by at most ``max_zoom**2`` either way.
    """

    min_inliers: int = 15
    min_inlier_ratio: float = 0.2
    min_coverage: float = 0.1
    max_zoom: float = 8.0

    def __post_init__(self) -> None:
        if self.min_inliers < 4:
            raise ValueError(
                f"min_inliers must be at least 4 (a homography's minimal sample), got {self.min_inliers}"
            )
        for name in ("min_inlier_ratio", "min_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if not self.max_zoom >= 1.0:
            raise ValueError(f"max_zoom must be at least 1, got {self.max_zoom}")


@dataclass(frozen=True)
class Registration:
    """A homography estimated from matches, its inliers, and the verdict on it.

    Attributes:
        homography: ``(3, 3)`` image0 pixels -> image1 pixels, or ``None`` (no model found).
        inliers: ``(N,)`` bool, the matches consistent with it.
        coverage: share of image0 the inliers span (their convex hull's area over the image's).
        reliable: the verdict of the :class:`VerdictRule`.
        reason: the verdict in words, with the figures it rests on.
    """

    homography: np.ndarray | None
    inliers: np.ndarray
    coverage: float
    reliable: bool
    reason: str

    @property
    def num_matches(self) -> int:
        return int(len(self.inliers))

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))

    @property
    def inlier_ratio(self) -> float:
        """Inliers over matches (0 without matches)."""
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def record(self) -> dict[str, Any]:
        """The JSON fields of the verdict (``loftr-kd-match``'s ``matches.json``)."""
        return {
            "num_matches": self.num_matches,
            "num_inliers": self.num_inliers,
            "inlier_ratio": round(self.inlier_ratio, 4),
            "inlier_coverage": round(self.coverage, 4),
            "reliable": self.reliable,
            "verdict": self.reason,
        }


def inlier_coverage(keypoints0: np.ndarray, shape0: tuple[int, int]) -> float:
    """Share of an image of ``shape0`` ``(H, W)`` spanned by ``(N, 2)`` points: their convex hull's area."""
    points = np.asarray(keypoints0, np.float32).reshape(-1, 2)
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points))) / float(shape0[0] * shape0[1])


def implausible_shape(homography: np.ndarray, shape0: tuple[int, int], max_zoom: float) -> str | None:
    """Why ``homography`` cannot map a view of a plane of size ``shape0`` ``(H, W)``, or ``None``: image0's
    corners must stay in front of the horizon, in their order (convex, not mirrored), and its area must change
    by at most ``max_zoom**2`` either way."""
    height, width = shape0
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    w = (corners @ homography[2, :2]) + homography[2, 2]  # homogeneous scale, affine in x, y
    if not (np.all(w > 0) or np.all(w < 0)):
        return "it sends part of image0 beyond the horizon"
    quad = warp_points(corners, homography)
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not np.all(turns > 0):  # image corners run clockwise on screen (y down): every turn positive
        return "it folds or mirrors image0"
    area = 0.5 * float(np.sum(quad[:, 0] * np.roll(quad[:, 1], -1) - np.roll(quad[:, 0], -1) * quad[:, 1]))
    zoom = math.sqrt(area / (width * height))
    if not 1.0 / max_zoom <= zoom <= max_zoom:
        return f"it zooms image0 by {zoom:.2g}x (at most {max_zoom:g}x either way)"
    return None


def judge(
    num_matches: int,
    num_inliers: int,
    coverage: float,
    shape_problem: str | None,
    found: bool,
    rule: VerdictRule | None = None,
) -> tuple[bool, str]:
    """``(reliable, reason)`` of a homography with ``num_inliers`` of ``num_matches`` spanning ``coverage`` of
    image0 (``shape_problem``: :func:`implausible_shape`'s answer; ``found``: one was estimated at all)."""
    rule = rule or VerdictRule()
    if not found:
        return False, f"unreliable: no homography (fewer than 4 consistent matches among {num_matches})"
    ratio = num_inliers / num_matches if num_matches else 0.0
    support = f"{num_inliers} inliers of {num_matches} matches ({ratio:.0%}) over {coverage:.0%} of image0"
    failed = [
        f"fewer than {rule.min_inliers} inliers" if num_inliers < rule.min_inliers else "",
        f"under {rule.min_inlier_ratio:.0%} of the matches" if ratio < rule.min_inlier_ratio else "",
        f"over less than {rule.min_coverage:.0%} of image0" if coverage < rule.min_coverage else "",
        shape_problem or "",
    ]
    failed = [why for why in failed if why]
    if not failed:
        return True, f"reliable: {support}"
    return False, f"unreliable: {support}; {'; '.join(failed)}"


def register(
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    shape0: tuple[int, int],
    *,
    method: str = "magsac",
    threshold: float = 3.0,
    rule: VerdictRule | None = None,
) -> Registration:
    """The homography of two views from their matches, with its inliers and the verdict on it.

    Args:
        keypoints0: ``(N, 2)`` xy matches in image0.
        keypoints1: ``(N, 2)`` xy matches in image1.
        shape0: ``(H, W)`` of image0 in the keypoints' pixels.
        method: robust estimator (:data:`loftr_kd.geometry.RANSAC_METHODS`).
        threshold: its inlier threshold in pixels.
        rule: when the homography counts as reliable (default :class:`VerdictRule`).

    Returns:
        A :class:`Registration`.
    """
    if len(shape0) != 2 or not all(isinstance(side, int | np.integer) and side > 0 for side in shape0):
        raise ValueError(
            f"shape0={tuple(shape0)!r}: expected image0's (height, width), e.g. image0.shape[:2]"
        )
    rule = rule or VerdictRule()
    homography, inliers = estimate_homography(keypoints0, keypoints1, method=method, threshold=threshold)
    coverage = inlier_coverage(np.asarray(keypoints0).reshape(-1, 2)[inliers], shape0)
    shape_problem = implausible_shape(homography, shape0, rule.max_zoom) if homography is not None else None
    reliable, reason = judge(
        len(inliers), int(np.count_nonzero(inliers)), coverage, shape_problem, homography is not None, rule
    )
    return Registration(homography, inliers, coverage, reliable, reason)
