"""Relative-pose benchmark (pair lists), LoFTR's protocol: essential matrix with RANSAC on coordinates
normalised by the intrinsics, ``cv2.recoverPose`` (:func:`loftr_kd.geometry.estimate_relative_pose`); the
error is max(angle error of R, angle error of t), scored by its AUC up to 5 / 10 / 20 degrees. Epipolar
precision is the share of matches whose squared symmetric epipolar distance (normalised coordinates) under
the true pose is below a threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from loftr_kd.evaluation.datasets import PosePair, read_benchmark_image
from loftr_kd.evaluation.matching import MatcherFn, progress, timed_matches
from loftr_kd.evaluation.scoring import error_auc, relative_pose_error, symmetric_epipolar_errors
from loftr_kd.geometry import estimate_relative_pose

__all__ = ["POSE_THRESHOLDS", "evaluate_pose"]

POSE_THRESHOLDS = (5.0, 10.0, 20.0)


def evaluate_pose(
    matcher: MatcherFn,
    pairs: Sequence[PosePair],
    thresholds: Sequence[float] = POSE_THRESHOLDS,
    ransac_threshold_px: float = 0.5,
    epipolar_threshold: float = 5e-4,
) -> dict[str, Any]:
    """Relative-pose AUC (max of rotation and translation angle errors) and epipolar precision.

    Args:
        ransac_threshold_px: essential-matrix RANSAC threshold in pixels (LoFTR: 0.5).
        epipolar_threshold: a match is correct when its squared symmetric epipolar distance in
            normalised coordinates is below this (LoFTR: 5e-4 on ScanNet, 1e-4 on MegaDepth).
    """
    records = []
    for pair in progress(pairs, "relative pose"):
        result, elapsed = timed_matches(
            matcher, read_benchmark_image(pair.path0), read_benchmark_image(pair.path1)
        )
        k0, k1 = result["keypoints0"], result["keypoints1"]
        pose = estimate_relative_pose(k0, k1, pair.K0, pair.K1, threshold_px=ransac_threshold_px)
        r_err, t_err = relative_pose_error(pair.T_0to1, *(pose[:2] if pose is not None else (None, None)))
        epi = symmetric_epipolar_errors(k0, k1, pair.K0, pair.K1, pair.T_0to1)
        records.append(
            {
                "pair": pair.name,
                "pose_error": max(r_err, t_err),
                "failed": not math.isfinite(max(r_err, t_err)),  # JSON writes the inf of a failure as null
                "rotation_error": r_err,
                "translation_error": t_err,
                "num_matches": len(k0),
                "num_inliers": int(pose[2].sum()) if pose is not None else 0,
                "epipolar_precision": float((epi < epipolar_threshold).mean()) if len(epi) else 0.0,
                "time_ms": elapsed,
            }
        )
    errors = [r["pose_error"] for r in records]
    return {
        "num_pairs": len(records),
        "auc": error_auc(errors, thresholds),
        "epipolar_precision": float(np.mean([r["epipolar_precision"] for r in records])),
        "num_matches": float(np.mean([r["num_matches"] for r in records])),
        "failures": int(sum(not math.isfinite(e) for e in errors)),
        "time_ms": float(np.median([r["time_ms"] for r in records])),
        "time_ms_mean": float(np.mean([r["time_ms"] for r in records])),
        "errors": errors,
        "per_pair": records,
    }
