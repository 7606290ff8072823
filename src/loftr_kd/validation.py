"""Robust-fit validation: what ``loftr-kd-evaluate`` scores, on the validation pairs, every epoch.

LoFTR validates with the AUC of the relative pose its matches give, not with match counts. Here each
validation pair is matched in one pass (the rule :class:`loftr_kd.Matcher` applies: mutual nearest cells
above the *shipped* threshold, borders removed, refined positions) and a model is fitted to the matches
with the estimators and settings of the benchmarks:

- pairs with a homography (``H_0to1``): MAGSAC homography, corner error in pixels
  (:mod:`loftr_kd.evaluation.homography`);
- pairs with cameras (``K0``, ``K1``, ``T_0to1``): essential matrix, pose error in degrees, the larger of
  the rotation and translation-direction errors (:mod:`loftr_kd.evaluation.pose`).

Logged as ``val/student/auc_homography@{3,5,10}px``, ``val/student/auc_pose@{5,10,20}deg`` and
``val/student/auc@5``, the mean of the 5-px and 5-degree AUCs of the kinds present (one figure that
follows both benchmarks; a checkpoint callback may monitor it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from loftr_kd.evaluation.homography import HOMOGRAPHY_THRESHOLDS
from loftr_kd.evaluation.pose import POSE_THRESHOLDS
from loftr_kd.evaluation.scoring import corner_error, error_auc, relative_pose_error
from loftr_kd.geometry import CoarseGrid, estimate_homography, estimate_relative_pose
from loftr_kd.models.matching import CoarseMatchOutput, mutual_nearest_matches

__all__ = ["FitValidationConfig", "RobustFitMetric", "fit_kind", "one_pass_matches", "pair_fit_errors"]

KINDS = {"homography": ("px", HOMOGRAPHY_THRESHOLDS), "pose": ("deg", POSE_THRESHOLDS)}
# The figure that sums both kinds up: the AUC at 5 px (homography) and at 5 degrees (pose).
SUMMARY_THRESHOLD = 5.0
FIT_SEED = 0  # OpenCV's RNG seed before each pair's fit


@dataclass(frozen=True)
class FitValidationConfig:
    """Settings of the robust-fit validation.

    Attributes:
        enabled: fit models every validation epoch (a few ms to ~0.1 s a pair on a CPU).
        match_threshold: the one-pass match threshold (the shipped one, ``recipe.steps.ship.match_threshold``),
            independent of the training threshold the student is built with.
        homography_ransac: robust estimator of :func:`loftr_kd.geometry.estimate_homography`.
        homography_ransac_px: its inlier threshold (pixels of the validation images).
        pose_ransac_px: essential-matrix RANSAC threshold in pixels (LoFTR: 0.5).
    """

    enabled: bool = True
    match_threshold: float = 0.05
    homography_ransac: str = "magsac"
    homography_ransac_px: float = 3.0
    pose_ransac_px: float = 0.5


def one_pass_matches(
    out: CoarseMatchOutput, grid: CoarseGrid, threshold: float, border_removal: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair, the ``(N, 2)`` xy matches of image 0 and image 1 that a one-pass call at ``threshold`` keeps.

    Mutual nearest cells of ``out.confidence`` above ``threshold`` (borders removed), each row's image-0
    point (its cell centre, or its corner query: ``candidate_points0``) and its candidate's (refined) image-1
    position; positions outside image 1 are dropped, as the matcher drops them.
    """
    valid = grid.border_mask(border_removal, device=out.confidence.device)
    match_ids, _ = mutual_nearest_matches(out.confidence.float(), threshold, valid, valid)
    centres = out.candidate_points0
    if centres is None:
        centres = grid.centers(device=out.confidence.device).expand(match_ids.shape[0], -1, -1)
    positions = out.candidate_points1 if out.candidate_points1 is not None else grid.ids_to_pixels(match_ids)
    height, width = grid.image_size
    pairs = []
    for row in range(match_ids.shape[0]):
        keep = match_ids[row] >= 0
        points0 = centres[row][keep].detach().double().cpu().numpy()
        points1 = positions[row][keep].detach().double().cpu().numpy()
        inside = (points1 >= 0).all(axis=1) & (points1[:, 0] <= width - 1) & (points1[:, 1] <= height - 1)
        pairs.append((points0[inside], points1[inside]))
    return pairs


