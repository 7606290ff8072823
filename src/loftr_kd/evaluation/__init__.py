"""Evaluation of matchers behind ``loftr-kd-evaluate``: homography (HPatches), relative pose (pair lists)
and exact ground truth (data-module batches), following LoFTR / SuperGlue. One benchmark per module:

- :mod:`~loftr_kd.evaluation.homography`: corner-error AUC up to 3 / 5 / 10 px, match precision;
- :mod:`~loftr_kd.evaluation.pose`: AUC of max(R, t) angle error up to 5 / 10 / 20 degrees, epipolar
  precision;
- :mod:`~loftr_kd.evaluation.coarse`: precision / recall / end-point error of :mod:`loftr_kd.metrics`
  against ``coarse_ground_truth`` and the exact warp.

Their data (:mod:`~loftr_kd.evaluation.datasets`), scores (:mod:`~loftr_kd.evaluation.scoring`), the
matcher protocol (:mod:`~loftr_kd.evaluation.matching`) and the reports (:mod:`~loftr_kd.evaluation.report`)
sit beside them; :func:`run_evaluation` runs them all and writes the reports. Every name is importable from
``loftr_kd.evaluation``, as before the split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loftr_kd.evaluation.coarse import evaluate_coarse
from loftr_kd.evaluation.datasets import (
    HomographyPair,
    PosePair,
    load_hpatches,
    load_pose_pairs,
    pose_pairs_from_scenes,
    read_benchmark_image,
    read_image,
    resize_short_side,
    write_pose_pairs,
)
from loftr_kd.evaluation.homography import (
    HOMOGRAPHY_THRESHOLDS,
    MILD_ROTATION_DEG,
    MILD_ZOOM,
    evaluate_homography,
    homography_rotation_zoom,
)
from loftr_kd.evaluation.matching import MatcherFn, timed_matches
from loftr_kd.evaluation.pose import POSE_THRESHOLDS, evaluate_pose
from loftr_kd.evaluation.report import markdown_report, plot_auc_curves
from loftr_kd.evaluation.scoring import (
    angle_error_rotation,
    angle_error_translation,
    corner_error,
    cumulative_curve,
    error_auc,
    image_corners,
    relative_pose_error,
    reprojection_errors,
    symmetric_epipolar_errors,
)
from loftr_kd.files import write_json, write_text

# the geometry this module held before loftr_kd.geometry did
from loftr_kd.geometry import estimate_homography, estimate_relative_pose, warp_points

__all__ = [
    "HOMOGRAPHY_THRESHOLDS",
    "MILD_ROTATION_DEG",
    "MILD_ZOOM",
    "POSE_THRESHOLDS",
    "HomographyPair",
    "MatcherFn",
    "PosePair",
    "angle_error_rotation",
    "angle_error_translation",
    "corner_error",
    "cumulative_curve",
    "error_auc",
    "estimate_homography",
    "estimate_relative_pose",
    "evaluate_coarse",
    "evaluate_homography",
    "evaluate_pose",
    "homography_rotation_zoom",
    "image_corners",
    "load_hpatches",
    "load_pose_pairs",
    "pose_pairs_from_scenes",
    "markdown_report",
    "plot_auc_curves",
    "read_benchmark_image",
    "read_image",
    "relative_pose_error",
    "reprojection_errors",
    "resize_short_side",
    "run_evaluation",
    "symmetric_epipolar_errors",
    "timed_matches",
    "warp_points",
    "write_pose_pairs",
]

log = logging.getLogger(__name__)


def run_evaluation(
    methods: dict[str, MatcherFn],
    out_dir: str | Path,
    homography_pairs: Sequence[HomographyPair] | None = None,
    pose_pairs: Sequence[PosePair] | None = None,
    coarse_batches: Callable[[], Iterable[dict]] | None = None,
    coarse_stride: int = 16,
    homography_kwargs: dict | None = None,
    pose_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Evaluate several matchers on the given benchmarks; write ``results.json``, ``results.md`` and
    AUC-curve PNGs to ``out_dir``. ``coarse_batches`` is a factory (each method gets fresh batches)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"methods": {}}
    for name, matcher in methods.items():
        entry: dict[str, Any] = {"matcher": repr(matcher)}
        if homography_pairs:
            log.info("%s: homography on %d pairs", name, len(homography_pairs))
            entry["homography"] = evaluate_homography(matcher, homography_pairs, **(homography_kwargs or {}))
        if pose_pairs:
            log.info("%s: relative pose on %d pairs", name, len(pose_pairs))
            entry["pose"] = evaluate_pose(matcher, pose_pairs, **(pose_kwargs or {}))
        if coarse_batches is not None:
            log.info("%s: coarse ground truth", name)
            entry["coarse"] = evaluate_coarse(matcher, coarse_batches(), coarse_stride)
        results["methods"][name] = entry
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.md", markdown_report(results))
    plot_auc_curves(results, out_dir)
    return results
