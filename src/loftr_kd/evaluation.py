"""Evaluation of matchers: homography (HPatches), relative pose (pair lists) and coarse ground truth.

Protocols follow LoFTR/SuperGlue:

- Homography: estimate ``H`` from the matches (OpenCV RANSAC/MAGSAC), warp the four corners of the
  first image with the estimated and the true ``H``, mean corner distance = corner error; AUC of the
  cumulative error curve up to 3/5/10 px. A failed estimate counts as an infinite error.
- Relative pose: essential matrix with RANSAC on coordinates normalised by the intrinsics
  (``cv2.findEssentialMat``), ``cv2.recoverPose``; error = max(angle error of R, angle error of t);
  AUC up to 5/10/20 degrees; epipolar precision = share of matches whose symmetric epipolar distance
  (normalised coordinates, squared, as LoFTR) under the true pose is below a threshold.
- Coarse: precision/recall of matched cells and end-point error against ``coarse_ground_truth``.

A *matcher* is any callable ``(image0, image1) -> {"keypoints0", "keypoints1", "confidence"}`` on
numpy images (``loftr_kd.matcher.Matcher``, ``OpenCVMatcher``, or a test's oracle).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loftr_kd.files import write_json, write_text
from loftr_kd.geometry import (
    essential_from_pose,
    estimate_homography,
    estimate_relative_pose,
    normalize_keypoints,
    warp_points,
)

log = logging.getLogger(__name__)

MatcherFn = Callable[[np.ndarray, np.ndarray], dict]
HOMOGRAPHY_THRESHOLDS = (3.0, 5.0, 10.0)
POSE_THRESHOLDS = (5.0, 10.0, 20.0)
_IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------- metrics
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
# what an upright, single-scale matcher is usually trained for.
MILD_ROTATION_DEG, MILD_ZOOM = 30.0, 2.0


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
    import torch
    from kornia.geometry.epipolar import symmetrical_epipolar_distance

    if len(keypoints0) == 0:
        return np.zeros(0)
    points0, points1 = normalize_keypoints(keypoints0, K0), normalize_keypoints(keypoints1, K1)
    essential = essential_from_pose(torch.from_numpy(np.asarray(T_0to1, np.float64)))  # x1^T E x0 = 0
    distance = symmetrical_epipolar_distance(
        torch.from_numpy(points0)[None], torch.from_numpy(points1)[None], essential[None], squared=True
    )
    return distance[0].numpy()


# ---------------------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class HomographyPair:
    """One HPatches pair: image ``1`` of a sequence against image ``index``; ``H`` maps 1 -> index."""

    sequence: str
    index: int
    path0: Path
    path1: Path
    H: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.sequence}/1-{self.index}"


@dataclass(frozen=True)
class PosePair:
    """One relative-pose pair: intrinsics of both images and ``X_cam1 = T_0to1 @ X_cam0``."""

    path0: Path
    path1: Path
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.path0.name}-{self.path1.name}"


def _find_image(directory: Path, stem: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def load_hpatches(root: str | Path, sequences: Iterable[str] | None = None) -> list[HomographyPair]:
    """Pairs of an HPatches-layout folder: ``<seq>/1.ppm ... 6.ppm`` and ``<seq>/H_1_2 ... H_1_6``.

    Raises:
        FileNotFoundError: no sequence folder (with image 1 and at least one ``H_1_k``) under ``root``.
        ValueError: a homography file that is not a 3x3 matrix of numbers.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches root {root} is not a directory")
    names = (
        sorted(sequences) if sequences is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    )
    pairs = []
    for name in names:
        directory = root / name
        first = _find_image(directory, "1")
        if first is None:
            continue
        for h_path in sorted(directory.glob("H_1_*"), key=lambda p: p.name):
            index = int(h_path.name.split("_")[-1])
            other = _find_image(directory, str(index))
            if other is None:
                raise FileNotFoundError(f"{h_path} has no image {index} next to it in {directory}")
            try:
                H = np.loadtxt(h_path, dtype=np.float64)
            except ValueError as err:
                raise ValueError(f"cannot read the homography {h_path}: {err}") from err
            if H.shape != (3, 3):
                raise ValueError(f"{h_path} must hold a 3x3 matrix, got shape {H.shape}")
            pairs.append(HomographyPair(name, index, first, other, H))
    if not pairs:
        raise FileNotFoundError(f"no HPatches sequence (<seq>/1.ppm with H_1_k files) under {root}")
    return pairs


