"""Homography benchmark (HPatches layout), LoFTR's protocol: estimate ``H`` from the matches (OpenCV
RANSAC / MAGSAC), warp the four corners of the first image with the estimated and the true ``H``; the mean
corner distance is the corner error, scored by the AUC of its cumulative curve up to 3 / 5 / 10 px. A failed
estimate counts as an infinite error. Match precision against the true ``H`` and the end-point error of
the correct matches come with it, and the AUC split by how hard the true homography is."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from loftr_kd.evaluation.datasets import HomographyPair, read_benchmark_image, resize_short_side
from loftr_kd.evaluation.matching import MatcherFn, progress, timed_matches
from loftr_kd.evaluation.scoring import corner_error, error_auc, reprojection_errors
from loftr_kd.geometry import estimate_homography

__all__ = [
    "DIFFICULTY_GROUPS",
    "HOMOGRAPHY_THRESHOLDS",
    "MILD_ROTATION_DEG",
    "MILD_ZOOM",
    "difficulty_of",
    "evaluate_homography",
    "homography_rotation_zoom",
]

HOMOGRAPHY_THRESHOLDS = (3.0, 5.0, 10.0)


def homography_rotation_zoom(h: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """Rotation (degrees, absolute) and zoom (>= 1, either way) of ``h`` around the image centre.

    From the Jacobian ``J`` of ``h`` at the centre: the rotation of the closest similarity
    ``atan2(J10 - J01, J00 + J11)`` and the scale ``sqrt(|det J|)``, reported as ``max(s, 1/s)``.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    x, y, w = h @ np.array([cx, cy, 1.0])
    u, v = x / w, y / w
    jac = np.array(
        [
            [(h[0, 0] - u * h[2, 0]) / w, (h[0, 1] - u * h[2, 1]) / w],
            [(h[1, 0] - v * h[2, 0]) / w, (h[1, 1] - v * h[2, 1]) / w],
        ]
    )
    rotation = math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
    scale = math.sqrt(abs(float(np.linalg.det(jac))))
    return abs(rotation), max(scale, 1.0 / scale) if scale > 0 else math.inf


# Pairs split by how hard their true homography is (rotation, zoom at the centre): "mild" is within
# what an upright, single-scale matcher is usually trained for; "hard" is the rest, split again into
# "rotated" (more than MILD_ROTATION_DEG only), "zoomed" (more than MILD_ZOOM only) and both.
MILD_ROTATION_DEG, MILD_ZOOM = 30.0, 2.0
DIFFICULTY_GROUPS = {
    "mild": ("mild",),
    "hard": ("rotated", "zoomed", "rotated_and_zoomed"),
    "rotated": ("rotated",),
    "zoomed": ("zoomed",),
    "rotated_and_zoomed": ("rotated_and_zoomed",),
}


def difficulty_of(record: dict[str, Any]) -> str:
    """``mild``, ``rotated``, ``zoomed`` or ``rotated_and_zoomed`` from a pair's true rotation and zoom."""
    rotated = record["rotation_deg"] > MILD_ROTATION_DEG
    zoomed = record["zoom"] > MILD_ZOOM
    if rotated and zoomed:
        return "rotated_and_zoomed"
    return "rotated" if rotated else "zoomed" if zoomed else "mild"


def evaluate_homography(
    matcher: MatcherFn,
    pairs: Sequence[HomographyPair],
    thresholds: Sequence[float] = HOMOGRAPHY_THRESHOLDS,
    precision_thresholds: Sequence[float] = (3.0, 5.0, 10.0),
    ransac: str = "magsac",
    ransac_threshold: float = 3.0,
    short_side: int | None = 480,
    correct_threshold: float = 5.0,
) -> dict[str, Any]:
    """Corner-error AUC, match precision and match count of a matcher on homography pairs.

    Args:
        correct_threshold: a match closer than this many pixels to the true homography's point is correct;
            ``epe_correct`` is the end-point error of the correct matches (median, p90) over all pairs.
        short_side: both images are resized so their shorter side has this many pixels before
            matching (LoFTR's HPatches protocol uses 480; ``None`` keeps the stored size); errors are
            measured in the pixels of the resized images.

    Returns:
        ``{"auc": {thr: auc}, "precision": {thr: mean}, "num_matches": mean, "time_ms": median,
        "per_pair": [...], "errors": [...]}``.
    """
    records, correct_errors = [], []
    for pair in progress(pairs, "homography"):
        image0, scale0 = resize_short_side(read_benchmark_image(pair.path0), short_side)
        image1, scale1 = resize_short_side(read_benchmark_image(pair.path1), short_side)
        h_true = scale1 @ pair.H @ np.linalg.inv(scale0)
        result, elapsed = timed_matches(matcher, image0, image1)
        h_est, inliers = estimate_homography(
            result["keypoints0"], result["keypoints1"], method=ransac, threshold=ransac_threshold
        )
        height, width = image0.shape[:2]
        errors = reprojection_errors(result["keypoints0"], result["keypoints1"], h_true)
        rotation, zoom = homography_rotation_zoom(h_true, width, height)
        correct_errors.append(errors[errors < correct_threshold])  # "correct at t px" as in precision
        error = corner_error(h_est, h_true, width, height)
        records.append(
            {
                "pair": pair.name,
                "rotation_deg": rotation,
                "zoom": zoom,
                "corner_error": error,
                "failed": not math.isfinite(error),  # JSON writes the inf of a failure as null
                "num_matches": len(errors),
                "num_inliers": int(inliers.sum()),
                "precision": {
                    float(t): float((errors < t).mean()) if len(errors) else 0.0 for t in precision_thresholds
                },
                "time_ms": elapsed,
            }
        )
    errors = [r["corner_error"] for r in records]
    difficulties = [difficulty_of(r) for r in records]
    by_difficulty = {}
    for group, kinds in DIFFICULTY_GROUPS.items():
        chosen = [e for e, kind in zip(errors, difficulties) if kind in kinds]
        by_difficulty[group] = {
            "num_pairs": len(chosen),
            "auc": error_auc(chosen, thresholds) if chosen else {float(t): float("nan") for t in thresholds},
        }
    return {
        "num_pairs": len(records),
        "auc": error_auc(errors, thresholds),
        # mild: rotation <= 30 deg and zoom <= 2x at the image centre; hard: the rest (DIFFICULTY_GROUPS)
        "by_difficulty": by_difficulty,
        "precision": {
            float(t): float(np.mean([r["precision"][float(t)] for r in records]))
            for t in precision_thresholds
        },
        "num_matches": float(np.mean([r["num_matches"] for r in records])),
        "failures": int(sum(not math.isfinite(e) for e in errors)),
        "time_ms": float(np.median([r["time_ms"] for r in records])),
        "time_ms_mean": float(np.mean([r["time_ms"] for r in records])),
        "epe_correct": _epe_summary(
            np.concatenate(correct_errors) if correct_errors else np.zeros(0), correct_threshold
        ),
        "errors": errors,
        "per_pair": records,
    }


def _epe_summary(errors: np.ndarray, threshold: float) -> dict[str, float]:
    """Median and p90 end-point error of the correct matches (NaN when there are none)."""
    if len(errors) == 0:
        return {"threshold_px": float(threshold), "count": 0, "median": float("nan"), "p90": float("nan")}
    return {
        "threshold_px": float(threshold),
        "count": int(len(errors)),
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
    }
