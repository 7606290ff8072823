"""How the benchmarks score an estimate: corner error of a homography, angle errors of a relative pose,
reprojection and epipolar errors of matches, and the AUC of a cumulative error curve (SuperGlue / LoFTR)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from kornia.geometry.epipolar import symmetrical_epipolar_distance

from loftr_kd.geometry import essential_from_pose, normalize_keypoints, warp_points

__all__ = [
    "angle_error_rotation",
    "angle_error_translation",
    "corner_error",
    "cumulative_curve",
    "error_auc",
    "image_corners",
    "relative_pose_error",
    "reprojection_errors",
    "symmetric_epipolar_errors",
]


def error_auc(errors: Sequence[float], thresholds: Sequence[float]) -> dict[float, float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1].

    As SuperGlue's ``pose_auc`` (used by LoFTR): recall rises by 1/N at each sorted error; failures
    (``inf``/``nan``) count in N but never reach the curve.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        return {float(t): 0.0 for t in thresholds}
    errors = np.where(np.isfinite(errors), errors, np.inf)
    errors = np.sort(errors)
    recall = (np.arange(errors.size) + 1) / errors.size
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = {}
    for threshold in thresholds:
        last = int(np.searchsorted(errors, threshold))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], threshold]
        area = np.sum(
            np.diff(e) * (r[1:] + r[:-1]) / 2.0
        )  # trapezoid rule (np.trapz/trapezoid differ by NumPy version)
        aucs[float(threshold)] = float(area / threshold)
    return aucs


def cumulative_curve(
    errors: Sequence[float], max_error: float, num: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """(x, recall(x)) of the cumulative error curve on [0, max_error], for plots."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    x = np.linspace(0.0, max_error, num)
    if errors.size == 0:
        return x, np.zeros_like(x)
    errors = np.where(np.isfinite(errors), errors, np.inf)
    return x, (errors[None, :] <= x[:, None]).mean(axis=1)


def image_corners(width: int, height: int) -> np.ndarray:
    """Corners of an image in pixel coordinates, as LoFTR's HPatches evaluation."""
    return np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)


def corner_error(h_est: np.ndarray | None, h_true: np.ndarray, width: int, height: int) -> float:
    """Mean distance of the image corners warped by the estimated vs the true homography (inf if none)."""
    if h_est is None or not np.all(np.isfinite(h_est)):
        return math.inf
    corners = image_corners(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(warp_points(corners, h_est) - warp_points(corners, h_true), axis=1).mean()
    return float(error) if np.isfinite(error) else math.inf


def reprojection_errors(keypoints0: np.ndarray, keypoints1: np.ndarray, h_true: np.ndarray) -> np.ndarray:
    """(N,) distance between keypoints1 and keypoints0 warped by the true homography."""
    if len(keypoints0) == 0:
        return np.zeros(0)
    return np.linalg.norm(warp_points(keypoints0, h_true) - np.asarray(keypoints1, np.float64), axis=1)


def angle_error_rotation(r_est: np.ndarray, r_true: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two rotation matrices."""
    cos = (np.trace(r_est.T @ r_true) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def angle_error_translation(t_est: np.ndarray, t_true: np.ndarray) -> float:
    """Angle (degrees) between translation directions, sign-free (the essential matrix fixes t up to sign)."""
    n = np.linalg.norm(t_est) * np.linalg.norm(t_true)
    if n < 1e-12:
        return math.inf
    angle = float(np.degrees(np.arccos(np.clip(np.dot(t_est.ravel(), t_true.ravel()) / n, -1.0, 1.0))))
    return min(angle, 180.0 - angle)


def relative_pose_error(
    T_0to1: np.ndarray, r_est: np.ndarray | None, t_est: np.ndarray | None
) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees; inf where no pose was estimated."""
    if r_est is None:
        return math.inf, math.inf
    T_0to1 = np.asarray(T_0to1, np.float64)
    return angle_error_rotation(r_est, T_0to1[:3, :3]), angle_error_translation(t_est, T_0to1[:3, 3])


def symmetric_epipolar_errors(
    keypoints0: np.ndarray, keypoints1: np.ndarray, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray
) -> np.ndarray:
    """(N,) squared symmetric epipolar distance in normalised coordinates under the true pose (LoFTR)."""
    if len(keypoints0) == 0:
        return np.zeros(0)
    points0, points1 = normalize_keypoints(keypoints0, K0), normalize_keypoints(keypoints1, K1)
    essential = essential_from_pose(torch.from_numpy(np.asarray(T_0to1, np.float64)))  # x1^T E x0 = 0
    distance = symmetrical_epipolar_distance(
        torch.from_numpy(points0)[None], torch.from_numpy(points1)[None], essential[None], squared=True
    )
    return distance[0].numpy()
