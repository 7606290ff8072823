"""Drawing matches for TensorBoard, the CLI and the demo."""

from __future__ import annotations

import cv2
import numpy as np


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """Gray or BGR uint8 image → BGR uint8."""
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    *,
    confidence: np.ndarray | None = None,
    correct: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    title: str | None = None,
    numbered: bool = False,
) -> np.ndarray:
    """Side-by-side canvas with a line per match.

    Args:
        image0: (H0, W0) or (H0, W0, 3) uint8.
        image1: (H1, W1) or (H1, W1, 3) uint8.
        keypoints0: (N, 2) xy pixels in image0.
        keypoints1: (N, 2) xy pixels in image1.
        confidence: (N,) in [0, 1]; colours lines from blue (low) to red (high) with a jet map.
        correct: (N,) bool; overrides the colour: green correct (or a homography inlier), red wrong (as in
            the LoFTR figures, LightGlue's and kornia_moons' inlier plots).
        colors: (N, 3) BGR uint8 per match; overrides both.
        title: text drawn in the top-left corner.
        numbered: write the match index beside each keypoint (the demo's snapshot).

    Returns:
        (max(H0, H1), W0 + W1, 3) uint8 BGR canvas.
    """
    left, right = _to_bgr(image0), _to_bgr(image1)
    height = max(left.shape[0], right.shape[0])
    canvas = np.zeros((height, left.shape[1] + right.shape[1], 3), np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] :] = right
    n = len(keypoints0)
    if colors is not None:
        colors = np.asarray(colors).reshape(n, 3)
    elif correct is not None:
        colors = np.where(np.asarray(correct, bool)[:, None], [[0, 220, 0]], [[0, 0, 255]])
    elif confidence is not None and n:
        level = np.clip(np.asarray(confidence, np.float32) * 255, 0, 255).astype(np.uint8)
        colors = cv2.applyColorMap(level.reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
    else:
        colors = np.tile([[0, 220, 0]], (n, 1))
    offset = np.array([left.shape[1], 0], np.float32)
    for i, (p0, p1) in enumerate(zip(np.asarray(keypoints0, np.float32), np.asarray(keypoints1, np.float32))):
        color = tuple(int(c) for c in colors[i])
        a = tuple(int(round(v)) for v in p0)
        b = tuple(int(round(v)) for v in p1 + offset)
        cv2.line(canvas, a, b, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 2, color, -1, cv2.LINE_AA)
        if numbered:
            cv2.putText(
                canvas, str(i), (a[0] + 3, a[1] - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA
            )
            cv2.putText(
                canvas, str(i), (b[0] + 3, b[1] - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA
            )
    if title:
        (width, height), baseline = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        cv2.rectangle(canvas, (4, 20 - height - 4), (12 + width, 24 + baseline), (0, 0, 0), -1)
        cv2.putText(canvas, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def error_colors(errors: np.ndarray, scale_px: float = 5.0) -> np.ndarray:
    """(N, 3) BGR colours of end-point errors: green at 0 px through yellow to red at ``scale_px`` and
    beyond; grey where the error is unknown (NaN)."""
    errors = np.asarray(errors, np.float64).reshape(-1)
    t = np.clip(np.nan_to_num(errors, nan=0.0) / scale_px, 0.0, 1.0)
    colors = np.stack([np.zeros_like(t), 220 * np.clip(2 - 2 * t, 0, 1), 255 * np.clip(2 * t, 0, 1)], 1)
    colors[~np.isfinite(errors)] = (160, 160, 160)
    return colors.astype(np.uint8)


def draw_matches_with_truth(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    truth1: np.ndarray,
    valid: np.ndarray,
    who: str,
    scale_px: float = 5.0,
) -> np.ndarray:
    """Matches coloured by their end-point error against the exact ground truth (TensorBoard images).

    Args:
        points0, points1: (N, 2) predicted matches (refined where the model refines).
        truth1: (N, 2) exact image1 position of each ``points0``; ``valid`` (N,) where it is known.
        who: name in the title.
    """
    errors = np.linalg.norm(np.asarray(points1, np.float64) - np.asarray(truth1, np.float64), axis=1)
    errors = np.where(np.asarray(valid, bool), errors, np.nan)
    known = errors[np.isfinite(errors)]
    median = f", median error {np.median(known):.1f} px" if known.size else ""
    return draw_matches(
        image0,
        image1,
        points0,
        points1,
        colors=error_colors(errors, scale_px),
        title=f"{who}: {len(points0)} matches{median} (green 0 -> red {scale_px:g} px)",
    )
