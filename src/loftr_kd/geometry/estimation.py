"""Two-view geometry from matches and from cameras: robust homography and relative-pose estimates, the
essential matrix of a known pose, and the relative pose of two cameras.

The robust estimators are OpenCV's (RANSAC / MAGSAC, LoFTR's protocol); the camera algebra around them is
kornia's (``normalize_points_with_intrinsics``, ``essential_from_Rt``). Arrays in, arrays out: the callers
(registration, ``loftr-kd-match``, the benchmarks, the data sets) hold NumPy keypoints and matrices.
Importing this module imports neither torch nor kornia (the two functions that use them import them), so
registration through onnxruntime starts without torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "RANSAC_METHODS",
    "essential_from_pose",
    "check_matches",
    "estimate_homography",
    "estimate_relative_pose",
    "normalize_keypoints",
    "relative_pose",
    "warp_points",
]

# |w| at or below this is the homography's horizon (kornia's convert_points_from_homogeneous eps).
HORIZON_EPS = 1e-8

# name -> OpenCV flag (an attribute of cv2) of the robust estimators
RANSAC_METHODS = {"magsac": "USAC_MAGSAC", "ransac": "RANSAC", "lmeds": "LMEDS", "usac": "USAC_DEFAULT"}


def check_matches(keypoints0: np.ndarray, keypoints1: np.ndarray) -> int:
    """The number of matches of two ``(N, 2)`` xy arrays of equal length.

    Raises:
        ValueError: another shape (a ``(2, N)`` array, a flat list) or lengths that differ.
    """
    shapes = [np.shape(points) for points in (keypoints0, keypoints1)]
    for name, shape in zip(("keypoints0", "keypoints1"), shapes):
        if len(shape) != 2 or shape[1] != 2:
            hint = " (transposed? pass points.T)" if len(shape) == 2 and shape[0] == 2 else ""
            raise ValueError(f"{name} must be an (N, 2) array of x, y matches, got shape {shape}{hint}")
    if shapes[0][0] != shapes[1][0]:
        raise ValueError(
            f"keypoints0 and keypoints1 must hold the same matches: {shapes[0][0]} against {shapes[1][0]} points"
        )
    return int(shapes[0][0])


def estimate_homography(
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    method: str = "magsac",
    threshold: float = 3.0,
    confidence: float = 0.99999,
    max_iters: int = 10000,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Homography mapping image0 pixels to image1 pixels, with OpenCV RANSAC/MAGSAC.

    Args:
        keypoints0: ``(N, 2)`` xy matches in image0.
        keypoints1: ``(N, 2)`` xy matches in image1.
        method: robust estimator, one of :data:`RANSAC_METHODS`.
        threshold: inlier threshold in pixels of image1.
        confidence: RANSAC confidence.
        max_iters: RANSAC iteration limit.

    Returns:
        ``(H (3, 3) or None, inliers (N,) bool)``; ``None`` when there are fewer than 4 matches or
        OpenCV finds no model.
    """
    if method not in RANSAC_METHODS:
        raise ValueError(f"unknown robust estimator {method!r}; choose one of {', '.join(RANSAC_METHODS)}")
    if not (isinstance(threshold, int | float | np.number) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold={threshold!r}: the inlier threshold must be a positive number of pixels")
    n = check_matches(keypoints0, keypoints1)
    if n < 4:
        return None, np.zeros(n, dtype=bool)
    flag = getattr(cv2, RANSAC_METHODS[method])
    h, mask = cv2.findHomography(
        np.asarray(keypoints0, np.float64).reshape(-1, 1, 2),
        np.asarray(keypoints1, np.float64).reshape(-1, 1, 2),
        flag,
        threshold,
        maxIters=max_iters,
        confidence=confidence,
    )
    if h is None or h.shape != (3, 3) or not np.all(np.isfinite(h)):
        return None, np.zeros(n, dtype=bool)
    return h / h[2, 2], mask.ravel().astype(bool)


def warp_points(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """Points through one homography, in float64 (the product and division of kornia's
    ``transform_points``, in NumPy).

    Args:
        points: ``(N, 2)`` xy points (anything that reshapes to it).
        homography: ``(3, 3)`` homography.

    Returns:
        ``(N, 2)`` float64 warped points; ``inf`` for points the homography sends to infinity.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    homography = np.asarray(homography, np.float64).reshape(3, 3)
    x, y = points[:, :1], points[:, 1:]
    # (x h0 + y h1) + h2 per row: the sums in the order torch's float64 product takes (bit for bit)
    homogeneous = (x * homography[:, 0] + y * homography[:, 1]) + homography[:, 2]  # (N, 3)
    w = homogeneous[:, 2:]
    at_infinity = np.abs(w) <= HORIZON_EPS
    scale = np.where(at_infinity, 1.0, 1.0 / np.where(at_infinity, 1.0, w))
    return np.where(at_infinity, np.inf, scale * homogeneous[:, :2])


def normalize_keypoints(keypoints: np.ndarray, K: np.ndarray) -> np.ndarray:
    """NumPy adapter of kornia's ``normalize_points_with_intrinsics``: ``((u - cx) / fx, (v - cy) / fy)``.

    Args:
        keypoints: ``(N, 2)`` xy pixel coordinates.
        K: ``(3, 3)`` zero-skew intrinsics.

    Returns:
        ``(N, 2)`` float64 normalised camera coordinates.
    """
    import torch
    from kornia.geometry.conversions import normalize_points_with_intrinsics

    points = torch.from_numpy(np.asarray(keypoints, np.float64).reshape(-1, 2))
    return normalize_points_with_intrinsics(points, torch.from_numpy(np.asarray(K, np.float64))).numpy()


def estimate_relative_pose(
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    threshold_px: float = 0.5,
    confidence: float = 0.99999,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(R, t, inliers) of camera 1 w.r.t. camera 0 from matches, as LoFTR's ``estimate_pose``.

    Keypoints are normalised by the intrinsics; the RANSAC threshold is ``threshold_px`` divided by
    the mean focal length. Of the essential-matrix candidates, the one with most cheirality inliers
    wins.

    OpenCV's 5-point solver asserts (``solvePoly``) on a random sample that repeats a point with another
    partner, which used to fail the whole pair: when it does, the fit is redone with only the first match
    of every point that occurs more than once in either image (the others are not inliers). Match sets
    the solver takes are fitted as given, as LoFTR's ``estimate_pose`` does; a one-way ratio test (the
    SIFT reference) repeats points often, one-to-one matchers rarely.

    Args:
        keypoints0: ``(N, 2)`` xy matches in image0.
        keypoints1: ``(N, 2)`` xy matches in image1.
        K0: ``(3, 3)`` intrinsics of image0.
        K1: ``(3, 3)`` intrinsics of image1.
        threshold_px: RANSAC threshold in pixels.
        confidence: RANSAC confidence.

    Raises:
        ValueError: the keypoints are not two ``(N, 2)`` arrays of one length (:func:`check_matches`).

    Returns:
        ``(R (3, 3), t (3,) unit, inliers (N,) bool)`` with ``X1 = R X0 + t`` up to the scale of ``t``;
        ``None`` with fewer than 5 matches (5 distinct ones when refitted) or no model (a set the solver
        still refuses included: a failed pair, not a crash).
    """
    if check_matches(keypoints0, keypoints1) < 5:
        return None
    keypoints0, keypoints1 = np.asarray(keypoints0, np.float64), np.asarray(keypoints1, np.float64)
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    threshold = threshold_px / np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    kept = np.arange(len(keypoints0))
    try:
        points0, points1, essential, mask = _fit_essential(
            keypoints0, keypoints1, K0, K1, threshold, confidence
        )
    except cv2.error:  # a sample repeating a point: fit again without the repeats (none: no model)
        kept = first_occurrences(keypoints0, keypoints1)
        if len(kept) < 5 or len(kept) == len(keypoints0):
            return None
        try:
            points0, points1, essential, mask = _fit_essential(
                keypoints0[kept], keypoints1[kept], K0, K1, threshold, confidence
            )
        except cv2.error:  # a set the solver still refuses: no model (a failed pair, not a crash)
            return None
    if essential is None:
        return None
    mask = mask.ravel().astype(bool)
    best, best_count = None, -1
    for e in np.split(essential, len(essential) // 3):
        count, r, t, pose_mask = cv2.recoverPose(
            e, points0, points1, np.eye(3), 1e9, mask=mask.astype(np.uint8)
        )
        if count > best_count:
            best_count, best = count, (r, t.ravel(), pose_mask.ravel() > 0)
    if best is None:
        return None
    inliers = np.zeros(len(keypoints0), bool)
    inliers[kept] = best[2]
    return best[0], best[1], inliers


def _fit_essential(
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    threshold: float,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Normalised points and ``cv2.findEssentialMat``'s (essential, mask); raises its ``cv2.error``."""
    points0, points1 = normalize_keypoints(keypoints0, K0), normalize_keypoints(keypoints1, K1)
    essential, mask = cv2.findEssentialMat(
        points0, points1, np.eye(3), threshold=threshold, prob=confidence, method=cv2.RANSAC
    )
    return points0, points1, essential, mask


def first_occurrences(keypoints0: np.ndarray, keypoints1: np.ndarray) -> np.ndarray:
    """Indices of the matches whose points are the first occurrence of that point in both images.

    Args:
        keypoints0: ``(N, 2)`` xy matches in image0.
        keypoints1: ``(N, 2)`` xy matches in image1.

    Returns:
        ``(M,)`` sorted indices, ``M <= N``; all of them when no point repeats.
    """
    if len(keypoints0) == 0:
        return np.zeros(0, np.int64)
    _, first0 = np.unique(keypoints0, axis=0, return_index=True)
    _, first1 = np.unique(keypoints1, axis=0, return_index=True)
    return np.intersect1d(first0, first1)


def essential_from_pose(T_0to1: torch.Tensor) -> torch.Tensor:
    """Essential matrix of a relative pose: kornia's ``essential_from_Rt`` with camera 0 at the origin.

    Args:
        T_0to1: ``(*, 4, 4)`` relative pose, ``X_cam1 = T_0to1 @ X_cam0``.

    Returns:
        ``(*, 3, 3)`` ``E = [t]x R``, so that ``x1^T E x0 = 0`` for normalised coordinates ``x0``, ``x1``.
    """
    import torch
    from kornia.geometry.epipolar import essential_from_Rt

    rotation, translation = T_0to1[..., :3, :3], T_0to1[..., :3, 3:]
    origin = torch.eye(3, dtype=T_0to1.dtype, device=T_0to1.device).expand_as(rotation)
    return essential_from_Rt(origin, torch.zeros_like(translation), rotation, translation)


def relative_pose(extrinsic0: np.ndarray, extrinsic1: np.ndarray) -> np.ndarray:
    """Relative pose of two cameras, ``T_0to1 = E1 @ inv(E0)``, so that ``X_cam1 = T_0to1 @ X_cam0``.

    A general 4x4 inverse rather than kornia's ``relative_camera_motion`` (which transposes the rotation):
    stored extrinsics (BlendedMVS ``*_cam.txt``) hold rotations rounded to a few digits, and the training
    data has always been built with the exact inverse of the matrix given.

    Args:
        extrinsic0: ``(4, 4)`` world -> camera0.
        extrinsic1: ``(4, 4)`` world -> camera1.

    Returns:
        ``(4, 4)`` ``T_0to1``.
    """
    return extrinsic1 @ np.linalg.inv(extrinsic0)