def load_pose_pairs(pair_list: str | Path, image_root: str | Path | None = None) -> list[PosePair]:
    """Pairs of a SuperGlue/LoFTR-style list: one line per pair with 38 values

    ``path0 path1 rot0 rot1 K0(9, row-major) K1(9) T_0to1(16)``; paths relative to ``image_root``
    (default: the list's folder). EXIF rotations must be 0. Blank lines and ``#`` comments are skipped.
    """
    pair_list = Path(pair_list)
    if not pair_list.is_file():
        raise FileNotFoundError(f"pair list {pair_list} not found")
    image_root = Path(image_root) if image_root is not None else pair_list.parent
    pairs = []
    for number, line in enumerate(pair_list.read_text().splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"{pair_list}:{number}"
        if len(tokens) != 38:
            raise ValueError(
                f"{where}: expected 38 values (path0 path1 rot0 rot1 K0 K1 T_0to1), got {len(tokens)}"
            )
        try:
            values = np.array(tokens[2:], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if values[0] != 0 or values[1] != 0:
            raise ValueError(f"{where}: EXIF rotations are not supported; rotate the images and fix K/T")
        path0, path1 = image_root / tokens[0], image_root / tokens[1]
        for path in (path0, path1):
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image {path} not found")
        pairs.append(
            PosePair(
                path0,
                path1,
                values[2:11].reshape(3, 3),
                values[11:20].reshape(3, 3),
                values[20:36].reshape(4, 4),
            )
        )
    if not pairs:
        raise ValueError(f"pair list {pair_list} holds no pairs")
    return pairs


def write_pose_pairs(path: str | Path, pairs: Iterable[PosePair], image_root: str | Path) -> None:
    """Write pairs in the format ``load_pose_pairs`` reads (paths relative to ``image_root``)."""
    lines = []
    for pair in pairs:
        numbers = np.r_[0, 0, pair.K0.ravel(), pair.K1.ravel(), pair.T_0to1.ravel()]
        rel0, rel1 = (Path(p).relative_to(image_root).as_posix() for p in (pair.path0, pair.path1))
        lines.append(" ".join([rel0, rel1, *(f"{v:.10g}" for v in numbers)]))
    Path(path).write_text("\n".join(lines) + "\n")


def read_image(path: str | Path) -> np.ndarray:
    """BGR (or gray) image as stored; see :func:`loftr_kd.images.read_image` for the checks."""
    from loftr_kd.images import read_image as _read

    return _read(path)


def _resize_short_side(image: np.ndarray, short_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Image resized so its shorter side is ``short_side`` (None: unchanged) and the 3x3 scaling."""
    if not short_side:
        return image, np.eye(3)
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    sx, sy = new_w / w, new_h / h
    return resized, np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _matches(matcher: MatcherFn, image0: np.ndarray, image1: np.ndarray) -> tuple[dict, float]:
    start = time.perf_counter()
    result = matcher(image0, image1)
    elapsed = (time.perf_counter() - start) * 1000.0
    k0 = np.asarray(result["keypoints0"], np.float64).reshape(-1, 2)
    k1 = np.asarray(result["keypoints1"], np.float64).reshape(-1, 2)
    out = {"keypoints0": k0, "keypoints1": k1, "confidence": np.asarray(result["confidence"]).ravel()}
    if "coarse_keypoints1" in result:  # a student's matched cell centres (what refinement started from)
        out["coarse_keypoints1"] = np.asarray(result["coarse_keypoints1"], np.float64).reshape(-1, 2)
    return out, elapsed


# ---------------------------------------------------------------------------------------- benchmarks
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
    for pair in pairs:
        image0, scale0 = _resize_short_side(read_image(pair.path0), short_side)
        image1, scale1 = _resize_short_side(read_image(pair.path1), short_side)
        h_true = scale1 @ pair.H @ np.linalg.inv(scale0)
        result, elapsed = _matches(matcher, image0, image1)
        h_est, inliers = estimate_homography(
            result["keypoints0"], result["keypoints1"], method=ransac, threshold=ransac_threshold
        )
        height, width = image0.shape[:2]
        errors = reprojection_errors(result["keypoints0"], result["keypoints1"], h_true)
        rotation, zoom = homography_rotation_zoom(h_true, width, height)
        correct_errors.append(errors[errors < correct_threshold])  # "correct at t px" as in precision
        records.append(
            {
                "pair": pair.name,
                "rotation_deg": rotation,
                "zoom": zoom,
                "corner_error": corner_error(h_est, h_true, width, height),
                "num_matches": len(errors),
                "num_inliers": int(inliers.sum()),
                "precision": {
                    float(t): float((errors < t).mean()) if len(errors) else 0.0 for t in precision_thresholds
                },
                "time_ms": elapsed,
            }
        )
    errors = [r["corner_error"] for r in records]
    mild = [r["rotation_deg"] <= MILD_ROTATION_DEG and r["zoom"] <= MILD_ZOOM for r in records]
    by_difficulty = {
        name: {
            "num_pairs": len(chosen),
            "auc": error_auc(chosen, thresholds) if chosen else {float(t): float("nan") for t in thresholds},
        }
        for name, chosen in (
            ("mild", [e for e, m in zip(errors, mild) if m]),
            ("hard", [e for e, m in zip(errors, mild) if not m]),
        )
    }
    return {
        "num_pairs": len(records),
        "auc": error_auc(errors, thresholds),
        # mild: rotation <= 30 deg and zoom <= 2x at the image centre; hard: the rest
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
    for pair in pairs:
        result, elapsed = _matches(matcher, read_image(pair.path0), read_image(pair.path1))
        k0, k1 = result["keypoints0"], result["keypoints1"]
        pose = estimate_relative_pose(k0, k1, pair.K0, pair.K1, threshold_px=ransac_threshold_px)
        r_err, t_err = relative_pose_error(pair.T_0to1, *(pose[:2] if pose is not None else (None, None)))
        epi = symmetric_epipolar_errors(k0, k1, pair.K0, pair.K1, pair.T_0to1)
        records.append(
            {
                "pair": pair.name,
                "pose_error": max(r_err, t_err),
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


def _true_positions(batch: dict, b: int, keypoints0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact image1 positions and visibility of image0 keypoints of sample ``b`` (depth or homography)."""
    import torch

    from loftr_kd.geometry import DEFAULT_DEPTH_TOLERANCE, warp_points_depth, warp_points_homography

    points = torch.from_numpy(np.asarray(keypoints0, np.float32).reshape(1, -1, 2))
    hw1 = tuple(batch["image1"].shape[-2:])
    item = {k: v[b : b + 1].float().cpu() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "H_0to1" in item:
        points1, valid = warp_points_homography(points, item["H_0to1"], hw1)
    else:
        points1, valid = warp_points_depth(
            points,
            item["depth0"],
            item["depth1"],
            item["K0"],
            item["K1"],
            item["T_0to1"],
            DEFAULT_DEPTH_TOLERANCE,
        )
    return points1[0].numpy(), valid[0].numpy()


def evaluate_coarse(
    matcher: MatcherFn, batches: Iterable[dict], stride: int, max_pairs: int | None = None
) -> dict:
    """Pixel-level precision/recall/end-point error of a matcher on batches of depth or homography pairs.

    Each batch is a data-module batch (``image0/1`` in [0, 1], plus ``H_0to1`` or depth, intrinsics
    and pose). The exact image1 position of every predicted keypoint0 comes from the same warp as the
    training ground truth, the coarse ground truth (for recall) from ``coarse_ground_truth`` at
    ``stride``; the figures are those of :mod:`loftr_kd.metrics` (the same as validation's), plus
    ``precision`` (= ``precision@5px``), ``epe_px`` (mean) and ``num_matches`` for older reports.
    """
    import torch

    from loftr_kd.geometry import CoarseGrid
    from loftr_kd.metrics import MatchStats, match_stats
    from loftr_kd.supervision import coarse_ground_truth

    total = MatchStats()
    # matches whose coarse cell is right, at the cell centre and at the returned (refined) position
    cells_coarse, cells_refined = MatchStats(), MatchStats()
    pairs = 0
    for batch in batches:
        gt = coarse_ground_truth(batch, stride)
        images0, images1 = batch["image0"].cpu().numpy(), batch["image1"].cpu().numpy()
        grid = CoarseGrid.for_image(images0.shape[2], images0.shape[3], stride, exact=False)

        def cells_of(points: np.ndarray, grid: CoarseGrid = grid) -> torch.Tensor:
            return grid.cell_of(torch.from_numpy(np.ascontiguousarray(points, np.float32)))

        for b in range(images0.shape[0]):
            if max_pairs is not None and pairs >= max_pairs:
                break
            result, _ = _matches(matcher, images0[b, 0], images1[b, 0])
            truth, valid = _true_positions(batch, b, result["keypoints0"])
            cells0 = cells_of(result["keypoints0"])
            total = total + match_stats(result["keypoints1"], truth, valid, cells0, gt.match_ids[b])
            coarse1 = result.get("coarse_keypoints1")
            if coarse1 is not None and len(coarse1) == len(truth):
                right = valid & (cells_of(coarse1) == cells_of(truth)).numpy()
                cells_coarse = cells_coarse + match_stats(coarse1, truth, right, cells0, gt.match_ids[b])
                cells_refined = cells_refined + match_stats(
                    result["keypoints1"], truth, right, cells0, gt.match_ids[b]
                )
            pairs += 1
        if max_pairs is not None and pairs >= max_pairs:
            break
    summary = total.summary()
    if cells_coarse.count("judged"):
        summary["correct_cells"] = {
            "num_matches": cells_coarse.count("judged"),
            **{f"coarse_{k}": v for k, v in cells_coarse.summary().items() if k.startswith("epe")},
            **{f"refined_{k}": v for k, v in cells_refined.summary().items() if k.startswith("epe")},
        }
    summary.update(
        num_pairs=pairs,
        epe_px=summary["epe_mean_px"],
        num_matches=summary["matches_per_pair"],
    )
    return summary


# ---------------------------------------------------------------------------------------- reports
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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines (header, separator, rows) and a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown tables (one per benchmark) comparing the methods."""
    methods = results["methods"]
    lines = ["# Evaluation", ""]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    homography = {n: e["homography"] for n, e in methods.items() if "homography" in e}
    if homography:
        first = next(iter(homography.values()))
        auc_keys, prec_keys = list(first["auc"]), list(first["precision"])
        lines += ["## Homography (corner error AUC, %)", ""]
        epe = first.get("epe_correct")
        lines += _table(
            ["method", *(f"AUC@{k:g}px" for k in auc_keys), *(f"prec@{k:g}px" for k in prec_keys)]
            + ["matches", "failures", "ms/pair"]
            + ([f"EPE <{epe['threshold_px']:g}px median / p90", "ms mean"] if epe else []),
            [
                [name, *(pct(r["auc"][k]) for k in auc_keys), *(pct(r["precision"][k]) for k in prec_keys)]
                + [f"{r['num_matches']:.0f}", f"{r['failures']}/{r['num_pairs']}", f"{r['time_ms']:.1f}"]
                + (
                    [
                        f"{r['epe_correct']['median']:.2f} / {r['epe_correct']['p90']:.2f}",
                        f"{r['time_ms_mean']:.1f}",
                    ]
                    if epe and "epe_correct" in r
                    else (["—", "—"] if epe else [])
                )
                for name, r in homography.items()
            ],
        )
        if epe:
            lines += [
                "ms/pair is the median matcher call, ms mean its mean; EPE: end-point error of the matches within "
                f"{epe['threshold_px']:g} px of the true homography's point, over all pairs.",
                "",
            ]
        if all("by_difficulty" in r for r in homography.values()):
            split = first["by_difficulty"]
            lines += [
                f"By difficulty of the true homography (mild: rotation ≤ {MILD_ROTATION_DEG:g}° and zoom ≤ "
                f"{MILD_ZOOM:g}×, {split['mild']['num_pairs']} pairs; hard: the other "
                f"{split['hard']['num_pairs']}), AUC %:",
                "",
            ]
            lines += _table(
                ["method", *(f"{part} @{k:g}px" for part in ("mild", "hard") for k in auc_keys)],
                [
                    [
                        name,
                        *(
                            pct(r["by_difficulty"][part]["auc"][k])
                            for part in ("mild", "hard")
                            for k in auc_keys
                        ),
                    ]
                    for name, r in homography.items()
                ],
            )
    pose = {n: e["pose"] for n, e in methods.items() if "pose" in e}
    if pose:
        auc_keys = list(next(iter(pose.values()))["auc"])
        lines += ["## Relative pose (AUC of max(R, t) angle error, %)", ""]
        lines += _table(
            ["method", *(f"AUC@{k:g}°" for k in auc_keys), "epi. prec.", "matches", "failures", "ms/pair"],
            [
                [name, *(pct(r["auc"][k]) for k in auc_keys), pct(r["epipolar_precision"])]
                + [f"{r['num_matches']:.0f}", f"{r['failures']}/{r['num_pairs']}", f"{r['time_ms']:.1f}"]
                for name, r in pose.items()
            ],
        )
    coarse = {n: e["coarse"] for n, e in methods.items() if "coarse" in e}
    if coarse:
        lines += ["## Matches against exact ground truth (loftr_kd.metrics)", ""]
        lines += _table(
            ["method", "precision @1 / 3 / 5 px %", "recall %", "EPE median / p90 px", "matches", "pairs"],
            [
                [
                    name,
                    " / ".join(pct(r[f"precision@{t}px"]) for t in (1, 3, 5)),
                    pct(r["recall"]),
                    f"{r['epe_median_px']:.2f} / {r['epe_p90_px']:.2f}",
                    f"{r['num_matches']:.0f}",
                    f"{r['num_pairs']}",
                ]
                for name, r in coarse.items()
            ],
        )
        gains = {n: r["correct_cells"] for n, r in coarse.items() if r.get("correct_cells")}
        if gains:
            lines += [
                "End-point error of the matches whose coarse cell is right: at the cell centre vs as returned "
                "(refined where the model refines).",
                "",
            ]
            lines += _table(
                ["method", "matches", "cell centre median / p90 px", "returned median / p90 px"],
                [
                    [
                        name,
                        f"{g['num_matches']:.0f}",
                        f"{g['coarse_epe_median_px']:.2f} / {g['coarse_epe_p90_px']:.2f}",
                        f"{g['refined_epe_median_px']:.2f} / {g['refined_epe_p90_px']:.2f}",
                    ]
                    for name, g in gains.items()
                ],
            )
    return "\n".join(lines)


def plot_auc_curves(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Cumulative error curves per benchmark (``homography_auc.png``, ``pose_auc.png``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for key, max_error, unit in (
        ("homography", 10.0, "corner error (px)"),
        ("pose", 20.0, "pose error (deg)"),
    ):
        entries = {n: e[key] for n, e in results["methods"].items() if key in e}
        if not entries:
            continue
        fig = Figure(figsize=(5, 4))
        FigureCanvasAgg(fig)  # headless: no pyplot, no GUI backend
        ax = fig.add_subplot()
        for name, r in entries.items():
            x, y = cumulative_curve(r["errors"], max_error)
            aucs = ", ".join(f"{100 * v:.0f}" for v in r["auc"].values())
            ax.plot(x, y, label=f"{name} (AUC {aucs})")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of pairs")
        ax.set_xlim(0, max_error)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{key}_auc.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