def fit_kind(batch: dict[str, Any]) -> str | None:
    """The model a batch's pairs are scored by: ``"homography"`` (``H_0to1``), ``"pose"`` (``K0``, ``K1``,
    ``T_0to1``), or ``None`` (pseudo-labelled pairs: nothing to fit)."""
    if "H_0to1" in batch:
        return "homography"
    if all(key in batch for key in ("K0", "K1", "T_0to1")):
        return "pose"
    return None


def pair_fit_errors(
    batch: dict[str, Any], matches: list[tuple[np.ndarray, np.ndarray]], config: FitValidationConfig
) -> dict[str, list[float]]:
    """``{"homography": [corner errors], "pose": [pose errors]}`` of a batch's pairs (``inf``: no model).

    A batch of :func:`fit_kind` ``None`` gives no errors. OpenCV's random generator is seeded before every
    pair, so a pair's error does not depend on which pairs came before it (reruns, and DDP ranks that split
    the pairs differently, give the same figures).
    """
    errors: dict[str, list[float]] = {kind: [] for kind in KINDS}
    kind = fit_kind(batch)
    height, width = (int(v) for v in batch["image0"].shape[-2:])
    for row, (points0, points1) in enumerate(matches):
        cv2.setRNGSeed(FIT_SEED)
        if kind == "homography":
            h_est, _ = estimate_homography(
                points0, points1, method=config.homography_ransac, threshold=config.homography_ransac_px
            )
            h_true = batch["H_0to1"][row].detach().double().cpu().numpy()
            errors["homography"].append(corner_error(h_est, h_true, width, height))
        elif kind == "pose":
            K0, K1, T_0to1 = (
                batch[key][row].detach().double().cpu().numpy() for key in ("K0", "K1", "T_0to1")
            )
            pose = estimate_relative_pose(points0, points1, K0, K1, threshold_px=config.pose_ransac_px)
            r_err, t_err = relative_pose_error(T_0to1, *(pose[:2] if pose is not None else (None, None)))
            errors["pose"].append(max(r_err, t_err))
    return errors


class RobustFitMetric(Metric):
    """Robust-fit errors of the validation pairs, concatenated over batches and DDP ranks (torchmetrics);
    ``compute`` gives the AUC of each kind present and their summary ``auc@5`` (see the module docstring).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        for kind in KINDS:
            self.add_state(kind, default=[], dist_reduce_fx="cat")

    def update(self, errors: dict[str, list[float]]) -> None:
        for kind, values in errors.items():
            if values:
                # inf (no model) survives the concatenation; error_auc counts it as a failure
                getattr(self, kind).append(torch.tensor(values, dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, float]:
        summary: dict[str, float] = {}
        at_summary = []
        for kind, (unit, thresholds) in KINDS.items():
            state = getattr(self, kind)
            if isinstance(state, list) and not state:
                continue
            errors = dim_zero_cat(state).cpu().numpy()  # after a DDP sync: one tensor, maybe empty
            if errors.size == 0:
                continue
            auc = error_auc(errors, tuple(thresholds) + (SUMMARY_THRESHOLD,))
            for threshold in thresholds:
                summary[f"auc_{kind}@{threshold:g}{unit}"] = auc[float(threshold)]
            summary[f"{kind}_pairs"] = float(errors.size)
            at_summary.append(auc[SUMMARY_THRESHOLD])
        if at_summary:
            summary[f"auc@{SUMMARY_THRESHOLD:g}"] = float(np.mean(at_summary))
        return summary
